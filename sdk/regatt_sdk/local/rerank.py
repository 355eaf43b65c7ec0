"""The second stage: candidates from the global vector and from visual words, verified with
local features and geometry, ranked by a fused score.

For one query (its descriptor ``(D,)`` and its :class:`~.extract.LocalFeatures`):

1. candidates: the global top ``candidates`` rows, plus the top ``bow`` rows of the inverted
   file of visual words (:mod:`.ivf`) that the global list lacks (their global score is the
   inner product with the stored vector);
2. tentative matches (:func:`.match.match_many`, one matrix product per chunk of candidates),
   then a homography by MAGSAC++ for each candidate with enough matches (:func:`.verify.verify`);
3. fused score = global score + ``weight * min(inliers, cap) / cap`` for candidates with at
   least ``min_inliers`` inliers, the global score for the others; candidates by fused score
   first, then every other row in its global order;
4. query expansion after verification (``qe`` > 0): the query's descriptor plus those of its
   ``qe`` best verified hits, L2-normalised, is searched again; every row (candidates and the
   new search's results) is scored by it, plus the verified bonus of step 3, and sorted. Only
   verified neighbours expand the query: a phone photo of a poster verified against the
   poster's photo then finds the other photos of that place (val: clutter multi-view mAP 5.2
   -> 42.7, ``benchmarks/results/verified_qe.md``).

The defaults of :class:`RerankConfig` were chosen on the validation landmarks (see
``benchmarks/twostage_check.py`` and ``benchmarks/results/twostage.md``), never on what is reported.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from ..errors import RegattError
from ..store import FeatureStore
from .extract import LocalConfig, LocalFeatures
from .ivf import InvertedFile, load_or_build
from .match import match_many
from .storage import LocalIndex
from .verify import Verification, verify


@dataclass(frozen=True)
class RerankConfig:
    """Settings of the second stage (see the module docstring). ``query_side``/``query_keypoints``,
    ``threshold``, ``min_inliers`` and ``weight`` were chosen on val by
    ``benchmarks/twostage_check.py`` (``results/twostage.md``: the best mean of the val checks
    among settings losing <= 0.3 mAP on the clean landmark photos to the global search alone)."""

    candidates: int = 100
    bow: int = 100
    ratio: float = 0.85
    threshold: float = 6.0
    min_inliers: int = 8
    weight: float = 0.3
    cap: int = 40
    #: query expansion after verification over the best ``qe`` verified hits (0: off)
    qe: int = 1
    #: how queries are described (the database keeps the store's LocalConfig): a query photo
    #: may show the object small, so it gets more pixels and keypoints
    query_side: int = 640
    query_keypoints: int = 1000

    def with_candidates(self, k: int) -> RerankConfig:
        return replace(self, candidates=k)

    def query_config(self, store: LocalConfig) -> LocalConfig:
        """The :class:`~.extract.LocalConfig` for query photos against a store made with ``store``."""
        return replace(store, side=self.query_side, keypoints=self.query_keypoints)


@dataclass(frozen=True)
class Verified:
    """One verified candidate: its ``row``, ``global_score``, ``inliers``, the fused ``score``,
    the matches ``(m, 2)`` (query keypoint, candidate keypoint) and the geometry found."""

    row: int
    global_score: float
    score: float
    inliers: int
    matches: np.ndarray
    geometry: Verification


def check_k(k: int, size: int) -> tuple[int, str | None]:
    """``k`` clipped to ``size`` rows, with a message when it was; below 1 is refused."""
    if k < 1:
        raise RegattError(f"rerank K must be at least 1, got {k}")
    if k > size:
        return size, f"rerank {k} is more than the {size} rows of the collection: verifying all {size}"
    return k, None


def expanded_query(
    query_vector: np.ndarray, verified: list[Verified], vectors_of, config: RerankConfig
) -> np.ndarray | None:
    """The query's descriptor ``(D,)`` plus those of its best ``config.qe`` verified hits (at
    least ``min_inliers``; ``verified`` in fused order), L2-normalised; None when there is none
    or ``qe`` is 0."""
    good = [v.row for v in verified if v.inliers >= config.min_inliers][: config.qe]
    if not good:
        return None
    q = np.asarray(query_vector, np.float32).ravel()
    q2 = q + np.asarray(vectors_of(np.asarray(good, np.int64)), np.float32).sum(axis=0)
    return (q2 / max(float(np.linalg.norm(q2)), 1e-12)).astype(np.float32)


class Reranker:
    """The second stage over one feature store's local features (memory-mapped) and an index of
    its vectors (any :class:`~regatt_sdk.index.VectorIndex` with ``vectors(rows)``)."""

    def __init__(self, store: FeatureStore, config: RerankConfig = RerankConfig()):
        self.local = LocalIndex.open(store)
        self.config = config
        self._ivf: InvertedFile | None = None

    @property
    def ivf(self) -> InvertedFile:
        if self._ivf is None:
            self._ivf = load_or_build(self.local, self.local.codebook.words)
        return self._ivf

    def describe_query(self, photo: np.ndarray) -> LocalFeatures:
        """Local features of a query photo (BGR, already cropped to its box), as queries get them."""
        from .extract import extract

        return extract(photo, self.config.query_config(self.local.config), self.local.codebook)

    def bow_candidates(self, query: LocalFeatures, k: int) -> np.ndarray:
        """The ``k`` best rows by visual words ``(k,)`` int64."""
        return self.ivf.top(query.words, k)[1]

    def verify_rows(
        self, query: LocalFeatures, rows: np.ndarray, global_scores: np.ndarray, config: RerankConfig | None = None
    ) -> list[Verified]:
        """Match and verify ``rows`` against ``query``; fused scores, best first."""
        cfg = config or self.config
        book = self.local.codebook
        qd = book.decode(query.desc)
        cands = [self.local.features(int(r)) for r in rows]
        matches = match_many(qd, [book.decode(c.desc) for c in cands], cfg.ratio)
        q_xy = query.points()
        out = []
        for r, g, c, m in zip(rows, global_scores, cands, matches):
            geo = (
                verify(q_xy[m[:, 0]], c.points()[m[:, 1]], threshold=cfg.threshold)
                if len(m)
                else verify(np.zeros((0, 2)), np.zeros((0, 2)))
            )
            fused = float(g)
            if geo.inliers >= cfg.min_inliers:
                fused += cfg.weight * min(geo.inliers, cfg.cap) / cfg.cap
            out.append(Verified(int(r), float(g), fused, geo.inliers, m, geo))
        out.sort(key=lambda v: -v.score)
        return out

    def rerank(
        self,
        query_vector: np.ndarray,
        query: LocalFeatures,
        global_scores: np.ndarray,
        global_rows: np.ndarray,
        vectors_of,
        config: RerankConfig | None = None,
        *,
        exclude: np.ndarray | None = None,
        search: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None,
    ) -> tuple[list[Verified], np.ndarray]:
        """Second stage for one query.

        ``global_scores``/``global_rows`` ``(k,)``: the first stage's ranking (at least the top
        ``candidates``; the full ranking for an evaluation); ``vectors_of(rows) -> (r, D)`` gives
        stored vectors (global scores of visual-word candidates). Returns the verified
        candidates (fused order) and the whole new order of ``global_rows`` plus any added
        candidates ``(k',)`` int64: candidates first, then the rest in global order.
        ``exclude`` ``(N,)`` bool: rows never to return (removed photos, filtered out).
        ``search``: the global stage for the query expanded by verified hits (``config.qe``;
        see :meth:`expand`); without it the expanded query rescores ``global_rows``.
        """
        cfg = config or self.config
        if exclude is not None:
            kept = ~exclude[np.asarray(global_rows, np.int64)]
            global_rows, global_scores = np.asarray(global_rows)[kept], np.asarray(global_scores)[kept]
        rows = np.asarray(global_rows[: cfg.candidates], np.int64)
        scores = np.asarray(global_scores[: cfg.candidates], np.float32)
        if cfg.bow > 0:
            skip = 0 if exclude is None else int(np.count_nonzero(exclude))
            extra = self.bow_candidates(query, cfg.bow + skip)
            if exclude is not None:
                extra = extra[~exclude[extra]][: cfg.bow]
            extra = extra[~np.isin(extra, rows)]
            if len(extra):
                ev = np.asarray(vectors_of(extra), np.float32) @ np.asarray(query_vector, np.float32).ravel()
                rows = np.concatenate([rows, extra])
                scores = np.concatenate([scores, ev.astype(np.float32)])
        verified = self.verify_rows(query, rows, scores, cfg)
        if cfg.qe > 0:
            expanded = self.expand(query_vector, verified, global_rows, vectors_of, cfg, search=search, exclude=exclude)
            if expanded is not None:
                return expanded
        head = np.array([v.row for v in verified], np.int64)
        rest = np.asarray(global_rows, np.int64)
        rest = rest[~np.isin(rest, head)]
        return verified, np.concatenate([head, rest])

    def expand(
        self,
        query_vector: np.ndarray,
        verified: list[Verified],
        global_rows: np.ndarray,
        vectors_of,
        config: RerankConfig,
        *,
        search: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None,
        exclude: np.ndarray | None = None,
    ) -> tuple[list[Verified], np.ndarray] | None:
        """Step 4 of the module docstring; None when no candidate was verified. ``search(q)``
        ``(D,) -> (scores (k,), rows (k,))``: the global stage for the expanded query (rows < 0
        are ignored); without it, ``global_rows`` (then the whole ranking) are rescored."""
        q2 = expanded_query(query_vector, verified, vectors_of, config)
        if q2 is None:
            return None
        cand = np.array([v.row for v in verified], np.int64)
        cand_scores = np.asarray(vectors_of(cand), np.float32) @ q2
        rescored = []
        for v, g in zip(verified, cand_scores):
            bonus = v.score - v.global_score if v.inliers >= config.min_inliers else 0.0
            rescored.append(replace(v, score=float(g) + bonus))
        global_rows = np.asarray(global_rows, np.int64)
        if search is not None:
            s2, r2 = search(q2)
            s2, r2 = np.asarray(s2, np.float32).ravel(), np.asarray(r2, np.int64).ravel()
            keep = r2 >= 0
            s2, r2 = s2[keep], r2[keep]
        else:
            r2 = global_rows
            s2 = np.asarray(vectors_of(r2), np.float32) @ q2
        if exclude is not None:
            keep = ~exclude[r2]
            s2, r2 = s2[keep], r2[keep]
        new = ~np.isin(r2, cand)
        rows = np.concatenate([cand, r2[new]])
        scores = np.concatenate([np.array([v.score for v in rescored], np.float32), s2[new]])
        head = rows[np.argsort(-scores, kind="stable")]
        rest = global_rows[~np.isin(global_rows, head)]
        rescored.sort(key=lambda v: -v.score)
        return rescored, np.concatenate([head, rest])
