"""FAISS ANN indexes over feature stores: recall, save/load next to the store, staleness, CLI."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("faiss")

from regatt_sdk import ann  # noqa: E402
from regatt_sdk.index import faiss_index as fx  # noqa: E402
from regatt_sdk.index import topk  # noqa: E402
from regatt_sdk.index.faiss_index import FaissIndex  # noqa: E402
from regatt_sdk.store import FeatureStore  # noqa: E402
from vectors import clustered  # noqa: E402


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / truth.shape[1] for f, t in zip(found, truth)]))


def make_store(path: Path, vectors: np.ndarray) -> None:
    with FeatureStore.create(path, card_hash="card-1", dim=vectors.shape[1]) as st:
        st.append([f"img{i:05d}" for i in range(len(vectors))], vectors)


def test_choice_by_size_and_factories() -> None:
    assert [fx.choose_kind(n) for n in (10, 9_999, 10_000, 99_999, 100_000)] == [
        "flat", "flat", "hnsw", "hnsw", "ivfpq"]  # fmt: skip
    assert fx.default_nlist(1_000_000) == 2048 and fx.default_nlist(10) == 64
    assert fx.factory_string("ivfpq", 1_000_000, 512) == "IVF2048,PQ64"
    assert fx.default_pq_bytes(1280) == 160 and fx.default_pq_bytes(2048) == 256
    with pytest.raises(ann.AnnError, match="unknown index kind"):
        ann.check_kind("lsh")


def test_ivfpq_recall_with_reranking() -> None:
    db = clustered(6000, 64, 60)
    q = clustered(40, 64, 60, seed=1)
    _, truth = topk(q, db, 10)
    index = FaissIndex.build(db, "ivfpq", nlist=32, pq_bytes=8, nprobe=8)
    assert index.meta["train_rows"] == 6000 and index.ntotal == 6000
    assert index.meta["train_s"] >= 0 and index.meta["add_s"] >= 0  # timings reach the built index
    _, raw = index.search(q, 10, rerank=0)
    scores, ids = index.search(q, 10, rerank=300)
    assert recall(ids, truth) >= 0.9 and recall(ids, truth) >= recall(raw, truth)
    np.testing.assert_allclose(scores, np.take_along_axis(q @ db.T, ids, 1), atol=1e-5)
    assert np.all(np.diff(scores, axis=1) <= 1e-7)  # best first


def test_flat_and_hnsw_agree_with_exact() -> None:
    db = clustered(3000, 32, 30)
    q = clustered(20, 32, 30, seed=2)
    _, truth = topk(q, db, 10)
    assert np.array_equal(FaissIndex.build(db, "auto").search(q, 10)[1], truth)  # flat
    assert recall(FaissIndex.build(db, "hnsw").search(q, 10)[1], truth) >= 0.95


def test_saved_next_to_store_and_stale_detection(tmp_path: Path) -> None:
    db = clustered(500, 16, 10)
    store = tmp_path / "feats"
    make_store(store, db)
    assert ann.load_store_index(store) == (None, "")
    built = ann.build_store_index(store, "hnsw")
    index_file, meta_file = ann.index_paths(store)
    assert index_file == tmp_path / "feats.ann.faiss" and index_file.is_file() and meta_file.is_file()
    loaded, why = ann.load_store_index(store)
    assert why == "" and loaded is not None and loaded.kind == "hnsw"
    assert np.array_equal(loaded.search(db[:5], 3)[1], built.search(db[:5], 3)[1])
    with FeatureStore.open(store, writable=True) as st:
        st.append(["extra"], db[:1])
    stale, why = ann.load_store_index(store)
    assert stale is None and "covers 500 rows but the store now has 501" in why


def test_qe_through_the_index_matches_exact_qe() -> None:
    from regatt_sdk.expansion import QueryExpansion, retrieve
    from regatt_sdk.index.searcher import Searcher

    db = clustered(400, 16, 8)
    index = FaissIndex.build(db, "flat")
    s1, i1 = Searcher(index, steps=[QueryExpansion(k=3)]).search_vectors(db[3], 5)
    s2, i2 = retrieve(db[3], db, steps=[QueryExpansion(k=3)], top=5)
    assert np.array_equal(i1, i2) and np.allclose(s1, s2, atol=1e-5)


def test_cli_index_faiss_then_search(tiny_model: Path, photo_dir: Path, tmp_path: Path, capsys) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from test_encode_cli import run_main

    store = tmp_path / "db"
    assert run_main(["index", str(tiny_model), str(photo_dir), "-o", str(store), "--faiss",
                     "--no-progress", "--max-side", "96"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "ANN index flat (Flat) over 6 rows" in out and (tmp_path / "db.ann.faiss").is_file()
    query = str(photo_dir / "chelsea.jpg")
    args = ["search", str(tiny_model), str(store), query, "--top", "3", "--max-side", "96"]
    assert run_main(args) == 0
    with_ann = capsys.readouterr().out
    assert run_main(args + ["--no-ann"]) == 0
    exact = capsys.readouterr().out
    assert with_ann.split() == exact.split() and "chelsea.jpg" in with_ann.splitlines()[0]
    # --resume --faiss with no sources only (re)builds the index
    assert run_main(["index", str(tiny_model), "-o", str(store), "--resume", "--faiss",
                     "--faiss-kind", "hnsw"]) == 0  # fmt: skip
    assert "ANN index hnsw" in capsys.readouterr().out
