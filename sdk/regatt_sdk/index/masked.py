"""An index with some rows left out: removed photos (tombstones) and rows a filter rejects.

:class:`MaskedIndex` wraps any :class:`~regatt_sdk.index.VectorIndex` and a boolean ``exclude``
mask over its rows. :meth:`~MaskedIndex.search` asks the inner index for ``k`` plus the number of
excluded rows when that is small, else for ever more candidates (doubling) until ``k`` kept rows
come back or the inner index has nothing more, then drops the excluded ones. Over an exact
index that is the true top-``k`` of the kept rows; over an approximate one (FAISS HNSW / IVF-PQ)
it is that index's ranking of them. Row numbers (and so names) are the inner index's.
"""

from __future__ import annotations

import os

import numpy as np

from ..errors import RegattError
from .exact import as_queries


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
