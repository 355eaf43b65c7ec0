"""An index with some rows left out: removed photos (tombstones) and rows a filter rejects.

:class:`MaskedIndex` wraps any :class:`~regatt_sdk.index.VectorIndex` and a boolean ``exclude``
mask over its rows. :meth:`~MaskedIndex.search` asks the inner index for ``k`` plus the number of
excluded rows when that is small, else for ever more candidates (doubling) until ``k`` kept rows
come back or the inner index has nothing more, then drops the excluded ones; over an exact index
(numpy) it scores the kept rows in one pass instead (excluded rows get ``-inf``). Over an exact
index that is the true top-``k`` of the kept rows; over an approximate one (FAISS HNSW / IVF-PQ)
it is that index's ranking of them. Row numbers (and so names) are the inner index's.
"""

from __future__ import annotations

import os

import numpy as np

from ..errors import RegattError
from .exact import _chunk_rows, _sorted_topk, as_queries


class MaskedIndex:
    """``MaskedIndex(inner, exclude)``: ``exclude`` ``(size,)`` bool, True = never returned."""

    def __init__(self, inner, exclude: np.ndarray):
        exclude = np.asarray(exclude, bool)
        if exclude.shape != (inner.size,):
            raise RegattError(f"a mask of {exclude.shape} for an index of {inner.size} rows")
        self.inner = inner
        self.exclude = exclude
        self.backend = inner.backend
        self.kept = int(inner.size - exclude.sum())

    @property
    def size(self) -> int:
        return int(self.inner.size)

    @property
    def dim(self) -> int:
        return int(self.inner.dim)

    @property
    def meta(self) -> dict:
        return getattr(self.inner, "meta", {})

    def add(self, vectors: np.ndarray) -> None:
        raise RegattError("a masked index is read-only: add rows to the store, then search it again")

    def vectors(self, ids: np.ndarray) -> np.ndarray:
        return self.inner.vectors(ids)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` kept rows: ``(scores (Q, k), rows (Q, k))``, ``-1`` rows when fewer match."""
        q = as_queries(queries)
        k = int(k)
        if k <= 0:
            raise ValueError(f"k must be at least 1, got {k}")
        out_s = np.full((len(q), k), -np.inf, np.float32)
        out_i = np.full((len(q), k), -1, np.int64)
        if self.backend == "exact" and getattr(self.inner, "database", None) is not None:
            return self._exact(q, k, out_s, out_i)
        excluded = self.size - self.kept
        for j in range(len(q)):
            fetch = min(self.size, k + excluded if excluded <= 4 * k else 4 * k)
            while True:
                s, i = self.inner.search(q[j : j + 1], fetch)
                s, i = s[0], i[0]
                found = i >= 0
                keep = found.copy()
                keep[found] = ~self.exclude[i[found]]
                if keep.sum() >= k or fetch >= self.size or found.sum() < fetch:
                    break
                fetch = min(self.size, fetch * 2)
            s, i = s[keep][:k], i[keep][:k]
            out_s[j, : len(i)], out_i[j, : len(i)] = s, i
        return out_s, out_i

    def _exact(self, q: np.ndarray, k: int, out_s: np.ndarray, out_i: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One pass over the database, excluded rows scored ``-inf``: the true top-``k``."""
        database = self.inner.database
        n = int(database.shape[0])
        kk = min(k, n)
        best_s = np.full((len(q), 0), -np.inf, np.float32)
        best_i = np.zeros((len(q), 0), np.int64)
        step = _chunk_rows(len(q), int(getattr(self.inner, "chunk_rows", 65536)))
        for start in range(0, n, step):
            block = np.asarray(database[start : start + step], dtype=np.float32)
            scores = q @ block.T
            scores[:, self.exclude[start : start + block.shape[0]]] = -np.inf
            ids = np.broadcast_to(np.arange(start, start + block.shape[0], dtype=np.int64), scores.shape)
            cand_s, cand_i = np.concatenate([best_s, scores], 1), np.concatenate([best_i, ids], 1)
            if cand_s.shape[1] > kk:
                part = np.argpartition(-cand_s, kk - 1, axis=1)[:, :kk]
                cand_s, cand_i = np.take_along_axis(cand_s, part, 1), np.take_along_axis(cand_i, part, 1)
            best_s, best_i = cand_s, cand_i
        best_s, best_i = _sorted_topk(best_s, best_i)
        for j in range(len(q)):
            keep = ~self.exclude[best_i[j]]
            found = int(keep.sum())
            out_s[j, :found], out_i[j, :found] = best_s[j][keep], best_i[j][keep]
        return out_s, out_i

    def rank(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Every kept row ranked: ``(scores (Q, kept), rows (Q, kept))``."""
        s, i = self.inner.rank(queries)
        out_s = np.empty((len(s), self.kept), np.float32)
        out_i = np.empty((len(s), self.kept), np.int64)
        for j in range(len(s)):
            keep = (i[j] >= 0) & ~self.exclude[np.maximum(i[j], 0)]
            n = min(int(keep.sum()), self.kept)
            out_s[j, :n], out_i[j, :n] = s[j][keep][:n], i[j][keep][:n]
            out_s[j, n:], out_i[j, n:] = -np.inf, -1
        return out_s, out_i

    def save(self, path: str | os.PathLike):
        raise RegattError("a masked index is not saved: save the index it wraps")
