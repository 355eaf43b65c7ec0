"""Exact inner-product search over unit descriptors: top-k and full rankings.

Pure numpy, chunked over database rows so the database (an in-memory array or a read-only
``np.memmap`` of a feature store) is read block by block: peak extra memory is one block of
scores, ``Q x chunk_rows`` floats, plus the running top-k, never a copy of the database.
The FAISS backend (:mod:`.faiss_index`) has the same interface.

Shapes: queries ``(Q, D)`` float32 (a single ``(D,)`` query is promoted to ``(1, D)``);
database ``(N, D)``; scores ``(Q, k)`` float32, best first; indices ``(Q, k)`` int64 rows of the
database. Ties are ordered by ascending database index (exact backend).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import RegattError

#: database rows scored per block (65536 x 2048 float32 = 512 MiB read per block from a store)
DEFAULT_CHUNK_ROWS = 65536
#: upper bound on one block of scores, ``queries x rows`` elements (64 MiB of float32)
_MAX_BLOCK_ELEMENTS = 1 << 24
#: queries handled together (bounds the score block when many queries, e.g. DBA)
_QUERY_BLOCK = 4096


def as_queries(queries: np.ndarray) -> np.ndarray:
    """``(Q, D)`` C-contiguous float32 from ``(D,)`` or ``(Q, D)``."""
    q = np.asarray(queries, dtype=np.float32)
    if q.ndim == 1:
        q = q[None, :]
    if q.ndim != 2:
        raise ValueError(f"queries must be (Q, D) or (D,), got shape {q.shape}")
    return np.ascontiguousarray(q)


def check_database(database: np.ndarray, what: str = "database") -> None:
    """Raise :class:`RegattError` unless ``database`` is a non-empty (N, D) matrix."""
    if database.ndim != 2:
        raise RegattError(f"{what} must be a (N, D) matrix, got shape {tuple(database.shape)}")
    if database.shape[0] == 0:
        raise RegattError(f"{what} is empty: encode some images into it first")


def check_compatible(queries: np.ndarray, database: np.ndarray, what: str = "database") -> None:
    """Raise :class:`RegattError` unless ``queries`` (Q, D) and ``database`` (N, D) can be compared."""
    check_database(database, what)
    if queries.shape[-1] != database.shape[1]:
        raise RegattError(
            f"{what} holds {database.shape[1]}-d descriptors but the queries are "
            f"{queries.shape[-1]}-d: encode the {what} and the queries with the same model"
        )


def _chunk_rows(num_queries: int, chunk_rows: int) -> int:
    return max(1, min(chunk_rows, max(1024, _MAX_BLOCK_ELEMENTS // max(num_queries, 1))))


def _sorted_topk(scores: np.ndarray, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sort each row by descending score, then ascending index. (Q, k) -> (Q, k)."""
    order = np.lexsort((indices, -scores), axis=-1) if scores.size else indices
    return np.take_along_axis(scores, order, 1), np.take_along_axis(indices, order, 1)


