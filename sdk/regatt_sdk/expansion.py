"""Query expansion and database-side augmentation as composable steps.

* Average query expansion (AQE, the paper's "QE top 5"): the query plus its ``k`` nearest
  database descriptors, averaged, L2-normalised, searched again.
* alpha-QE (Radenovic et al.): the same with weights ``sim^alpha`` (the query's own weight is
  ``1 = (q.q)^alpha``); ``alpha = 0`` is AQE.
* alpha-DBA: every database descriptor replaced by the ``sim^alpha``-weighted sum of itself and
  its ``k`` nearest other database descriptors, L2-normalised.

Each step maps ``(queries (Q, D), index) -> (queries', index')`` (:meth:`apply`, on any
:class:`~regatt_sdk.index.VectorIndex`), or the same on a plain matrix (``step(queries,
database, backend)``); :class:`~regatt_sdk.index.searcher.Searcher` and :func:`retrieve` apply a
sequence of them in order and then search. Negative similarities get weight 0
(a fractional power of a negative number is undefined).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from .index import DEFAULT_CHUNK_ROWS, VectorIndex, as_queries, build_index, check_compatible


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows of ``x`` (M, D) scaled to unit L2 norm (zero rows stay zero); float32."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.maximum(norms, eps)).astype(np.float32, copy=False)


def _weights(scores: np.ndarray, alpha: float) -> np.ndarray:
    """``max(sim, 0) ** alpha``; ``alpha == 0`` gives all ones (plain average). (M, k)."""
    if alpha == 0:
        return np.ones_like(scores, dtype=np.float32)
    return np.power(np.maximum(scores, 0.0), alpha, dtype=np.float32)


def expand_queries(
    queries: np.ndarray,
    database: np.ndarray,
    neighbours: np.ndarray,
    scores: np.ndarray | None = None,
    *,
    k: int = 5,
    alpha: float = 0.0,
) -> np.ndarray:
    """alpha-QE of ``queries`` (Q, D) with their first ``k`` ``neighbours`` (Q, >=k) indices into
    ``database`` (N, D) and the matching ``scores`` (Q, >=k) (needed when ``alpha != 0``).

    Returns (Q, D) float32, unit rows: ``normalize(q + sum_i w_i x_i)``, ``w_i = sim_i^alpha``.
    """
    q = as_queries(queries)
    nb = np.asarray(neighbours, dtype=np.int64)[:, :k]
    if alpha != 0 and scores is None:
        raise ValueError("alpha-QE needs the neighbours' scores")
    w = _weights(np.asarray(scores, dtype=np.float32)[:, :k], alpha) if alpha != 0 else None
    out = q.copy()
    for i in range(q.shape[0]):
        vecs = np.asarray(database[np.sort(nb[i])], dtype=np.float32)  # sorted: memmap friendly
        if w is None:
            out[i] += vecs.sum(axis=0)
        else:
            order = np.argsort(nb[i], kind="stable")
            out[i] += w[i][order] @ vecs
    return l2_normalize(out)


def average_query_expansion(
    queries: np.ndarray, database: np.ndarray, neighbours: np.ndarray, k: int = 5
) -> np.ndarray:
    """The paper's AQE: mean of the query (Q, D) and its ``k`` nearest database rows, normalised."""
    return expand_queries(queries, database, neighbours, k=k, alpha=0.0)


def augment_database(
    database: np.ndarray,
    *,
    k: int = 5,
    alpha: float = 3.0,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    backend: str = "exact",
) -> np.ndarray:
    """alpha-DBA: (N, D) -> (N, D) float32 in memory, each row the ``sim^alpha``-weighted sum of
    itself (weight 1) and its ``k`` nearest other rows, L2-normalised.

    Database-vs-database top-k runs in blocks of ``chunk_rows`` query rows, so the extra memory
    beyond the output is one block of scores.
    """
    check_compatible(np.zeros((1, database.shape[-1]), np.float32), database)
    n = database.shape[0]
    kk = min(k + 1, n)
    index = build_index(database, backend, chunk_rows=chunk_rows)
    out = np.empty(database.shape, dtype=np.float32)
    block_rows = 4096
    for start in range(0, n, block_rows):
        rows = np.asarray(database[start : start + block_rows], dtype=np.float32)
        scores, ids = index.search(rows, kk)
        self_ids = np.arange(start, start + rows.shape[0])[:, None]
        others = ids != self_ids
        # drop self (wherever it ranked) and keep the k best others
        keep = np.argsort(~others, axis=1, kind="stable")[:, : kk - 1]
        nb = np.take_along_axis(ids, keep, 1)
        sc = np.take_along_axis(scores, keep, 1)
        w = _weights(sc, alpha)
        acc = rows.copy()
        for i in range(rows.shape[0]):
            acc[i] += w[i] @ np.asarray(database[nb[i]], dtype=np.float32)
        out[start : start + rows.shape[0]] = l2_normalize(acc)
    return out


