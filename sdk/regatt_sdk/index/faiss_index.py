"""The FAISS backend (``pip install 'regatt[faiss]'``): one class for every FAISS index kind.

* ``flat``: exact inner product (``IndexFlatIP``).
* ``hnsw``: an HNSW graph (``HNSW32``) over the full float32 vectors; no training, high recall,
  memory ``N x (4 D + ~260)`` bytes.
* ``ivfpq``: an inverted file of ``nlist ~ 2 sqrt(N)`` lists (power of two) with
  product-quantised codes (``PQ m``, ``m`` bytes a vector, ``D / m`` dimensions a sub-vector).
  Trained on a random sample (``40 x nlist`` rows, at most 200,000), then every row is added in
  blocks (e.g. read from a store's memory map). Searches visit ``nprobe`` lists and re-rank the
  best ``rerank`` candidates exactly with the database's own float32 vectors, so the compressed
  codes only have to find the neighbourhood, not order it.
* ``auto``: ``flat`` below 10,000 rows, ``hnsw`` below 100,000, else ``ivfpq``.

Shapes: queries ``(Q, D)`` float32 (or one ``(D,)``); results ``(scores (Q, k) float32,
indices (Q, k) int64)`` best first, ``-1`` indices (score ``-inf``) when fewer than ``k`` found.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import RegattError
from ..optional import require
from .exact import DEFAULT_CHUNK_ROWS, as_queries, check_compatible, check_database

KINDS = ("auto", "flat", "hnsw", "ivfpq")
#: below this many rows ``auto`` keeps exact search
FLAT_MAX_ROWS = 10_000
#: below this many rows ``auto`` builds HNSW; at and above it, IVF-PQ
HNSW_MAX_ROWS = 100_000
#: the most rows IVF-PQ is trained on
MAX_TRAIN_ROWS = 200_000


class IndexBuildError(RegattError):
    """A vector index cannot be built, saved or loaded."""


def import_faiss():
    """``faiss`` or a :class:`~regatt_sdk.errors.MissingExtraError` naming ``regatt[faiss]``."""
    return require("faiss", extra="faiss", package="faiss-cpu")


def choose_kind(n: int) -> str:
    """``flat``, ``hnsw`` or ``ivfpq`` for ``n`` rows (see the module docstring)."""
    if n < FLAT_MAX_ROWS:
        return "flat"
    if n < HNSW_MAX_ROWS:
        return "hnsw"
    return "ivfpq"


def check_kind(kind: str) -> str:
    """``kind`` if it is one of :data:`KINDS`, else :class:`IndexBuildError` (before any work)."""
    if kind not in KINDS:
        raise IndexBuildError(f"unknown index kind '{kind}': use one of {', '.join(KINDS)}")
    return kind


def default_nlist(n: int) -> int:
    """Inverted lists for ``n`` rows: the power of two nearest ``2 sqrt(n)``, within [64, 65536]."""
    target = 2.0 * math.sqrt(max(n, 1))
    return int(min(65536, max(64, 2 ** round(math.log2(target)))))


def default_pq_bytes(dim: int) -> int:
    """PQ sub-quantisers (bytes per vector): ``dim / 8`` (8 dims each), a divisor of ``dim``."""
    target = max(1, dim // 8)
    for m in range(target, 0, -1):
        if dim % m == 0:
            return m
    return 1


def factory_string(
    kind: str, n: int, dim: int, *, nlist: int | None = None, pq_bytes: int | None = None, hnsw_m: int = 32
) -> str:
    """The ``faiss.index_factory`` description of ``kind`` for ``n`` rows of ``dim``."""
    if kind == "flat":
        return "Flat"
    if kind == "hnsw":
        return f"HNSW{hnsw_m}"
    if kind == "ivfpq":
        m = pq_bytes or default_pq_bytes(dim)
        if dim % m:
            raise IndexBuildError(f"PQ bytes {m} must divide the descriptor dimension {dim}")
        return f"IVF{nlist or default_nlist(n)},PQ{m}"
    raise IndexBuildError(f"unknown index kind '{kind}': use one of {', '.join(KINDS)}")


def rerank_exact(
    queries: np.ndarray, database: np.ndarray, candidates: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Re-score ``candidates`` (Q, C) row ids (``-1`` = none) exactly against ``database`` (N, D).

    Returns the best ``k``: ``(scores (Q, k) float32, indices (Q, k) int64)``; rows are read from
    the (memory-mapped) database in ascending order.
    """
    q = as_queries(queries)
    out_s = np.full((q.shape[0], k), -np.inf, dtype=np.float32)
    out_i = np.full((q.shape[0], k), -1, dtype=np.int64)
    for r in range(q.shape[0]):
        ids = np.unique(candidates[r][candidates[r] >= 0])
        if ids.size == 0:
            continue
        scores = np.asarray(database[ids], dtype=np.float32) @ q[r]
        order = np.lexsort((ids, -scores))[:k]
        out_s[r, : order.size] = scores[order]
        out_i[r, : order.size] = ids[order]
    return out_s, out_i