def topk(
    queries: np.ndarray,
    database: np.ndarray,
    k: int,
    *,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` by inner product: ``(scores (Q, k) float32, indices (Q, k) int64)``.

    ``database`` (N, D) is scored in blocks of rows; a running top-k per query is kept with
    ``argpartition``. ``k`` is clipped to N.
    """
    q = as_queries(queries)
    check_compatible(q, database)
    n = database.shape[0]
    k = min(int(k), n)
    if k <= 0:
        raise ValueError(f"k must be at least 1, got {k}")
    out_s = np.empty((q.shape[0], k), dtype=np.float32)
    out_i = np.empty((q.shape[0], k), dtype=np.int64)
    for q0 in range(0, q.shape[0], _QUERY_BLOCK):
        qb = q[q0 : q0 + _QUERY_BLOCK]
        best_s = np.empty((qb.shape[0], 0), dtype=np.float32)
        best_i = np.empty((qb.shape[0], 0), dtype=np.int64)
        step = _chunk_rows(qb.shape[0], chunk_rows)
        for start in range(0, n, step):
            block = np.asarray(database[start : start + step], dtype=np.float32)
            scores = qb @ block.T  # (q, c)
            ids = np.broadcast_to(np.arange(start, start + block.shape[0], dtype=np.int64), scores.shape)
            cand_s = np.concatenate([best_s, scores], axis=1)
            cand_i = np.concatenate([best_i, ids], axis=1)
            if cand_s.shape[1] > k:
                part = np.argpartition(-cand_s, k - 1, axis=1)[:, :k]
                cand_s = np.take_along_axis(cand_s, part, 1)
                cand_i = np.take_along_axis(cand_i, part, 1)
            best_s, best_i = cand_s, cand_i
        out_s[q0 : q0 + qb.shape[0]], out_i[q0 : q0 + qb.shape[0]] = _sorted_topk(best_s, best_i)
    return out_s, out_i


def scores_all(queries: np.ndarray, database: np.ndarray, *, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> np.ndarray:
    """All inner products ``(Q, N)`` float32, computed block by block over database rows."""
    q = as_queries(queries)
    check_compatible(q, database)
    n = database.shape[0]
    out = np.empty((q.shape[0], n), dtype=np.float32)
    step = _chunk_rows(q.shape[0], chunk_rows)
    for start in range(0, n, step):
        block = np.asarray(database[start : start + step], dtype=np.float32)
        out[:, start : start + block.shape[0]] = q @ block.T
    return out


def rank(
    queries: np.ndarray, database: np.ndarray, *, chunk_rows: int = DEFAULT_CHUNK_ROWS
) -> tuple[np.ndarray, np.ndarray]:
    """Full ranking of the database for each query: ``(scores (Q, N), indices (Q, N))``.

    Best first; equal scores keep ascending database order (stable sort).
    """
    s = scores_all(queries, database, chunk_rows=chunk_rows)
    order = np.argsort(-s, axis=1, kind="stable")
    return np.take_along_axis(s, order, 1), order.astype(np.int64, copy=False)


class ExactIndex:
    """Exact numpy search over ``database`` (N, D) (kept by reference, e.g. a memmap).

    :meth:`add` appends rows (the database then lives in memory); :meth:`save` writes a ``.npy``
    file (atomically replaced) that :meth:`load` memory-maps back.
    """

    backend = "exact"

    def __init__(self, database: np.ndarray, *, chunk_rows: int = DEFAULT_CHUNK_ROWS):
        check_database(database)
        self.database = database
        self.chunk_rows = chunk_rows

    @classmethod
    def empty(cls, dim: int, *, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> ExactIndex:
        """An index of ``dim``-d vectors with no rows yet (fill it with :meth:`add`)."""
        index = cls.__new__(cls)
        index.database = np.zeros((0, int(dim)), dtype=np.float32)
        index.chunk_rows = chunk_rows
        return index

    @property
    def ntotal(self) -> int:
        return int(self.database.shape[0])

    @property
    def size(self) -> int:
        """Rows in the index (N)."""
        return self.ntotal

    @property
    def dim(self) -> int:
        return int(self.database.shape[1])

    def add(self, vectors: np.ndarray) -> None:
        """Append ``vectors`` (M, D) float32 as rows ``N .. N+M-1``."""
        v = as_queries(vectors)
        if v.shape[1] != self.dim:
            raise RegattError(f"cannot add {v.shape[1]}-d vectors to an index of {self.dim}-d ones")
        self.database = np.concatenate([np.asarray(self.database, dtype=np.float32), v])

    def vectors(self, ids: np.ndarray) -> np.ndarray:
        """Rows ``ids`` (K,) of the database: (K, D) float32."""
        return np.asarray(self.database[np.asarray(ids, dtype=np.int64)], dtype=np.float32)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k``: ``(scores (Q, k), indices (Q, k))``."""
        return topk(queries, self.database, k, chunk_rows=self.chunk_rows)

    def rank(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Whole database ranked: ``(scores (Q, N), indices (Q, N))``."""
        return rank(queries, self.database, chunk_rows=self.chunk_rows)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the rows to ``path`` (``.npy``, atomically replaced); returns the path."""
        from ..files import atomic_write

        out = Path(path)
        with atomic_write(out) as f:
            np.save(f, np.ascontiguousarray(self.database, dtype=np.float32))
        return out

    @classmethod
    def load(cls, path: str | os.PathLike, *, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> ExactIndex:
        """The index saved at ``path``, memory-mapped read-only (added rows go to memory)."""
        try:
            database = np.load(Path(path), mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise RegattError(f"{path}: not a saved exact index ({exc})") from None
        return cls(database, chunk_rows=chunk_rows)
