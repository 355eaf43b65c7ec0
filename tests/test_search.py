"""Exact chunked search, the FAISS backend, query expansion / DBA, and the result grid."""

from __future__ import annotations

import sys

import cv2
import numpy as np
import pytest

from regatt_sdk.errors import MissingExtraError, RegattError
from regatt_sdk.expansion import (
    DatabaseAugmentation,
    QueryExpansion,
    augment_database,
    average_query_expansion,
    expand_queries,
    l2_normalize,
    retrieve,
)
from regatt_sdk.grid import result_grid, save_result_grid
from regatt_sdk.index import ExactIndex, build_index, rank, topk
from regatt_sdk.index.faiss_index import import_faiss


def unit(rng, n, d=32):
    return l2_normalize(rng.standard_normal((n, d)).astype(np.float32))


def brute(q, db, k):
    s = q @ db.T
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, order, 1), order


@pytest.mark.parametrize("chunk_rows", [1, 7, 100, 10_000])
def test_topk_matches_brute_force_for_any_chunking(chunk_rows):
    rng = np.random.default_rng(0)
    db, q = unit(rng, 523), unit(rng, 11)
    s, i = topk(q, db, 17, chunk_rows=chunk_rows)
    rs, ri = brute(q, db, 17)
    np.testing.assert_array_equal(i, ri)
    np.testing.assert_allclose(s, rs, rtol=1e-6, atol=1e-6)
    assert s.dtype == np.float32 and i.dtype == np.int64 and s.shape == (11, 17)


def test_topk_single_query_k_clipped_and_memmap(tmp_path):
    rng = np.random.default_rng(1)
    db = unit(rng, 40)
    path = tmp_path / "db.f32"
    db.tofile(path)
    mm = np.memmap(path, dtype="<f4", mode="r", shape=db.shape)
    s, i = topk(db[5], mm, 1000, chunk_rows=9)
    assert i.shape == (1, 40) and i[0, 0] == 5
    np.testing.assert_array_equal(i, brute(db[5:6], db, 40)[1])


def test_ties_are_ordered_by_index():
    v = l2_normalize(np.ones((1, 8), np.float32))
    db = np.repeat(v, 6, axis=0)
    db[3] = -db[3]
    s, i = topk(v, db, 5, chunk_rows=2)
    assert i[0].tolist() == [0, 1, 2, 4, 5]
    _, full = rank(v, db, chunk_rows=4)
    assert full[0].tolist() == [0, 1, 2, 4, 5, 3]


def test_full_rank_matches_brute_force():
    rng = np.random.default_rng(2)
    db, q = unit(rng, 300), unit(rng, 4)
    s, i = ExactIndex(db, chunk_rows=64).rank(q)
    rs, ri = brute(q, db, 300)
    np.testing.assert_array_equal(i, ri)
    assert np.all(np.diff(s, axis=1) <= 0)


def test_bad_inputs_name_the_problem():
    rng = np.random.default_rng(3)
    with pytest.raises(RegattError, match="512-d descriptors but the queries are 32-d"):
        topk(unit(rng, 2), unit(rng, 5, 512), 3)
    with pytest.raises(RegattError, match="empty"):
        topk(unit(rng, 2), np.zeros((0, 32), np.float32), 3)
    with pytest.raises(RegattError, match="unknown search backend 'annoy'"):
        build_index(unit(rng, 5), "annoy")


def test_faiss_flat_agrees_with_exact_order():
    pytest.importorskip("faiss")
    rng = np.random.default_rng(4)
    db, q = unit(rng, 2000, 64), unit(rng, 20, 64)
    es, ei = build_index(db, "exact", chunk_rows=300).search(q, 50)
    fs, fi = build_index(db, "faiss", chunk_rows=300).search(q, 50)
    np.testing.assert_allclose(fs, es, atol=1e-5)
    # identical order wherever neighbouring scores are not (near) ties
    gaps = np.abs(np.diff(es, axis=1))
    separated = np.ones_like(ei, dtype=bool)
    separated[:, 1:] &= gaps > 1e-5
    separated[:, :-1] &= gaps > 1e-5
    assert separated.mean() > 0.9
    np.testing.assert_array_equal(ei[separated], fi[separated])
    # full rankings too
    _, er = build_index(db, "exact").rank(q[:3])
    _, fr = build_index(db, "faiss").rank(q[:3])
    assert er.shape == fr.shape == (3, 2000)
    np.testing.assert_array_equal(er[:, :100], fr[:, :100])


def test_missing_faiss_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)
    with pytest.raises(MissingExtraError, match=r"pip install 'regatt\[faiss\]'"):
        import_faiss()
    with pytest.raises(MissingExtraError):
        build_index(np.eye(3, dtype=np.float32), "faiss")


# --------------------------------------------------------------------------- expansion