class Step(Protocol):
    """A retrieval step: ``(queries (Q, D), database (N, D), backend) -> (queries', database')``,
    and the same on an index: ``apply(queries, index) -> (queries', index')``."""

    def __call__(self, queries: np.ndarray, database: np.ndarray, backend: str) -> tuple[np.ndarray, np.ndarray]: ...

    def apply(self, queries: np.ndarray, index: VectorIndex) -> tuple[np.ndarray, VectorIndex]: ...


@dataclass(frozen=True, eq=False)
class QueryExpansion:
    """alpha-QE over the top ``k`` (``alpha = 0``: the paper's average QE, top 5).

    ``exclude``: per query, database indices that may not serve as neighbours (leave-one-out
    protocols such as Holidays, where the query itself is removed from its own ranking).
    """

    k: int = 5
    alpha: float = 0.0
    exclude: Sequence[np.ndarray] | None = None

    def __call__(
        self, queries: np.ndarray, database: np.ndarray, backend: str = "exact"
    ) -> tuple[np.ndarray, np.ndarray]:
        q = as_queries(queries)
        if self.k <= 0:
            return q, database
        return self.apply(q, build_index(database, backend))[0], database

    def apply(self, queries: np.ndarray, index: VectorIndex) -> tuple[np.ndarray, VectorIndex]:
        """The expanded queries (Q, D) searched on ``index``, and ``index`` unchanged."""
        q = as_queries(queries)
        if self.k <= 0:
            return q, index
        if not self.exclude:
            scores, ids = index.search(q, self.k)
        else:
            if len(self.exclude) != q.shape[0]:
                raise ValueError(f"exclude has {len(self.exclude)} entries for {q.shape[0]} queries")
            extra = max(len(e) for e in self.exclude)
            wide_s, wide_i = index.search(q, self.k + extra)
            rows = [np.flatnonzero(~np.isin(wide_i[r], self.exclude[r]))[: self.k] for r in range(q.shape[0])]
            k = min(len(r) for r in rows)
            ids = np.stack([wide_i[r, sel[:k]] for r, sel in enumerate(rows)])
            scores = np.stack([wide_s[r, sel[:k]] for r, sel in enumerate(rows)])
        k = ids.shape[1]
        ids = np.where(ids < 0, 0, ids)  # fewer found than asked (ANN): row 0 stands in
        return expand_queries(q, IndexRows(index), ids, scores, k=k, alpha=self.alpha), index


class IndexRows:
    """``rows[ids]`` -> ``index.vectors(ids)``: an index seen as the database matrix it holds."""

    def __init__(self, index: VectorIndex):
        self.index = index

    def __getitem__(self, ids: np.ndarray) -> np.ndarray:
        return self.index.vectors(ids)


@dataclass(frozen=True)
class DatabaseAugmentation:
    """alpha-DBA over the top ``k`` neighbours of every database row."""

    k: int = 5
    alpha: float = 3.0

    def __call__(
        self, queries: np.ndarray, database: np.ndarray, backend: str = "exact"
    ) -> tuple[np.ndarray, np.ndarray]:
        if self.k <= 0:
            return as_queries(queries), database
        return as_queries(queries), augment_database(database, k=self.k, alpha=self.alpha, backend=backend)

    def apply(self, queries: np.ndarray, index: VectorIndex) -> tuple[np.ndarray, VectorIndex]:
        """``queries`` unchanged and a new index (same backend) over the augmented database;
        needs an index that gives its rows as a matrix (``index.database``: exact, FAISS, pgvector,
        which reads its table once)."""
        if self.k <= 0:
            return as_queries(queries), index
        database = getattr(index, "database", None)
        if database is None:
            raise ValueError(f"database-side augmentation needs an in-memory index, not {index.backend}")
        # a database backend (pgvector) keeps the augmented rows in memory (``memory_backend``)
        backend = getattr(index, "memory_backend", index.backend)
        augmented = augment_database(database, k=self.k, alpha=self.alpha, backend=backend)
        return as_queries(queries), build_index(augmented, backend)


def apply_steps(
    queries: np.ndarray, database: np.ndarray, steps: Sequence[Step], backend: str = "exact"
) -> tuple[np.ndarray, np.ndarray]:
    """Run ``steps`` in order; returns the final ``(queries (Q, D), database (N, D))``."""
    q = as_queries(queries)
    check_compatible(q, database)
    for step in steps:
        q, database = step(q, database, backend)
    return q, database


def retrieve(
    queries: np.ndarray,
    database: np.ndarray,
    *,
    steps: Sequence[Step] = (),
    top: int | None = None,
    backend: str = "exact",
) -> tuple[np.ndarray, np.ndarray]:
    """Apply ``steps`` then search: ``(scores (Q, k), indices (Q, k))``, ``k = top`` or all N."""
    from .index.searcher import Searcher

    check_compatible(as_queries(queries), database)
    return Searcher(build_index(database, backend), steps=steps).search_vectors(queries, top)
