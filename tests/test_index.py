"""The index seam: every backend behind one interface (add, search, rank, vectors, save/load,
size, dim) and the Searcher shared by search and eval."""

from __future__ import annotations

import numpy as np
import pytest

from regatt_sdk.errors import RegattError
from regatt_sdk.expansion import DatabaseAugmentation, QueryExpansion, retrieve
from regatt_sdk.index import VectorIndex, build_index
from regatt_sdk.index.exact import ExactIndex
from regatt_sdk.index.searcher import Searcher


def unit(rng, n, d=16):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def backends():
    out = ["exact"]
    try:
        import faiss  # noqa: F401

        out.append("faiss")
    except ImportError:
        pass
    return out


@pytest.mark.parametrize("backend", backends())
def test_add_search_vectors_save_load(backend, tmp_path):
    rng = np.random.default_rng(0)
    db = unit(rng, 50)
    index = build_index(db[:30], backend)
    assert isinstance(index, VectorIndex)
    assert (index.size, index.dim) == (30, 16)
    index.add(db[30:])
    assert index.size == 50
    np.testing.assert_array_equal(index.vectors(np.array([3, 40])), db[[3, 40]])
    s, i = index.search(db[41], 3)
    assert i[0, 0] == 41 and s.shape == (1, 3)
    with pytest.raises(RegattError, match="8-d"):
        index.add(unit(rng, 2, 8))
    if backend == "exact":
        path = index.save(tmp_path / "db.npy")
        loaded = ExactIndex.load(path)
    else:
        from regatt_sdk.index.faiss_index import FaissIndex

        path = index.save(tmp_path / "db.faiss")
        loaded = FaissIndex.load(path, db)
    assert loaded.size == 50
    np.testing.assert_array_equal(loaded.search(db[:5], 4)[1], index.search(db[:5], 4)[1])


def test_empty_exact_index_fills_by_add():
    rng = np.random.default_rng(1)
    index = ExactIndex.empty(16)
    assert index.size == 0
    index.add(unit(rng, 4))
    assert index.search(index.vectors(np.array([2])), 1)[1][0, 0] == 2


@pytest.mark.parametrize("backend", backends())
def test_searcher_matches_retrieve_with_dba_and_qe(backend):
    rng = np.random.default_rng(2)
    db, q = unit(rng, 120), unit(rng, 4)
    steps = [DatabaseAugmentation(k=3), QueryExpansion(k=4)]
    s1, i1 = Searcher(build_index(db, backend), steps=steps).search_vectors(q)
    # the same steps applied the old way: on the matrices, then one search
    qq, dd = q, db
    for step in steps:
        qq, dd = step(qq, dd, backend)
    s2, i2 = build_index(dd, backend).rank(qq)
    np.testing.assert_array_equal(i1[:, :20], i2[:, :20])
    np.testing.assert_allclose(s1, s2, atol=1e-5)
    s3, i3 = retrieve(q, db, steps=steps, top=10, backend=backend)
    np.testing.assert_array_equal(i3, i1[:, :10])


def test_searcher_hits_need_names_for_every_row():
    rng = np.random.default_rng(3)
    db = unit(rng, 5)
    searcher = Searcher(build_index(db), names=[f"n{i}" for i in range(5)])
    s, i = searcher.search_vectors(db[2], 2)
    hits = searcher.hits(s[0], i[0])
    assert [(h.rank, h.name, h.row) for h in hits][0] == (1, "n2", 2)
    with pytest.raises(RegattError, match="4 names"):
        Searcher(build_index(db), names=["a"] * 4)
    with pytest.raises(RegattError, match="no encoder"):
        searcher.search("x.jpg")
