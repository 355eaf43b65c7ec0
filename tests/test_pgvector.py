"""PostgreSQL + pgvector as an index, against a real server the tests start (no mock): loading
a store with COPY (idempotent, resumable, one model per table), HNSW on ``vector`` and on
``halfvec`` above 2000-d, QE and DBA through the Searcher, ``regatt search --db``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("psycopg", reason="pip install 'regatt[postgres]'")
pytest.importorskip("pgvector", reason="pip install 'regatt[postgres]'")

from regatt_sdk.expansion import DatabaseAugmentation, QueryExpansion  # noqa: E402
from regatt_sdk.index import build_index  # noqa: E402
from regatt_sdk.index.pgvector import DatabaseError, PgVectorIndex, index_type, load_store  # noqa: E402
from regatt_sdk.index.searcher import Searcher  # noqa: E402
from regatt_sdk.store import FeatureStore  # noqa: E402
from vectors import clustered  # noqa: E402


def make_store(path: Path, vectors: np.ndarray, card: str = "card-1", upto: int | None = None) -> None:
    names = [f"img{i:05d}" for i in range(len(vectors))]
    if (path / "manifest.json").exists():
        st = FeatureStore.open_for_append(path, card_hash=card, dim=vectors.shape[1], resume=True)
        start = st.count
    else:
        st = FeatureStore.create(path, card_hash=card, dim=vectors.shape[1])
        start = 0
    with st:
        stop = len(vectors) if upto is None else upto
        st.append(names[start:stop], vectors[start:stop])


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / truth.shape[1] for f, t in zip(found, truth)]))


def test_index_type_limits() -> None:
    assert index_type(1280) == "vector" and index_type(2000) == "vector"
    assert index_type(2048) == "halfvec" and index_type(4000) == "halfvec"
    with pytest.raises(DatabaseError, match="cannot index 4096-d"):
        index_type(4096)


def test_load_is_idempotent_resumable_and_one_model(pg_url: str, tmp_path: Path) -> None:
    db = clustered(1200, 32, 12)
    store = tmp_path / "s"
    make_store(store, db, upto=700)
    first = load_store(store, pg_url, table="t_load", batch_rows=300)
    assert first["added"] == 700 and first["rows"] == 700
    make_store(store, db)  # the store grew: a re-run adds only the missing rows
    again = load_store(store, pg_url, table="t_load", batch_rows=300)
    assert again["added"] == 500 and again["rows"] == 1200
    assert load_store(store, pg_url, table="t_load")["added"] == 0
    index = PgVectorIndex(pg_url, "t_load")
    assert index.size == 1200 and index.dim == 32 and index.card_hash == "card-1"
    assert index.names() == FeatureStore.open(store).names
    np.testing.assert_array_equal(index.vectors(np.array([1199, 0, 5])), db[[1199, 0, 5]])
    # another model's store, or another store of the same model, is refused
    other = tmp_path / "other"
    make_store(other, db[:10], card="card-2")
    with pytest.raises(DatabaseError, match="another model"):
        load_store(other, pg_url, table="t_load")
    shuffled = tmp_path / "shuffled"
    with FeatureStore.create(shuffled, card_hash="card-1", dim=32) as st:
        st.append([f"x{i}" for i in range(1300)], clustered(1300, 32, 12, seed=3))
    with pytest.raises(DatabaseError, match="another store"):
        load_store(shuffled, pg_url, table="t_load")
    with pytest.raises(DatabaseError, match="no regatt table"):
        PgVectorIndex(pg_url, "t_missing")


def test_kill_during_load_then_resume(pg_url: str, tmp_path: Path) -> None:
    """A load killed between batches keeps whole batches; the re-run completes it exactly."""
    import subprocess
    import sys

    db = clustered(3000, 16, 20, seed=5)
    store = tmp_path / "s"
    make_store(store, db)
    code = (
        "import sys, os\n"
        "from regatt_sdk.index.pgvector import load_store\n"
        "def stop(done, total):\n"
        "    if done >= 1000: os._exit(9)\n"
        f"load_store({str(store)!r}, {pg_url!r}, table='t_kill', batch_rows=500, progress=stop)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 9, proc.stderr
    assert PgVectorIndex(pg_url, "t_kill").size == 1000
    assert load_store(store, pg_url, table="t_kill", batch_rows=500)["added"] == 2000
    index = PgVectorIndex(pg_url, "t_kill", exact=True)
    np.testing.assert_array_equal(index.vectors(np.arange(3000)), db)


@pytest.mark.parametrize("dim", [48, 2048])
def test_hnsw_search_matches_exact(pg_url: str, dim: int) -> None:
    """HNSW on ``vector`` (48-d) and on ``halfvec`` (2048-d): high recall, exact float32 scores."""
    db = clustered(2000, dim, 40, seed=dim)
    q = clustered(30, dim, 40, seed=dim + 1)
    index = build_index(db, "pgvector", url=pg_url, table=f"t_hnsw{dim}", card_hash="c")
    assert isinstance(index, PgVectorIndex) and index.kind == ("vector" if dim <= 2000 else "halfvec")
    with index.connection() as conn:
        plan = conn.execute(f"SELECT indexdef FROM pg_indexes WHERE indexname = 't_hnsw{dim}_hnsw'").fetchone()[0]
    assert "hnsw" in plan and (("halfvec" in plan) == (dim > 2000))
    truth_s, truth = build_index(db).search(q, 10)
    scores, rows = index.search(q, 10)
    assert recall(rows, truth) >= 0.95
    np.testing.assert_allclose(scores, np.take_along_axis(q @ db.T, rows, 1), atol=1e-5)
    ex_s, ex = PgVectorIndex(pg_url, f"t_hnsw{dim}", exact=True).search(q, 10)
    np.testing.assert_array_equal(ex, truth)
    np.testing.assert_allclose(ex_s, truth_s, atol=1e-5)
    full_s, full = index.rank(q[:2])
    assert full.shape == (2, 2000)
    np.testing.assert_array_equal(full[:, :10], truth[:2])


def test_qe_and_dba_on_top(pg_url: str, tmp_path: Path) -> None:
    """The Searcher over the database gives the same QE and DBA rankings as over the store."""
    db = clustered(800, 24, 16, seed=7)
    q = clustered(12, 24, 16, seed=8)
    store = tmp_path / "s"
    make_store(store, db)
    load_store(store, pg_url, table="t_qe")
    pg = Searcher.for_db(pg_url, table="t_qe", ef_search=400)
    mem = Searcher.for_store(store, ann=False)
    for steps in ([QueryExpansion(k=5)], [QueryExpansion(k=3, alpha=3.0)]):
        a = Searcher(pg.index, pg.names, steps=steps).search_vectors(q, 10)
        b = Searcher(mem.index, mem.names, steps=steps).search_vectors(q, 10)
        np.testing.assert_array_equal(a[1], b[1])
        np.testing.assert_allclose(a[0], b[0], atol=1e-5)
    dba = DatabaseAugmentation(k=3)
    _, augmented = dba.apply(q, pg.index)  # reads the table once, keeps the result in memory
    _, expected = dba.apply(q, mem.index)
    assert augmented.backend == "exact"
    np.testing.assert_array_equal(augmented.search(q, 10)[1], expected.search(q, 10)[1])


def test_pooled_index_searches_from_threads(pg_url: str) -> None:
    """Threads searching one index through a pool of 3 get the answers of a single-connection
    index, HNSW and exact (``rank``) calls mixed, and the pool never exceeds its size."""
    from concurrent.futures import ThreadPoolExecutor

    db = clustered(1500, 40, 30, seed=11)
    q = clustered(24, 40, 30, seed=12)
    build_index(db, "pgvector", url=pg_url, table="t_pool", card_hash="c").close()
    single = PgVectorIndex(pg_url, "t_pool")
    want = single.search(q, 10)
    want_rank = single.rank(q[:3])
    single.close()
    pooled = PgVectorIndex(pg_url, "t_pool", pool_size=3)
    try:
        with ThreadPoolExecutor(6) as ex:
            hnsw = list(ex.map(lambda i: pooled.search(q[i : i + 1], 10), range(len(q))))
            ranks = list(ex.map(lambda i: pooled.rank(q[i : i + 1]), range(3)))
        np.testing.assert_array_equal(np.concatenate([r for _, r in hnsw]), want[1])
        np.testing.assert_allclose(np.concatenate([s for s, _ in hnsw]), want[0], atol=1e-6)
        np.testing.assert_array_equal(np.concatenate([r for _, r in ranks]), want_rank[1])
        stats = pooled._pool.get_stats()
        assert stats["pool_size"] == 3 and stats.get("connections_num", 3) == 3, stats
    finally:
        pooled.close()
    with pytest.raises(ValueError, match="pool_size"):
        PgVectorIndex(pg_url, "t_pool", pool_size=0)
