"""Spatial verification: a robust homography between matched keypoints, and its inliers."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

#: a homography whose 2x2 part scales area by more than this (or less than its inverse) is
#: not a view of the same thing
MAX_AREA_RATIO = 30.0


@dataclass(frozen=True)
class Verification:
    """``inliers``: how many matches fit ``H`` (3, 3) (query -> candidate pixels, None when no
    geometry was found); ``mask`` (m,) bool over the matches given."""

    inliers: int
    H: np.ndarray | None
    mask: np.ndarray


def verify(
    q_xy: np.ndarray,
    c_xy: np.ndarray,
    *,
    threshold: float = 6.0,
    min_matches: int = 8,
    max_iters: int = 2000,
) -> Verification:
    """Fit a homography to ``q_xy`` (m, 2) -> ``c_xy`` (m, 2) with MAGSAC++ (``threshold``: the
    largest residual in pixels of the resized photos that can be an inlier)."""
    m = len(q_xy)
    none = Verification(0, None, np.zeros(m, bool))
    if m < min_matches:
        return none
    H, mask = cv2.findHomography(
        q_xy.astype(np.float32),
        c_xy.astype(np.float32),
        cv2.USAC_MAGSAC,
        threshold,
        maxIters=max_iters,
        confidence=0.999,
    )
    if H is None or mask is None:
        return none
    det = float(np.linalg.det(H[:2, :2])) if abs(H[2, 2]) > 1e-12 else 0.0
    if not (1.0 / MAX_AREA_RATIO < abs(det) / max(H[2, 2] ** 2, 1e-12) < MAX_AREA_RATIO):
        return none
    mask = mask.ravel().astype(bool)
    inliers = int(mask.sum())
    return Verification(inliers if inliers >= min(min_matches, 4) else 0, H, mask)
