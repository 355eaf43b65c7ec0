"""Geometric agreement of two photos' local features: the copy check's evidence that one image is
an edited copy of the other, not another photo of the same scene.

For a candidate pair (query ``a``, candidate ``b``), tentative matches come from
:func:`regatt_sdk.local.match.match_many` (mutual nearest neighbours with a ratio test; one
query against all its candidates in one matrix product). Two robust fits follow, both in the
pixels of the photos as :mod:`regatt_sdk.local.extract` resized them (longest side ``side``):

* an **affine** map (``cv2.estimateAffine2D``, MAGSAC++): an edited copy (resize, crop, small
  rotation or shear, screenshot frame, re-lit) maps onto its original by one that is nearly a
  similarity, so most matches are its inliers;
* a **homography** (:func:`regatt_sdk.local.verify.verify`, MAGSAC++): another view of a
  planar scene fits it well but an affine map poorly.

:func:`pair_geometry` returns per pair, in :data:`FEATURES` order:

* ``inliers``: ``log1p`` of the affine fit's inliers, capped at :data:`CAP`;
* ``inlier_ratio``: affine inliers / tentative matches (0 with fewer than
  :data:`MIN_MATCHES` matches);
* ``inlier_share``: affine inliers / the keypoints of the image with fewer;
* ``log_scale``: ``|log s|``, ``s = sqrt |det A|`` of the affine map, with each photo's
  coordinates normalised by its longest side (a resized copy: 0; a 70 % crop: 0.36);
* ``shear``: ``log(s1 / s2)`` of the singular values of ``A`` (0 for a similarity);
  both are :data:`NO_SCALE` (their cap) when no affine map was found;
* ``affine_share``: affine inliers / the larger of the affine and the homography inliers
  (1: the pair is as affine as it is projective; low: a strongly projective fit); 0 without a fit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import cv2
import numpy as np

from ..local.codec import Codebook, load_codebook
from ..local.extract import LocalFeatures
from ..local.match import match_many
from ..local.verify import verify

FEATURES = ("inliers", "inlier_ratio", "inlier_share", "log_scale", "shear", "affine_share")
#: inlier counts above this add nothing (a copy of a detailed photo can share hundreds)
CAP = 200
#: fewer tentative matches than this: no geometry is fitted
MIN_MATCHES = 6
#: ``log_scale`` and ``shear`` of a pair without a fit, and their cap (|log 4|: as implausible
#: as a scale gets)
NO_SCALE = float(np.log(4.0))
#: largest residual of an affine inlier, in pixels of the resized photos
THRESHOLD = 5.0


def affine(q_xy: np.ndarray, c_xy: np.ndarray, *, threshold: float = THRESHOLD) -> tuple[np.ndarray | None, int]:
    """An affine map ``q_xy (m, 2) -> c_xy (m, 2)`` by MAGSAC++: ``(M (2, 3) or None, inliers)``."""
    if len(q_xy) < MIN_MATCHES:
        return None, 0
    m, mask = cv2.estimateAffine2D(
        np.ascontiguousarray(q_xy, np.float32),
        np.ascontiguousarray(c_xy, np.float32),
        method=cv2.USAC_MAGSAC,
        ransacReprojThreshold=threshold,
        maxIters=2000,
        confidence=0.995,
    )
    if m is None or mask is None:
        return None, 0
    return m, int(mask.sum())


def _side(f: LocalFeatures) -> float:
    """Longest side of the photo as extracted (the keypoints' coordinate frame)."""
    return max(f.width, f.height) / max(f.scale, 1e-12)


def match_geometry(query: LocalFeatures, candidates: Sequence[LocalFeatures],
                   codebook: Codebook | None = None) -> np.ndarray:  # fmt: skip
    """``(C, len(FEATURES))`` float64 features of ``query`` against each of ``candidates``."""
    out = np.zeros((len(candidates), len(FEATURES)), np.float64)
    out[:, 3:5] = NO_SCALE
    if not candidates:
        return out
    book = codebook or load_codebook()
    matches = match_many(book.decode(query.desc), [book.decode(c.desc) for c in candidates])
    qxy = query.points()
    aff_inl = np.zeros(len(candidates))
    hom_inl = np.zeros(len(candidates))
    n_match = np.array([len(m) for m in matches], np.float64)
    sv = np.full((len(candidates), 2), np.nan)  # singular values of each fit's 2x2 part
    norm = np.zeros(len(candidates))  # longest side of the query / of the candidate
    fewest = np.array([max(1, min(len(query), len(c))) for c in candidates], np.float64)
    for k, (c, m) in enumerate(zip(candidates, matches)):
        if len(m) < MIN_MATCHES:
            continue
        a, b = qxy[m[:, 0]], c.points()[m[:, 1]]
        fit, aff_inl[k] = affine(a, b)
        if fit is not None:
            sv[k] = np.linalg.svd(fit[:, :2], compute_uv=False)
            norm[k] = _side(query) / _side(c)
        hom_inl[k] = verify(a, b, min_matches=MIN_MATCHES).inliers
    capped = np.minimum(aff_inl, CAP)
    out[:, 0] = np.log1p(capped)
    out[:, 1] = np.where(n_match >= MIN_MATCHES, aff_inl / np.maximum(n_match, 1), 0.0)
    out[:, 2] = np.minimum(aff_inl / fewest, 1.0)
    fitted = np.isfinite(sv).all(1) & (sv[:, 1] > 1e-9)
    # pixels of the candidate per pixel of the query, then per longest side of each photo
    scale = np.sqrt(sv[fitted, 0] * sv[fitted, 1]) * norm[fitted]
    out[fitted, 3] = np.minimum(np.abs(np.log(scale)), NO_SCALE)
    out[fitted, 4] = np.minimum(np.log(sv[fitted, 0] / sv[fitted, 1]), NO_SCALE)
    best = np.maximum(aff_inl, hom_inl)
    out[:, 5] = np.where(best > 0, aff_inl / np.maximum(best, 1), 0.0)
    return out


def pair_geometry(features: Callable[[int], LocalFeatures | None], i: np.ndarray, j: np.ndarray,
                  codebook: Codebook | None = None) -> np.ndarray:  # fmt: skip
    """:func:`match_geometry` of pairs ``(i[p], j[p])``: ``(P, len(FEATURES))``, in the pairs'
    order. Each row ``i`` is matched against all its partners at once; ``features(k)`` gives row
    ``k``'s local features (``None``: unreadable, the pair gets no geometry)."""
    i = np.asarray(i, np.int64)
    j = np.asarray(j, np.int64)
    out = np.zeros((i.size, len(FEATURES)), np.float64)
    out[:, 3:5] = NO_SCALE
    if i.size == 0:
        return out
    book = codebook or load_codebook()
    order = np.argsort(i, kind="stable")
    starts = np.flatnonzero(np.r_[True, i[order][1:] != i[order][:-1]])
    for s, e in zip(starts, np.r_[starts[1:], order.size]):
        rows = order[s:e]
        q = features(int(i[rows[0]]))
        if q is None:
            continue
        cands = [(p, features(int(j[p]))) for p in rows.tolist()]
        cands = [(p, f) for p, f in cands if f is not None]
        if cands:
            out[[p for p, _ in cands]] = match_geometry(q, [f for _, f in cands], book)
    return out
