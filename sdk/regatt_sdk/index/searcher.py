"""The searcher: an encoder, a vector index, the row names and the query-side steps (query
expansion, database augmentation), shared by ``regatt search``, ``regatt eval`` and any other
front end (a server, a duplicate finder)."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import RegattError
from .base import VectorIndex
from .exact import as_queries


@dataclass(frozen=True)
class Hit:
    """One result: 1-based ``rank``, the row's ``name``, its ``score`` (inner product; with
    re-ranking the fused score), its ``row``, and with re-ranking the verified ``inliers``
    (``None`` when the hit was not verified)."""

    rank: int
    name: str
    score: float
    row: int
    inliers: int | None = None


@dataclass
class SearchResult:
    """A search with its second stage: the ``hits``; ``query_local`` (the query's
    :class:`~regatt_sdk.local.LocalFeatures`, or None without re-ranking), ``verified`` (row ->
    :class:`~regatt_sdk.local.rerank.Verified`), ``notes`` (e.g. a clipped K) and ``local``
    (the store's :class:`~regatt_sdk.local.storage.LocalIndex`: ``local.features(row)``)."""

    hits: list[Hit]
    query_local: Any = None
    verified: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    local: Any = None


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
        #: the feature store behind the index (set by :meth:`for_store`): where re-ranking
        #: finds the local features
        self.store_path: Path | None = None
        #: ``(size,)`` bool of rows never returned (removed or filtered out), or None
        self.exclude: np.ndarray | None = None
        self._reranker: Any = None

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
        filters: Any = None,
    ) -> Searcher:
        """A searcher over a feature store: its ANN index when it has a usable one (``ann`` and
        ``backend == "exact"``; a stale or foreign one is skipped with a ``RuntimeWarning``),
        else a ``backend`` index over the store's memory-mapped vectors. Removed rows
        (:mod:`regatt_sdk.tombstones`) and rows ``filters`` rejects (:mod:`regatt_sdk.filters`)
        are never returned (:class:`~regatt_sdk.index.masked.MaskedIndex`)."""
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
        exclude = excluded_rows(st, filters)
        if exclude is not None:
            from .masked import MaskedIndex

            index = MaskedIndex(index, exclude)
        searcher = cls(index, st.names, encoder, steps=steps)
        searcher.store_path = Path(store)
        searcher.exclude = exclude
        return searcher

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
        filters: Any = None,
    ) -> Searcher:
        """A searcher over a pgvector table (:class:`~regatt_sdk.index.pgvector.PgVectorIndex`)
        loaded by ``regatt index ... --db URL``, through ``pool_size`` connections; refuses a
        table made by another model than ``encoder``'s. ``filters``: only rows whose photo
        metadata they keep (:meth:`PgVectorIndex.set_filters`)."""
        from .pgvector import DEFAULT_EF_SEARCH, DatabaseError, PgVectorIndex, redact

        index = PgVectorIndex(url, table, ef_search=ef_search or DEFAULT_EF_SEARCH, pool_size=pool_size)
        if encoder is not None and not encoder.card.matches(index.card_hash):  # its hash, or the legacy one
            index.close()
            raise DatabaseError(
                f"table {table} at {redact(url)} was filled by another model (card {index.card_hash}), "
                f"not {encoder.model_path} (card {encoder.card.hash}): search with the model that made it"
            )
        if filters:
            try:
                index.set_filters(filters)
            except BaseException:
                index.close()
                raise
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

    def search(self, image: Any, roi: Any = None, top: int = 10, *, rerank: int = 0) -> list[Hit]:
        """Encode ``image`` (a path or a BGR array; cropped to ``roi``) and return the ``top`` hits;
        ``rerank=K`` verifies the global top K (and the visual-word candidates) with local features."""
        return self.search_full(image, roi, top, rerank=rerank).hits

    def reranker(self) -> Any:
        """The second stage over the store's local features (opened once);
        :class:`~regatt_sdk.local.storage.LocalFeaturesMissing` names the fix when it has none."""
        if self._reranker is None:
            from ..local.rerank import Reranker
            from ..store import FeatureStore

            if self.store_path is None:
                raise RegattError("re-ranking needs a feature store with local features (regatt encode --local)")
            self._reranker = Reranker(FeatureStore.open(self.store_path))
        return self._reranker

    def search_full(
        self, image: Any, roi: Any = None, top: int = 10, *, rerank: int = 0, qe: int | None = None
    ) -> SearchResult:
        """:meth:`search` with what the second stage found (for pictures of the matches);
        ``qe`` with ``rerank``: query expansion over that many verified hits (None: the
        reranker's default, chosen on val; 0: off)."""
        if self.encoder is None:
            raise RegattError("this searcher has no encoder: search with descriptors (search_vectors)")
        if top < 1:
            raise RegattError(f"top must be at least 1, got {top}")
        image = str(image) if isinstance(image, Path) else image
        encode = getattr(self.encoder, "encode_query", self.encoder.encode)  # query-side scales if set
        vec = encode(image, roi=roi)
        if not rerank:
            scores, rows = self.search_vectors(vec, top)
            return SearchResult(self.hits(scores[0], rows[0]))

        reranker = self.reranker()
        qf = reranker.describe_query(read_query(image, roi))
        return self.search_local(vec, qf, top, rerank, qe=qe)

    def search_local(self, vec: np.ndarray, qf: Any, top: int, rerank: int, *, qe: int | None = None) -> SearchResult:
        """The two stages for a query already described: its descriptor ``vec`` (D,) and local
        features ``qf``; ``rerank`` (>= 1, clipped to the index size with a note) candidates
        from the global search, plus the visual-word candidates, verified; ``qe``: query
        expansion over that many verified hits (None: the reranker's default, 0: off)."""
        from dataclasses import replace

        from ..local.rerank import check_k, expanded_query

        reranker = self.reranker()
        k, note = check_k(int(rerank), self.index.size)
        scores, rows = self.search_vectors(vec, max(top, k))
        found = rows[0] >= 0  # fewer than asked when rows are removed or filtered out
        scores, rows = scores[:, found], rows[:, found]
        cfg = reranker.config.with_candidates(k)
        if qe is not None:
            cfg = replace(cfg, qe=int(qe))

        def search(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            s2, r2 = self.search_vectors(q, max(top, k))
            return s2[0], r2[0]

        verified, order = reranker.rerank(
            vec, qf, scores[0], rows[0], self.index.vectors, cfg, exclude=self.exclude, search=search
        )
        by_row = {v.row: v for v in verified}
        q2 = expanded_query(vec, verified, self.index.vectors, cfg) if cfg.qe > 0 else None
        global_score = {int(r): float(s) for s, r in zip(scores[0], rows[0])}
        hits = []
        for rank, row in enumerate(order[:top], start=1):
            v = by_row.get(int(row))
            if v is not None:
                score = v.score
            elif q2 is not None:  # ranked by the expanded query
                score = float(np.asarray(self.index.vectors(np.array([row], np.int64)), np.float32)[0] @ q2)
            else:
                score = global_score[int(row)]
            hits.append(Hit(rank, self.names[int(row)] if self.names else str(row), score, int(row),
                            v.inliers if v else None))  # fmt: skip
        return SearchResult(hits, qf, by_row, [note] if note else [], reranker.local)


def excluded_rows(store: Any, filters: Any = None) -> np.ndarray | None:
    """``(N,)`` bool of the rows a search over ``store`` must never return: removed ones
    (:mod:`regatt_sdk.tombstones`) and, with ``filters``, those they reject; None when none."""
    from ..tombstones import deleted_mask

    exclude = deleted_mask(store)
    if filters:
        from ..filters import filter_mask

        rejected = ~filter_mask(store, filters)
        exclude = rejected if exclude is None else (exclude | rejected)
    return exclude


def read_query(image: Any, roi: Any) -> np.ndarray:
    """The query photo (a path or a BGR array), cropped to ``roi`` in its pixels."""
    if isinstance(image, np.ndarray):
        photo = image
    else:
        from ..imageio import read_image

        photo = read_image(str(image))
    if roi is not None:
        x1, y1, x2, y2 = (int(round(float(v))) for v in roi)
        photo = photo[max(0, y1) : max(0, y2), max(0, x1) : max(0, x2)]
    return photo
