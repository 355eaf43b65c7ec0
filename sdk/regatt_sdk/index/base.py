"""The vector-index interface every backend offers (exact numpy, FAISS, and any other)."""

from __future__ import annotations

import os
from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class VectorIndex(Protocol):
    """Inner-product search over ``size`` rows of ``dim``-d float32 unit vectors.

    Rows are numbered ``0 .. size-1`` in the order they were added. Shapes: queries ``(Q, D)``
    (or one ``(D,)``); :meth:`search` returns ``(scores (Q, k) float32, ids (Q, k) int64)`` best
    first (``k`` clipped to ``size``; ``-1`` ids when fewer were found); :meth:`rank` the same
    over all rows; :meth:`vectors` the stored rows ``(K, D)`` of ``ids`` (K,) (used by query
    expansion). ``save(path)`` writes the index; each backend has a ``load`` classmethod.
    """

    #: backend name: ``exact``, ``faiss``, ...
    backend: str

    @property
    def size(self) -> int: ...

    @property
    def dim(self) -> int: ...

    def add(self, vectors: np.ndarray) -> None: ...

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...

    def rank(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...

    def vectors(self, ids: np.ndarray) -> np.ndarray: ...

    def save(self, path: str | os.PathLike): ...
