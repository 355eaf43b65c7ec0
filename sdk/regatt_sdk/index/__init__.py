"""Vector indexes behind one interface (:class:`~.base.VectorIndex`: add, search, rank, vectors,
save/load, size, dim) and the :class:`~.searcher.Searcher` (encoder + index + query expansion)
that ``regatt search``, ``regatt eval`` and other front ends share.

Backends: ``exact`` (:class:`~.exact.ExactIndex`, chunked numpy over a memmap), ``faiss``
(:class:`~.faiss_index.FaissIndex`: flat, HNSW or IVF-PQ) and ``pgvector``
(:class:`~.pgvector.PgVectorIndex`: a PostgreSQL table with an HNSW index; options ``url``,
``table``, ``card_hash``). A new backend (e.g. a database) is a
class with the :class:`VectorIndex` methods, added with :func:`register_backend`.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from ..errors import RegattError
from .base import VectorIndex
from .exact import DEFAULT_CHUNK_ROWS, ExactIndex, as_queries, check_compatible, check_database, rank, scores_all, topk

__all__ = [
    "BACKENDS",
    "DEFAULT_CHUNK_ROWS",
    "ExactIndex",
    "VectorIndex",
    "as_queries",
    "build_index",
    "check_compatible",
    "check_database",
    "rank",
    "register_backend",
    "scores_all",
    "topk",
]


def _faiss(database: np.ndarray, **options: Any) -> VectorIndex:
    from .faiss_index import FaissIndex

    return FaissIndex.build(database, options.pop("kind", "flat"), **options)


def _pgvector(database: np.ndarray, **options: Any) -> VectorIndex:
    from .pgvector import PgVectorIndex

    options.pop("chunk_rows", None)
    url, table = options.pop("url"), options.pop("table", "regatt")
    index = PgVectorIndex.create(url, database.shape[1], options.pop("card_hash", ""), table, **options)
    index.add(np.asarray(database, dtype=np.float32))
    index.build_hnsw()
    return index


def _exact(database: np.ndarray, **options: Any) -> VectorIndex:
    return ExactIndex(database, **options)


#: backend name -> ``builder(database (N, D), **options) -> VectorIndex``
_BUILDERS: dict[str, Callable[..., VectorIndex]] = {"exact": _exact, "faiss": _faiss, "pgvector": _pgvector}
BACKENDS = tuple(_BUILDERS)


def register_backend(name: str, builder: Callable[..., VectorIndex]) -> None:
    """Make ``builder(database, **options)`` the backend ``name`` of :func:`build_index`."""
    global BACKENDS
    _BUILDERS[name] = builder
    BACKENDS = tuple(_BUILDERS)


def build_index(
    database: np.ndarray, backend: str = "exact", *, chunk_rows: int = DEFAULT_CHUNK_ROWS, **options: Any
) -> VectorIndex:
    """An index over ``database`` (N, D): ``backend`` ``"exact"`` or ``"faiss"`` (options for
    FAISS: ``kind="flat"|"hnsw"|"ivfpq"|"auto"``, ``nlist``, ``pq_bytes``, ``nprobe``...; for
    ``"pgvector"``: ``url``, ``table``, ``card_hash``, ``ef_search``)."""
    builder = _BUILDERS.get(backend)
    if builder is None:
        raise RegattError(f"unknown search backend '{backend}': use one of {', '.join(_BUILDERS)}")
    return builder(database, chunk_rows=chunk_rows, **options)
