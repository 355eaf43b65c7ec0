"""Collections that change: removed rows (tombstones) in every search path, compaction."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from regatt_sdk.index.exact import topk
from regatt_sdk.index.masked import MaskedIndex
from regatt_sdk.index.searcher import Searcher
from regatt_sdk.store import FeatureStore, StoreError
from regatt_sdk.tombstones import deleted_mask, deleted_rows, live_rows, remove, remove_names
from vectors import clustered


def make_store(path: Path, n: int = 300, dim: int = 16, seed: int = 0) -> np.ndarray:
    vecs = clustered(n, dim, 10, seed=seed)
    vecs = np.ascontiguousarray(vecs, np.float32)
    with FeatureStore.create(path, card_hash="card-1", dim=dim) as st:
        st.append([f"img{i:05d}.jpg" for i in range(n)], vecs)
    return vecs


def test_tombstones_are_committed_checked_and_idempotent(tmp_path):
    make_store(tmp_path / "s", n=20)
    with FeatureStore.open(tmp_path / "s", writable=True) as st:
        assert deleted_mask(st) is None
        assert remove(st, [3, 7, 3]) == 2
        assert remove(st, [7]) == 0  # already removed: nothing committed
        assert remove_names(st, ["img00010.jpg"]) == 1
        with pytest.raises(StoreError, match="has rows 0..19"):
            remove(st, [20])
        with pytest.raises(StoreError, match="no live row"):
            remove_names(st, ["img00003.jpg"])
    st = FeatureStore.open(tmp_path / "s")
    assert deleted_rows(st).tolist() == [3, 7, 10]
    assert deleted_mask(st).sum() == 3 and st.count == 20
    assert "img00003.jpg" not in live_rows(st) and live_rows(st)["img00004.jpg"] == 4
    from regatt_sdk.integrity import verify

    assert verify(tmp_path / "s").ok


def test_masked_exact_search_is_the_true_top_k_of_the_kept_rows(tmp_path):
    vecs = make_store(tmp_path / "s")
    rng = np.random.default_rng(1)
    gone = rng.choice(len(vecs), 120, replace=False)
    with FeatureStore.open(tmp_path / "s", writable=True) as st:
        remove(st, gone)
    s = Searcher.for_store(tmp_path / "s")
    assert isinstance(s.index, MaskedIndex)
    q = vecs[gone[:10]] + 0.01
    scores, rows = s.search_vectors(q, 10)
    kept = np.setdiff1d(np.arange(len(vecs)), gone)
    ts, ti = topk(q, vecs[kept], 10)
    np.testing.assert_array_equal(rows, kept[ti])
    np.testing.assert_allclose(scores, ts, rtol=1e-6)
    full_s, full_rows = s.search_vectors(q[:2], None)  # a full ranking leaves them out too
    assert full_rows.shape == (2, len(kept)) and not np.isin(full_rows, gone).any()
    # more asked than kept: the rest is -1
    with FeatureStore.open(tmp_path / "s", writable=True) as st:
        remove(st, kept[5:])
    scores, rows = Searcher.for_store(tmp_path / "s").search_vectors(q[:1], 8)
    assert sorted(rows[0][:5].tolist()) == kept[:5].tolist() and (rows[0][5:] == -1).all()


def test_faiss_index_skips_removed_rows(tmp_path):
    pytest.importorskip("faiss")
    from regatt_sdk.ann import build_store_index

    vecs = make_store(tmp_path / "s", n=400)
    build_store_index(tmp_path / "s", "hnsw")
    gone = np.arange(0, 400, 3)
    with FeatureStore.open(tmp_path / "s", writable=True) as st:
        remove(st, gone)
    s = Searcher.for_store(tmp_path / "s")
    assert isinstance(s.index, MaskedIndex) and s.index.backend == "faiss"  # still usable: no row added
    q = vecs[gone[:20]]
    _, rows = s.search_vectors(q, 10)
    assert not np.isin(rows, gone).any() and (rows >= 0).all()
    kept = np.setdiff1d(np.arange(400), gone)
    _, ti = topk(q, vecs[kept], 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(rows, kept[ti])])
    assert recall >= 0.95


def _store_with_local(tiny_model, views_dir, out):
    from regatt_sdk.encoder import Encoder
    from regatt_sdk.pipeline import encode_to_store

    encode_to_store(Encoder(tiny_model), [str(views_dir)], out, progress=False, local=True, chunk_rows=2)


@pytest.fixture
def views_dir(tmp_path, photos):
    import cv2

    d = tmp_path / "photos"
    d.mkdir()
    for name, img in photos.items():
        cv2.imwrite(str(d / f"{name}.jpg"), img)
    return d


def test_rerank_never_returns_a_removed_photo(tiny_model, views_dir, tmp_path, photos):
    from regatt_sdk.encoder import Encoder
    from test_local import other_view

    store = tmp_path / "s"
    _store_with_local(tiny_model, views_dir, store)
    with FeatureStore.open(store, writable=True) as st:
        remove_names(st, [str(views_dir / "astronaut.jpg")])
    searcher = Searcher.for_store(store, Encoder(tiny_model))
    res = searcher.search_full(other_view(photos["astronaut"], seed=3), top=6, rerank=6)
    names = [h.name for h in res.hits]
    assert len(names) == 5 and not any(n.endswith("astronaut.jpg") for n in names)
    # the visual-word candidates alone would bring it back: it is dropped there too
    rr = searcher.reranker()
    qf = res.query_local
    assert int(rr.bow_candidates(qf, 1)[0]) == FeatureStore.open(store).names.index(str(views_dir / "astronaut.jpg"))


def test_compact_keeps_rows_local_features_and_checksums_aligned(tiny_model, views_dir, tmp_path):
    pytest.importorskip("faiss")
    from regatt_sdk.ann import build_store_index, index_paths
    from regatt_sdk.compact import compact
    from regatt_sdk.integrity import verify
    from regatt_sdk.local.storage import LocalIndex

    store = tmp_path / "s"
    _store_with_local(tiny_model, views_dir, store)
    before = FeatureStore.open(store)
    old_names, old_vecs = before.names, np.array(before.vectors)
    old_local = LocalIndex.open(before)
    build_store_index(store, "flat")
    with FeatureStore.open(store, writable=True) as st:
        remove(st, [0, 3])
    report = compact(store)
    assert (report.before, report.after, report.removed) == (6, 4, 2)
    st = FeatureStore.open(store)
    kept = [1, 2, 4, 5]
    assert st.names == [old_names[i] for i in kept] and deleted_mask(st) is None
    np.testing.assert_array_equal(st.vectors, old_vecs[kept])
    li = LocalIndex.open(st)
    for new, old in enumerate(kept):
        a, b = li.features(new), old_local.features(old)
        np.testing.assert_array_equal(a.desc, b.desc)
        np.testing.assert_array_equal(a.kp, b.kp)
        np.testing.assert_array_equal(a.words, b.words)
        assert (a.width, a.height, a.scale) == (b.width, b.height, b.scale)
    assert verify(store).ok
    assert not any(p.exists() for p in index_paths(store))  # the old ANN index numbered the old rows
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    assert compact(store).removed == 0  # nothing left to do


def test_compact_killed_before_or_between_its_renames_finishes_on_rerun(tmp_path, monkeypatch):
    import regatt_sdk.compact as cp

    vecs = make_store(tmp_path / "s", n=50)
    with FeatureStore.open(tmp_path / "s", writable=True) as st:
        remove(st, range(0, 50, 5))
    clean = tmp_path / "clean"
    import shutil

    shutil.copytree(tmp_path / "s", clean)
    cp.compact(clean)

    def killed(*a):
        raise KeyboardInterrupt

    monkeypatch.setattr(cp, "_swap", killed)  # killed after writing the new store, before the swap
    with pytest.raises(KeyboardInterrupt):
        cp.compact(tmp_path / "s")
    assert FeatureStore.open(tmp_path / "s").count == 50  # untouched
    monkeypatch.undo()
    # a system without an exchange, killed between its two renames
    monkeypatch.setattr(cp, "_exchange", lambda a, b: False)
    real_replace = cp.os.replace
    calls = []

    def replace_then_die(a, b):
        real_replace(a, b)
        if Path(a) == tmp_path / "s":  # the old store moved aside, the new one not yet in place
            calls.append((a, b))
            raise KeyboardInterrupt

    monkeypatch.setattr(cp.os, "replace", replace_then_die)
    with pytest.raises(KeyboardInterrupt):
        cp.compact(tmp_path / "s")
    assert not (tmp_path / "s").exists()
    monkeypatch.setattr(cp.os, "replace", real_replace)
    cp.compact(tmp_path / "s")
    a, b = FeatureStore.open(tmp_path / "s"), FeatureStore.open(clean)
    assert a.names == b.names and a.count == 40
    np.testing.assert_array_equal(a.vectors, b.vectors)
    np.testing.assert_array_equal(a.vectors, vecs[np.setdiff1d(np.arange(50), np.arange(0, 50, 5))])


def test_compact_refuses_side_files_it_does_not_know(tmp_path):
    from regatt_sdk.compact import compact

    make_store(tmp_path / "s", n=5)
    with FeatureStore.open(tmp_path / "s", writable=True) as st:
        st.append([], np.zeros((0, 16), np.float32), side={"other.bin": b"x"})
        remove(st, [1])
    with pytest.raises(StoreError, match="other.bin"):
        compact(tmp_path / "s")
    assert FeatureStore.open(tmp_path / "s").count == 5


def test_pgvector_table_deletes_removed_rows_and_reloads_after_compaction(tmp_path, pg_url):
    pytest.importorskip("psycopg")
    from regatt_sdk.compact import compact
    from regatt_sdk.index.pgvector import load_store

    vecs = make_store(tmp_path / "s", n=200)
    assert load_store(tmp_path / "s", pg_url, table="tomb")["added"] == 200
    gone = np.arange(0, 200, 4)
    with FeatureStore.open(tmp_path / "s", writable=True) as st:
        remove(st, gone)
        st.append(["img00000.jpg"], vecs[:1])  # an updated photo: same name, a new row
    r = load_store(tmp_path / "s", pg_url, table="tomb")
    assert (r["deleted"], r["added"], r["rows"]) == (50, 1, 151)
    assert load_store(tmp_path / "s", pg_url, table="tomb")["added"] == 0  # idempotent
    s = Searcher.for_db(pg_url, table="tomb")
    _, rows = s.search_vectors(vecs[gone[:10]], 10)
    assert not np.isin(rows, gone).any()
    hit = s.hits(*[a[0] for a in s.search_vectors(vecs[0], 1)])[0]
    assert (hit.row, hit.name) == (200, "img00000.jpg")  # the new row, not the removed one
    s.index.close()
    compact(tmp_path / "s")
    r = load_store(tmp_path / "s", pg_url, table="tomb")
    assert r["added"] == 151 and r["rows"] == 151
    s = Searcher.for_db(pg_url, table="tomb")
    st = FeatureStore.open(tmp_path / "s")
    assert s.names == st.names
    s.index.close()
    meta = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert meta["side_meta"]["generation"]


def test_encode_resume_adds_a_removed_photo_again(tiny_model, views_dir, tmp_path):
    from regatt_sdk.encoder import Encoder
    from regatt_sdk.pipeline import encode_to_store

    store = tmp_path / "s"
    encode_to_store(Encoder(tiny_model), [str(views_dir)], store, progress=False)
    name = str(views_dir / "coffee.jpg")
    with FeatureStore.open(store, writable=True) as st:
        remove_names(st, [name])
    r = encode_to_store(Encoder(tiny_model), [str(views_dir)], store, progress=False, resume=True)
    assert (r.encoded, r.skipped) == (1, 5)
    st = FeatureStore.open(store)
    assert live_rows(st)[name] == 6 and st.count == 7
    np.testing.assert_allclose(st.vectors[6], st.vectors[st.names.index(name)], atol=1e-5)  # batched vs alone


def test_local_features_added_later_skip_removed_photos_whose_files_are_gone(tiny_model, views_dir, tmp_path):
    from regatt_sdk.encoder import Encoder
    from regatt_sdk.local.storage import LocalIndex
    from regatt_sdk.pipeline import encode_to_store

    store = tmp_path / "s"
    encode_to_store(Encoder(tiny_model), [str(views_dir)], store, progress=False)
    gone = views_dir / "rocket.jpg"
    with FeatureStore.open(store, writable=True) as st:
        remove_names(st, [str(gone)])
    gone.unlink()
    r = encode_to_store(Encoder(tiny_model), [str(views_dir)], store, progress=False, resume=True, local=True)
    assert r.local_added == 6
    st = FeatureStore.open(store)
    li = LocalIndex.open(st)
    row = st.names.index(str(gone))
    assert li.count == 6 and len(li.features(row)) == 0 and len(li.features((row + 1) % 6)) > 0
