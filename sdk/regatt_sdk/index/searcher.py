"""The searcher: an encoder, a vector index, the row names and the query-side steps (query
expansion, database augmentation), shared by ``regatt search``, ``regatt eval`` and any other
front end (a server, a duplicate finder)."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import RegattError
from .base import VectorIndex
from .exact import as_queries


@dataclass(frozen=True)
class Hit:
    """One result: 1-based ``rank``, the row's ``name``, its inner-product ``score``, its ``row``."""

    rank: int
    name: str
    score: float
    row: int


class Searcher:
    """``Searcher(index, names=None, encoder=None, steps=())``.

    ``index``: any :class:`~regatt_sdk.index.VectorIndex`; ``names``: one name per index row (for
    :class:`Hit` s); ``encoder``: an :class:`~regatt_sdk.encoder.Encoder` (for image queries);
    ``steps``: :mod:`regatt_sdk.expansion` steps applied to every query, in order.
    """

    def __init__(
        self,
        index: VectorIndex,
        names: Sequence[str] | None = None,
        encoder: Any = None,
        *,
        steps: Sequence[Any] = (),
    ):
        if names is not None and len(names) != index.size:
            raise RegattError(f"{len(names)} names for an index of {index.size} rows")
        self.index = index
        self.names = names
        self.encoder = encoder
        self.steps = tuple(steps)

    @classmethod
    def for_store(
        cls,
        store: str | os.PathLike,
        encoder: Any = None,
        *,
        backend: str = "exact",
        ann: bool = True,
        nprobe: int | None = None,
        steps: Sequence[Any] = (),
    ) -> Searcher:
        """A searcher over a feature store: its ANN index when it has a usable one (``ann`` and
        ``backend == "exact"``; a stale or foreign one is skipped with a ``RuntimeWarning``),
        else a ``backend`` index over the store's memory-mapped vectors."""
        from ..store import FeatureStore
        from . import build_index

        st = FeatureStore.open(Path(store))
        index: VectorIndex | None = None
        if ann and backend == "exact":
            from ..ann import load_store_index

            index, why = load_store_index(store)
            if why:
                warnings.warn(f"{why}; searching exactly", RuntimeWarning, stacklevel=2)
            if index is not None and nprobe is not None:
                index.meta["nprobe"] = nprobe
        if index is None:
            index = build_index(st.vectors, backend)
        return cls(index, st.names, encoder, steps=steps)

    @classmethod
    def for_db(
        cls,
        url: str,
        encoder: Any = None,
        *,
        table: str = "regatt",
        ef_search: int | None = None,
        steps: Sequence[Any] = (),
        pool_size: int = 1,
    ) -> Searcher:
        """A searcher over a pgvector table (:class:`~regatt_sdk.index.pgvector.PgVectorIndex`)
        loaded by ``regatt index ... --db URL``, through ``pool_size`` connections; refuses a
        table made by another model than ``encoder``'s."""
        from .pgvector import DEFAULT_EF_SEARCH, DatabaseError, PgVectorIndex, redact

        index = PgVectorIndex(url, table, ef_search=ef_search or DEFAULT_EF_SEARCH, pool_size=pool_size)
        if encoder is not None and index.card_hash != str(encoder.card.hash):
            index.close()
            raise DatabaseError(
                f"table {table} at {redact(url)} was filled by another model (card {index.card_hash}), "
                f"not {encoder.model_path} (card {encoder.card.hash}): search with the model that made it"
            )
        return cls(index, index.names(), encoder, steps=steps)

    def search_vectors(self, queries: np.ndarray, top: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(scores (Q, k), rows (Q, k))`` for query descriptors (Q, D) (or one (D,)) after the
        steps; ``k = top`` or every row (a full ranking) when ``top`` is None."""
        q = as_queries(queries)
        index = self.index
        for step in self.steps:
            q, index = step.apply(q, index)
        if top is None:
            return index.rank(q)
        return index.search(q, top)

    def hits(self, scores: np.ndarray, rows: np.ndarray) -> list[Hit]:
        """One query's ``(scores (k,), rows (k,))`` as :class:`Hit` s (rows ``-1`` dropped)."""
        if self.names is None:
            raise RegattError("this searcher has no row names")
        return [
            Hit(r, self.names[int(i)], float(s), int(i))
            for r, (s, i) in enumerate(((s, i) for s, i in zip(scores, rows) if i >= 0), start=1)
        ]

    def search(self, image: Any, roi: Any = None, top: int = 10) -> list[Hit]:
        """Encode ``image`` (a path or a BGR array; cropped to ``roi``) and return the ``top`` hits."""
        if self.encoder is None:
            raise RegattError("this searcher has no encoder: search with descriptors (search_vectors)")
        encode = getattr(self.encoder, "encode_query", self.encoder.encode)  # query-side scales if set
        vec = encode(str(image) if isinstance(image, Path) else image, roi=roi)
        scores, rows = self.search_vectors(vec, top)
        return self.hits(scores[0], rows[0])