def test_average_qe_is_mean_of_query_and_top_k():
    rng = np.random.default_rng(5)
    db, q = unit(rng, 100), unit(rng, 3)
    _, nb = topk(q, db, 5)
    out = average_query_expansion(q, db, nb, k=5)
    for r in range(3):
        manual = (q[r] + db[nb[r]].sum(0)) / 6
        np.testing.assert_allclose(out[r], manual / np.linalg.norm(manual), atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1, atol=1e-6)
    # alpha = 0 is AQE; QueryExpansion() searches itself
    np.testing.assert_allclose(expand_queries(q, db, nb, k=5, alpha=0), out, atol=1e-7)
    np.testing.assert_allclose(QueryExpansion(k=5)(q, db)[0], out, atol=1e-7)


def test_alpha_qe_weights_are_similarity_power():
    rng = np.random.default_rng(6)
    db, q = unit(rng, 50), unit(rng, 2)
    s, nb = topk(q, db, 3)
    out = expand_queries(q, db, nb, s, k=3, alpha=3.0)
    w = np.maximum(s, 0) ** 3
    manual = q + np.einsum("qk,qkd->qd", w, db[nb])
    np.testing.assert_allclose(out, manual / np.linalg.norm(manual, axis=1, keepdims=True), atol=1e-6)
    with pytest.raises(ValueError, match="scores"):
        expand_queries(q, db, nb, None, k=3, alpha=3.0)


def test_dba_replaces_rows_by_weighted_neighbourhood():
    rng = np.random.default_rng(7)
    db = unit(rng, 30)
    out = augment_database(db, k=2, alpha=1.0)
    s = db @ db.T
    for r in (0, 17):
        others = [j for j in np.argsort(-s[r], kind="stable") if j != r][:2]
        manual = db[r] + sum(max(s[r, j], 0) * db[j] for j in others)
        np.testing.assert_allclose(out[r], manual / np.linalg.norm(manual), atol=1e-5)
    assert out.shape == db.shape and out.dtype == np.float32


def test_qe_finds_the_far_member_of_a_cluster():
    # a chain q -> a -> b: b is far from q but close to a, which is close to q
    d = 16
    e = np.eye(d, dtype=np.float32)
    q = l2_normalize(e[0] + 0.0 * e[1])
    a = l2_normalize(e[0] + 0.6 * e[1])
    b = l2_normalize(e[0] + 1.8 * e[1])
    distractor = l2_normalize(e[0] + 1.0 * e[2])
    db = np.stack([distractor, b, a])
    _, plain = retrieve(q, db)
    _, expanded = retrieve(q, db, steps=[QueryExpansion(k=1)])
    assert plain[0].tolist() == [2, 0, 1]
    assert expanded[0].tolist() == [2, 1, 0]


def test_steps_compose_and_zero_k_is_identity():
    rng = np.random.default_rng(8)
    db, q = unit(rng, 80), unit(rng, 4)
    s0, i0 = retrieve(q, db, top=10)
    s1, i1 = retrieve(q, db, top=10, steps=[QueryExpansion(k=0), DatabaseAugmentation(k=0)])
    np.testing.assert_array_equal(i0, i1)
    steps = [DatabaseAugmentation(k=3, alpha=3), QueryExpansion(k=2, alpha=3)]
    s2, i2 = retrieve(q, db, top=10, steps=steps)
    dba = augment_database(db, k=3, alpha=3)
    qe = QueryExpansion(k=2, alpha=3)(q, dba)[0]
    np.testing.assert_array_equal(i2, topk(qe, dba, 10)[1])


# --------------------------------------------------------------------------- grid


def test_result_grid_layout_and_png(tmp_path):
    rng = np.random.default_rng(9)
    paths = []
    for i in range(4):
        img = rng.integers(0, 255, size=(60 + 10 * i, 90, 3), dtype=np.uint8)
        p = tmp_path / f"img{i}.png"
        cv2.imwrite(str(p), img)
        paths.append(p)
    grid = result_grid(cv2.imread(str(paths[0])), [("a", 0.9, None)] * 3, tile=50, columns=2)
    assert grid.shape == (2 * (50 + 34), 100, 3) and grid.dtype == np.uint8
    out = save_result_grid(
        tmp_path / "sub" / "grid.png",
        paths[0],
        [(p.stem, 1.0 - 0.1 * i, p) for i, p in enumerate(paths)] + [("gone", 0.1, tmp_path / "x.jpg")],
        roi=(10, 10, 50, 40),
        tile=64,
        columns=3,
    )
    back = cv2.imread(str(out))
    assert back.shape == (2 * (64 + 34), 3 * 64, 3)
    # the query tile's box is drawn in yellow (B=0, G=R=255)
    assert ((back[:64, :64] == (0, 255, 255)).all(axis=2)).sum() > 20


