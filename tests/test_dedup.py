"""regatt_sdk.dedup: range search, grouping, keep policies, the move manifest and its undo,
the DCT hash and the geometric copy features, on tiny fixtures (scikit-image photos + known
edits)."""

from __future__ import annotations

import json
import os

import cv2
import numpy as np
import pytest

from regatt_sdk.dedup import edits
from regatt_sdk.dedup.groups import components, group_pairs, pairs_in_groups
from regatt_sdk.dedup.moves import MANIFEST, move_files, read_manifest, undo_moves
from regatt_sdk.dedup.pairs import pairs_exact, pairs_from_index, pairs_ivf, similar_pairs
from regatt_sdk.dedup.phash import hamming, phash, popcount64
from regatt_sdk.dedup.policy import FileInfo, choose_keep, keep_remove
from regatt_sdk.errors import RegattError


def planted(n: int = 600, d: int = 64, seed: int = 0):
    """Random unit rows with planted near-copies: row 2k+1 is a noisy copy of row 2k for k < 20."""
    rng = np.random.default_rng(seed)
    v = rng.normal(size=(n, d)).astype(np.float32)
    for k in range(min(20, n // 2)):
        v[2 * k + 1] = v[2 * k] + 0.15 * rng.normal(size=d)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def brute(v: np.ndarray, t: float) -> set[tuple[int, int]]:
    s = v @ v.T
    i, j = np.nonzero(np.triu(s >= t, 1))
    return set(zip(i.tolist(), j.tolist()))


def test_exact_pairs_match_brute_force_with_small_blocks():
    v = planted()
    i, j, s = pairs_exact(v, 0.8, block_rows=37)
    assert set(zip(i.tolist(), j.tolist())) == brute(v, 0.8)
    assert {(2 * k, 2 * k + 1) for k in range(20)} <= set(zip(i.tolist(), j.tolist()))
    assert np.all(i < j) and np.allclose(s, np.einsum("pd,pd->p", v[i], v[j]), atol=1e-5)


def test_ivf_and_index_pairs_find_the_planted_copies_with_exact_scores():
    pytest.importorskip("faiss")
    from regatt_sdk.index import ExactIndex

    v = planted(2000)
    want = brute(v, 0.8)
    i, j, s = pairs_ivf(v, 0.8, nlist=16, nprobe=16)  # every list probed: nothing can be missed
    assert set(zip(i.tolist(), j.tolist())) == want
    assert np.allclose(s, np.einsum("pd,pd->p", v[i], v[j]), atol=1e-6)
    ii, jj, _ = pairs_from_index(ExactIndex(v), 0.8, k=1)  # k doubled as needed
    assert set(zip(ii.tolist(), jj.tolist())) == want


def test_pairs_from_index_grows_k_for_large_groups():
    from regatt_sdk.index import ExactIndex

    v = np.tile(planted(10, 16)[:1], (50, 1))  # 50 identical rows: 1225 pairs
    i, _, _ = pairs_from_index(ExactIndex(v), 0.99, k=4)
    assert i.size == 50 * 49 // 2


@pytest.mark.parametrize("bad", [1.5, -1.01, float("nan")])
def test_threshold_outside_unit_range_is_refused(bad):
    with pytest.raises(RegattError, match=r"outside \[-1, 1\]"):
        similar_pairs(planted(10), bad)


def test_empty_matrix_is_refused():
    with pytest.raises(RegattError, match="non-empty"):
        similar_pairs(np.zeros((0, 8), np.float32), 0.9)
    with pytest.raises(RegattError, match="unknown range-search backend"):
        similar_pairs(planted(10), 0.9, backend="bogus")


def test_components_chain_and_tight_groups_split_it():
    # a chain 0-1-2-3 (0 and 3 not similar) and a separate pair 5-6; 4 alone
    i = np.array([0, 1, 2, 5])
    j = np.array([1, 2, 3, 6])
    s = np.array([0.95, 0.9, 0.92, 0.99], np.float32)
    comps = components(7, i, j)
    assert [c.tolist() for c in comps] == [[0, 1, 2, 3], [5, 6]]
    loose = group_pairs(7, (i, j, s), "components")
    assert [sorted(g.members.tolist()) for g in loose] == [[0, 1, 2, 3], [5, 6]]
    assert loose[0].scores[0] == 1.0
    tight = group_pairs(7, (i, j, s), "tight")
    pairs = set(zip(i.tolist(), j.tolist()))
    for g in tight:  # every member is paired with its representative
        rep = g.representative
        assert all((min(rep, m), max(rep, m)) in pairs for m in g.members[1:].tolist())
    assert sorted(len(g) for g in tight) == [2, 3]  # 1 takes 0 and 2; 3 is left alone
    # rows after the last paired one (7, 8) have no pairs: same groups
    assert [g.members.tolist() for g in group_pairs(9, (i, j, s), "tight")] == [g.members.tolist() for g in tight]
    assert pairs_in_groups(loose) >= pairs
    with pytest.raises(RegattError, match="unknown grouping"):
        group_pairs(7, (i, j, s), "bogus")
    with pytest.raises(RegattError, match="outside"):
        group_pairs(3, (i, j, s), "components")


def test_keep_policies():
    g = group_pairs(3, (np.array([0, 0]), np.array([1, 2]), np.array([0.9, 0.9], np.float32)))[0]
    infos = [FileInfo("a", pixels=100, size=5, mtime=30.0), FileInfo("b", pixels=400, size=1, mtime=20.0),
             FileInfo("c", pixels=400, size=9, mtime=10.0)]  # fmt: skip
    assert choose_keep(g, infos, "largest") == 2  # most pixels, then most bytes
    assert choose_keep(g, infos, "first") == 0
    assert choose_keep(g, infos, "oldest") == 2
    assert keep_remove([g], infos, "first") == [(0, [1, 2])]
    with pytest.raises(RegattError, match="unknown keep policy"):
        choose_keep(g, infos, "newest")


def test_move_and_undo_with_manifest(tmp_path):
    src = tmp_path / "photos"
    (src / "sub").mkdir(parents=True)
    files = [src / "a.jpg", src / "sub" / "b.jpg", src / "c.jpg"]
    for k, f in enumerate(files):
        f.write_bytes(bytes([k]) * (10 + k))
    dest = tmp_path / "moved"
    rep = move_files([files[0], files[1], src / "missing.jpg"], dest, root=src)
    assert len(rep.done) == 2 and rep.skipped[0][0].endswith("missing.jpg")
    assert not files[0].exists() and (dest / "sub" / "b.jpg").read_bytes() == bytes([1]) * 11
    man = read_manifest(dest)
    assert [m["state"] for m in man["moves"]] == ["moved", "moved"]
    files[0].write_bytes(b"new file at the old place")  # a conflict: undo must not overwrite it
    undo = undo_moves(dest / MANIFEST)
    assert files[1].read_bytes() == bytes([1]) * 11  # restored
    assert files[0].read_bytes() == b"new file at the old place"
    assert (dest / "a.jpg").exists() and "exists there now" in undo.skipped[0][1]
    states = [m["state"] for m in json.loads((dest / MANIFEST).read_text())["moves"]]
    assert states == ["moved", "restored"]
    assert sorted(os.listdir(src)) == ["a.jpg", "c.jpg", "sub"]  # nothing deleted


def test_bad_manifest_is_refused(tmp_path):
    with pytest.raises(RegattError, match="no move manifest"):
        undo_moves(tmp_path)
    (tmp_path / MANIFEST).write_text('{"kind": "other"}')
    with pytest.raises(RegattError, match="not a regatt dedup move manifest"):
        undo_moves(tmp_path)


def test_popcount_and_hamming():
    x = np.array([0, 1, 0xFF, 2**64 - 1], dtype=np.uint64)
    assert popcount64(x).tolist() == [0, 1, 8, 64]
    assert hamming(np.uint64(0b1011), np.uint64(0b0001)).item() == 2


def test_dct_hash_survives_mild_edits_and_separates_photos(photos):
    rng = np.random.default_rng(0)
    names = ["astronaut", "coffee", "chelsea", "rocket"]
    base = {n: phash(photos[n]) for n in names}
    for n in names:
        for edit in ("jpeg_q20", "resize_half_q20", "colour"):
            d = int(hamming(base[n], phash(edits.apply(edit, photos[n], rng))))
            assert d <= 12, (n, edit, d)
    between = [int(hamming(base[a], base[b])) for k, a in enumerate(names) for b in names[k + 1 :]]
    assert min(between) >= 20, between


def test_edits_change_the_image_and_unknown_edits_are_named(photos):
    rng = np.random.default_rng(1)
    img = photos["coffee"]
    for name in edits.EDITS:
        out = edits.apply(name, img, rng)
        assert out.dtype == np.uint8 and out.ndim == 3
        assert out.shape != img.shape or np.abs(out.astype(int) - img).mean() > 0.5, name
    with pytest.raises(KeyError, match="unknown edit"):
        edits.apply("sepia", img, rng)


def edited_copy(img: np.ndarray, seed: int = 0) -> np.ndarray:
    """A copy warped by a near-similarity (rotation, scale, a small shear), cropped, re-lit,
    blurred a little and JPEG-compressed."""
    rng = np.random.default_rng(seed)
    h, w = img.shape[:2]
    a = np.deg2rad(float(rng.uniform(3, 6)) * rng.choice([-1, 1]))
    s = float(rng.uniform(0.8, 0.9))
    m = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]) @ np.array([[s, 0.05 * s], [0.0, s]])
    centre = np.array([w / 2, h / 2])
    t = centre - m @ centre
    warped = cv2.warpAffine(img, np.hstack([m, t[:, None]]), (w, h), borderMode=cv2.BORDER_REFLECT)
    crop = warped[int(0.08 * h) : int(0.9 * h), int(0.12 * w) : int(0.95 * w)]
    lit = np.clip(crop.astype(np.float32) * np.float32([0.85, 1.0, 1.2]) + 20, 0, 255).astype(np.uint8)
    return edits.jpeg(cv2.GaussianBlur(lit, (0, 0), 0.8), 70)