def train_sample(database: np.ndarray, size: int, seed: int = 0) -> np.ndarray:
    """``size`` distinct random rows of ``database`` (N, D), read in ascending order: (size, D)."""
    n = database.shape[0]
    if size >= n:
        return np.ascontiguousarray(database[:], dtype=np.float32)
    rows = np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))
    out = np.empty((size, database.shape[1]), dtype=np.float32)
    for start in range(0, size, 65536):
        out[start : start + 65536] = database[rows[start : start + 65536]]
    return out


def _tune_training(faiss, index) -> None:
    """IVF-PQ training settings: 10 k-means iterations for the coarse lists and the PQ
    codebooks, 64 points per PQ centroid, and no polysemous training (its code reordering is
    unused here and costs ten times the rest of the training)."""
    ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
    ivf.cp.niter = 10
    ivf.do_polysemous_training = False
    ivf.pq.cp.niter = 10
    ivf.pq.cp.max_points_per_centroid = 64


class FaissIndex:
    """A FAISS index over ``database`` (N, D) (the float32 rows, kept by reference for exact
    re-ranking and :meth:`vectors`), with the :class:`~.exact.ExactIndex` interface.

    ``meta`` holds ``kind``, ``factory``, ``count``, ``dim``, ``nprobe``, ``rerank`` and build
    details; :meth:`search` uses its ``nprobe``/``rerank`` unless given others. Build one with
    :meth:`build`; :meth:`save` / :meth:`load` write and read the FAISS file plus a JSON file
    of ``meta``.
    """

    backend = "faiss"

    def __init__(self, index: Any, database: np.ndarray, meta: dict | None = None):
        self.index = index
        self.database = database
        self.meta: dict = dict(meta or {})

    # -- building ------------------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        database: np.ndarray,
        kind: str = "flat",
        *,
        nlist: int | None = None,
        pq_bytes: int | None = None,
        hnsw_m: int = 32,
        train_rows: int | None = None,
        nprobe: int | None = None,
        rerank: int = 100,
        seed: int = 0,
        chunk_rows: int = DEFAULT_CHUNK_ROWS,
    ) -> FaissIndex:
        """A :class:`FaissIndex` of ``kind`` over ``database`` (N, D) float32 unit rows (e.g. a
        memmap). IVF-PQ is trained on ``train_rows`` random rows (default
        ``min(N, max(40 nlist, 10 000), 200 000)``). Rows are added ``chunk_rows`` at a time, so
        only one block is in memory besides the index."""
        faiss = import_faiss()
        check_kind(kind)
        check_database(database)
        n, dim = (int(s) for s in database.shape)
        kind = choose_kind(n) if kind == "auto" else kind
        lists = nlist or default_nlist(n)
        if kind == "ivfpq" and n < lists:
            raise IndexBuildError(f"IVF with {lists} lists needs at least {lists} rows, the database has {n}")
        factory = factory_string(kind, n, dim, nlist=lists, pq_bytes=pq_bytes, hnsw_m=hnsw_m)
        if kind == "flat":
            index = faiss.IndexFlatIP(dim)
        else:
            index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
        if kind == "ivfpq":
            _tune_training(faiss, index)
        meta: dict = {"kind": kind, "factory": factory, "count": n, "dim": dim}
        t0 = time.perf_counter()
        if not index.is_trained:
            rows = min(n, train_rows or min(max(40 * lists, 10_000), MAX_TRAIN_ROWS))
            index.train(train_sample(database, rows, seed))
            meta.update(train_rows=rows, nlist=lists, nprobe=int(nprobe or max(8, lists // 64)), rerank=int(rerank))
        meta["train_s"] = round(time.perf_counter() - t0, 3)
        if kind == "hnsw":
            index.hnsw.efConstruction = 80
            meta["ef_search"] = 128
        out = cls(index, database, meta)
        t1 = time.perf_counter()
        out._add_rows(database, chunk_rows)
        out.meta["add_s"] = round(time.perf_counter() - t1, 3)  # the constructor copied meta
        return out

    def _add_rows(self, rows: np.ndarray, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> None:
        for start in range(0, rows.shape[0], chunk_rows):
            self.index.add(np.ascontiguousarray(rows[start : start + chunk_rows], dtype=np.float32))

    # -- the index interface -------------------------------------------------------------------
    @property
    def kind(self) -> str:
        return str(self.meta.get("kind", "flat"))

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    @property
    def size(self) -> int:
        """Rows in the index (N)."""
        return self.ntotal

    @property
    def dim(self) -> int:
        return int(self.index.d)

    def add(self, vectors: np.ndarray) -> None:
        """Append ``vectors`` (M, D) as rows ``N .. N+M-1`` (the database then lives in memory)."""
        v = as_queries(vectors)
        if v.shape[1] != self.dim:
            raise IndexBuildError(f"cannot add {v.shape[1]}-d vectors to an index of {self.dim}-d ones")
        self._add_rows(v)
        self.database = np.concatenate([np.asarray(self.database, dtype=np.float32), v])
        self.meta["count"] = self.ntotal

    def vectors(self, ids: np.ndarray) -> np.ndarray:
        """Rows ``ids`` (K,) of the database: (K, D) float32."""
        return np.asarray(self.database[np.asarray(ids, dtype=np.int64)], dtype=np.float32)

    def search(
        self, queries: np.ndarray, k: int, *, nprobe: int | None = None, rerank: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` by inner product: ``(scores (Q, k) float32, indices (Q, k) int64)``.

        ``nprobe``: inverted lists visited (IVF); ``rerank``: candidates fetched from the index
        and re-scored with the exact vectors (IVF-PQ; 0 returns the PQ scores as they are).
        """
        q = as_queries(queries)
        check_compatible(q, self.database, "database" if self.kind == "flat" else "ANN index")
        k = min(int(k), self.ntotal)
        if k <= 0:
            raise ValueError(f"k must be at least 1, got {k}")
        kind = self.kind
        if kind == "ivfpq":
            faiss = import_faiss()
            ivf = faiss.extract_index_ivf(self.index)
            ivf.nprobe = int(nprobe or self.meta.get("nprobe", 32))
            depth = int(self.meta.get("rerank", 100) if rerank is None else rerank)
            fetch = min(self.ntotal, max(k, depth))
            scores, ids = self.index.search(q, fetch)
            if depth > 0:
                scores, ids = rerank_exact(q, self.database, ids, k)
            return scores[:, :k].astype(np.float32, copy=False), ids[:, :k].astype(np.int64)
        if kind == "hnsw":
            self.index.hnsw.efSearch = max(int(self.meta.get("ef_search", 128)), 2 * k)
        scores, ids = self.index.search(q, k)
        return scores.astype(np.float32, copy=False), ids.astype(np.int64, copy=False)

    def rank(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Whole database ranked: ``(scores (Q, N), indices (Q, N))``."""
        return self.search(queries, self.ntotal)

    # -- files ---------------------------------------------------------------------------------
    def save(self, index_file: str | os.PathLike, meta_file: str | os.PathLike | None = None, **extra: Any) -> Path:
        """Write the FAISS index to ``index_file`` and ``meta`` (plus ``extra`` fields) as JSON to
        ``meta_file`` (default ``index_file`` + ``.json``), each atomically replaced."""
        from ..files import new_file_mode, staged_file, write_text_atomic

        faiss = import_faiss()
        index_file = Path(index_file)
        meta_file = Path(meta_file) if meta_file is not None else index_file.with_name(index_file.name + ".json")
        meta = dict(self.meta, **extra)
        meta.update(faiss=getattr(faiss, "__version__", "?"), index_file=index_file.name)
        with staged_file(index_file) as tmp:
            faiss.write_index(self.index, tmp)
            os.chmod(tmp, new_file_mode())
            os.replace(tmp, index_file)
        write_text_atomic(meta_file, json.dumps(meta, indent=1, sort_keys=True) + "\n")
        self.meta = meta
        return index_file

    @classmethod
    def load(
        cls, index_file: str | os.PathLike, database: np.ndarray, meta_file: str | os.PathLike | None = None
    ) -> FaissIndex:
        """The index written by :meth:`save`, over ``database`` (the rows it was built on)."""
        faiss = import_faiss()
        index_file = Path(index_file)
        meta_file = Path(meta_file) if meta_file is not None else index_file.with_name(index_file.name + ".json")
        try:
            meta = json.loads(meta_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise IndexBuildError(f"{meta_file} is unreadable ({exc})") from None
        try:
            index = faiss.read_index(str(index_file))
        except RuntimeError as exc:
            raise IndexBuildError(f"{index_file} is unreadable ({str(exc).strip().splitlines()[-1]})") from None
        return cls(index, database, meta)