# --------------------------------------------------------------------------- CLI (fake model)
# The commands import ``regatt_sdk.encoder.Encoder`` when they run; these tests put a small
# deterministic stand-in there (colour histograms), so they run without an ONNX model.
# test_cli_with_tiny_model below runs the real encoder on the lead's ``tiny_model`` fixture.


class HistEncoder:
    """Encoder stand-in: 8-bin-per-channel colour histogram (24-d, or ``dim``), unit length."""

    def __init__(self, model_path=None, device="auto", max_side=None, threads=None, dim=24, **engine_options):
        from types import SimpleNamespace

        self.model_path = model_path
        self.dim = dim
        self.max_side = int(max_side or 64)
        card_hash = f"hist-{dim}"
        self.card = SimpleNamespace(hash=card_hash, dim=dim, max_side=self.max_side, matches=card_hash.__eq__)
        self.choice = self.engine_asked = None  # engine_options (engine, precision, memory) are ignored

    def encode_prepared(self, batch: np.ndarray) -> np.ndarray:
        out = []
        for img in batch:
            h = [np.bincount(img[..., c].ravel() // 32, minlength=8) for c in range(3)]
            v = np.concatenate(h).astype(np.float32)[: self.dim] + 1e-3
            out.append(v / np.linalg.norm(v))
        return np.stack(out).astype(np.float32)

    def encode(self, image, roi=None):
        from regatt_sdk.imageio import read_image
        from regatt_sdk.preprocess import prepare

        bgr = read_image(image) if not isinstance(image, np.ndarray) else image
        return self.encode_prepared(prepare(bgr, self.max_side, roi)[None])[0]


def sample_photos():
    """Five distinct BGR photos from scikit-image, 80 px on the long side."""
    import skimage.data

    rgb = [skimage.data.astronaut(), skimage.data.chelsea(), skimage.data.coffee(),
           skimage.data.rocket(), skimage.data.hubble_deep_field()]  # fmt: skip
    out = []
    for im in rgb:
        bgr = cv2.cvtColor(im, cv2.COLOR_RGB2BGR)
        s = 80 / max(bgr.shape[:2])
        out.append(cv2.resize(bgr, (round(bgr.shape[1] * s), round(bgr.shape[0] * s))))
    return out


def make_group_folder(root):
    """``root/<photo>/{orig,flip,crop}.png``: three known transformations of each photo."""
    names = ["astronaut", "chelsea", "coffee", "rocket", "hubble"]
    for name, img in zip(names, sample_photos()):
        (root / name).mkdir(parents=True)
        h, w = img.shape[:2]
        cv2.imwrite(str(root / name / "orig.png"), img)
        cv2.imwrite(str(root / name / "flip.png"), img[:, ::-1])
        cv2.imwrite(str(root / name / "crop.png"), img[h // 8 : h - h // 8, w // 8 : w - w // 8])
    return root


def make_runner(capsys):
    """``run(args) -> (exit_code, stdout, stderr)`` for index/encode/search/eval."""
    import typer

    from regatt_sdk.cli import encode_cmd, eval_cmd, search_cmd
    from regatt_sdk.cli.errors import run_cli

    app = typer.Typer(pretty_exceptions_enable=False)
    for module in (encode_cmd, search_cmd, eval_cmd):
        module.register(app)

    def run(args):
        capsys.readouterr()
        try:
            run_cli(app, [str(a) for a in args])
            code = 0
        except SystemExit as exc:
            code = exc.code or 0
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


@pytest.fixture
def cli(monkeypatch, capsys):
    """The commands with the colour-histogram stand-in as ``regatt_sdk.encoder.Encoder``."""
    import types

    fake = types.ModuleType("regatt_sdk.encoder")
    fake.Encoder = HistEncoder
    monkeypatch.setitem(sys.modules, "regatt_sdk.encoder", fake)
    return make_runner(capsys)


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "fake.onnx"
    path.write_bytes(b"stand-in")
    return path


def test_cli_index_then_search(cli, model_file, tmp_path):
    photos = make_group_folder(tmp_path / "photos")
    store = tmp_path / "store"
    code, out, err = cli(["index", model_file, photos, "-o", store, "--no-progress"])
    assert code == 0, err
    assert "encoded 15 images" in out
    query = photos / "coffee" / "orig.png"
    code, out, err = cli(["search", model_file, store, query, "--top", "3"])
    assert code == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 3
    rank, score, name = lines[0].split()
    assert rank == "1" and float(score) == pytest.approx(1.0, abs=1e-5)
    # a flip has the same histogram: equal scores keep store order (crop, flip, orig)
    assert name.endswith("coffee/flip.png") and lines[1].endswith("coffee/orig.png")
    assert all("coffee" in line for line in lines)  # its flip and crop follow
    show = tmp_path / "grid.png"
    code, out, err = cli(["search", model_file, store, query, "--qe", "2", "--roi", "5,5,60,40",
                          "--show", show])  # fmt: skip
    assert code == 0, err
    assert len(out.strip().splitlines()) == 10
    assert cv2.imread(str(show)).shape == (2 * (200 + 34), 6 * 200, 3)


def test_cli_search_bad_inputs(cli, model_file, tmp_path, monkeypatch):
    from regatt_sdk.store import FeatureStore

    photos = make_group_folder(tmp_path / "photos")
    query = photos / "coffee" / "orig.png"
    empty = tmp_path / "empty"
    FeatureStore.create(empty, card_hash="hist-24", dim=24).close()
    code, _, err = cli(["search", model_file, empty, query])
    assert code == 2 and "is empty" in err and len(err.strip().splitlines()) == 1
    small = tmp_path / "small"
    with FeatureStore.create(small, card_hash="x", dim=12) as st:
        st.append(["a"], np.ones((1, 12), np.float32))
    code, _, err = cli(["search", model_file, small, query])
    assert code == 2 and "holds 12-d descriptors" in err and "24-d" in err
    code, _, err = cli(["search", model_file, tmp_path / "nostore", query])
    assert code == 2 and "nostore" in err
    code, _, err = cli(["search", model_file, small, query, "--roi", "1,2,3"])
    assert code == 2 and "--roi" in err and "x1,y1,x2,y2" in err
    code, _, err = cli(["search", tmp_path / "missing.onnx", small, query])
    assert code == 2 and "missing.onnx" in err
    code, _, err = cli(["search", model_file, small, tmp_path / "nope.jpg"])
    assert code == 2 and "nope.jpg" in err


def test_cli_with_tiny_model(tiny_model, photo_dir, tmp_path, capsys):
    """index -> search -> eval with the real encoder on a small random-weight model."""
    import json

    run = make_runner(capsys)
    store = tmp_path / "store"
    side = ["--max-side", "64"]
    code, out, err = run(["index", tiny_model, photo_dir, "-o", store, "--no-progress", *side])
    assert code == 0, err
    query = photo_dir / "coffee.jpg"
    code, out, err = run(["search", tiny_model, store, query, "--top", "3", *side])
    assert code == 0, err
    rank1, score1, name1 = out.splitlines()[0].split()
    assert name1.endswith("coffee.jpg") and float(score1) == pytest.approx(1.0, abs=1e-4)
    code, out, err = run(["search", tiny_model, store, query, "--roi", "10,10,300,200",
                          "--qe", "2", "--backend", "faiss", *side])  # fmt: skip
    assert code == 0, err
    assert len(out.strip().splitlines()) == 6
    # eval on a generic layout: each photo and its mirror image form a group
    root = tmp_path / "generic"
    for img in sorted(photo_dir.glob("*.jpg"))[:3]:
        (root / img.stem).mkdir(parents=True)
        bgr = cv2.imread(str(img))
        cv2.imwrite(str(root / img.stem / "a.jpg"), bgr)
        cv2.imwrite(str(root / img.stem / "b.jpg"), bgr[:, ::-1])
    res_path = tmp_path / "res.json"
    code, out, err = run(["eval", tiny_model, "-d", "generic", "--root", root, "--json", res_path,
                          "--store", tmp_path / "gstore", "--no-progress", *side])  # fmt: skip
    assert code == 0, err
    res = json.loads(res_path.read_text())
    assert res["dataset"] == "generic" and res["queries"] == 6
    assert 0 < res["map"] <= 100 and 0 < res["map_qe"] <= 100
    # a store from another (24-d) model is refused with both dimensions named
    from regatt_sdk.store import FeatureStore

    with FeatureStore.create(tmp_path / "s24", card_hash="x", dim=24) as st:
        st.append(["a"], np.ones((1, 24), np.float32))
    code, _, err = run(["search", tiny_model, tmp_path / "s24", query, *side])
    from regatt_sdk.card import read_card

    assert code == 2 and "holds 24-d" in err and f"{read_card(tiny_model).dim}-d" in err


def test_qe_exclude_keeps_the_query_out_of_its_own_expansion():
    rng = np.random.default_rng(10)
    db = unit(rng, 60)
    q = db[:3].copy()  # each query is database row i (leave-one-out protocols)
    exclude = [np.array([i]) for i in range(3)]
    out = QueryExpansion(k=2, exclude=exclude)(q, db)[0]
    s = q @ db.T
    for i in range(3):
        nb = [j for j in np.argsort(-s[i], kind="stable") if j != i][:2]
        manual = q[i] + db[nb].sum(0)
        np.testing.assert_allclose(out[i], manual / np.linalg.norm(manual), atol=1e-6)
    with_self = QueryExpansion(k=2)(q, db)[0]
    assert not np.allclose(with_self, out)