def test_geometry_separates_an_edited_copy_from_other_photos(photos):
    from regatt_sdk.dedup.geometry import FEATURES, NO_SCALE, match_geometry, pair_geometry
    from regatt_sdk.local.extract import extract

    names = ["astronaut", "coffee", "chelsea", "rocket", "camera"]
    feats = {n: extract(photos[n]) for n in names}
    copies = {n: extract(edited_copy(photos[n], k)) for k, n in enumerate(names)}
    col = {f: k for k, f in enumerate(FEATURES)}
    for n in names:
        same = match_geometry(feats[n], [copies[n]])[0]
        assert np.expm1(same[col["inliers"]]) >= 20, (n, same)
        assert same[col["inlier_ratio"]] >= 0.6 and same[col["affine_share"]] >= 0.8, (n, same)
        # the copy is about 0.85x its original, then cropped to ~0.83 of its sides: ~1.0 overall
        assert same[col["log_scale"]] < 0.3 and same[col["shear"]] < 0.2, (n, same)
        others = match_geometry(feats[n], [copies[m] for m in names if m != n])
        assert np.all(np.expm1(others[:, col["inliers"]]) < 15), (n, others)
        assert np.all(others[:, col["inlier_share"]] < 0.05), (n, others)
    # pairs in any order give the same rows as one query at a time; an unreadable row: no geometry
    table = [feats[n] for n in names] + [copies["coffee"], None]
    i, j = np.array([1, 0, 1, 2, 0]), np.array([5, 5, 6, 5, 1])
    got = pair_geometry(lambda k: table[k], i, j)
    np.testing.assert_allclose(got[0], match_geometry(feats["coffee"], [copies["coffee"]])[0])
    assert got[0, col["inlier_share"]] > 0.2 and got[1, col["inlier_share"]] < 0.05
    assert got[2, col["inliers"]] == 0 and got[2, col["log_scale"]] == NO_SCALE


def test_copy_signals_take_stored_local_features_and_extract_the_rest(tmp_path, photos):
    from regatt_sdk.dedup.run import copy_signals
    from regatt_sdk.local.extract import extract

    paths = []
    for n in ("astronaut", "coffee"):
        paths.append(tmp_path / f"{n}.png")
        cv2.imwrite(str(paths[-1]), photos[n])
    skipped: list = []

    class Stored:  # a LocalIndex holding row 0 only
        count = 1

        def features(self, k):
            assert k == 0
            return extract(photos["chelsea"])

    hashes, local = copy_signals([*paths, tmp_path / "missing.png"], skipped, Stored())
    assert hashes[0] == phash(photos["astronaut"]) and hashes[2] == 0
    np.testing.assert_array_equal(local(0).desc, extract(photos["chelsea"]).desc)  # from the store
    np.testing.assert_array_equal(local(1).desc, extract(cv2.imread(str(paths[1]))).desc)  # from the file
    assert local(2) is None and "missing.png" in skipped[0][0]
