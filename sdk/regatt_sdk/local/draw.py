"""Why a hit matched: the query and the hit side by side, lines between their inlier keypoints,
and the query's outline projected into the hit by the verified homography."""

from __future__ import annotations

import cv2
import numpy as np

from .extract import LocalFeatures

HEIGHT = 480
GREEN = (60, 200, 60)
OUTLINE = (0, 200, 255)


def _fit(image: np.ndarray, height: int) -> tuple[np.ndarray, float]:
    f = height / image.shape[0]
    return cv2.resize(image, (max(1, round(image.shape[1] * f)), height), interpolation=cv2.INTER_AREA), f


def draw_matches(
    query: np.ndarray,
    hit: np.ndarray,
    qf: LocalFeatures,
    hf: LocalFeatures,
    matches: np.ndarray,
    mask: np.ndarray,
    H: np.ndarray | None,
    *,
    title: str = "",
    height: int = HEIGHT,
) -> np.ndarray:
    """A BGR picture ``(height + 28, Wq + Wh, 3)``: ``query`` (BGR, the region the features were
    taken from) and ``hit`` (BGR, the original photo), the inlier ``matches[mask]`` as lines,
    the query's outline mapped by ``H`` (query -> hit, in the features' pixels)."""
    qa, fq = _fit(query, height)
    ha, fh = _fit(hit, height)
    canvas = np.full((height + 28, qa.shape[1] + ha.shape[1], 3), 255, np.uint8)
    canvas[28:, : qa.shape[1]] = qa
    canvas[28:, qa.shape[1] :] = ha
    off = np.float32([qa.shape[1], 28])
    # features' pixels -> original pixels -> drawn pixels
    sq = np.float32(qf.scale * fq)
    sh = np.float32(hf.scale * fh)
    inl = matches[mask] if len(matches) else matches
    pq = qf.points()[inl[:, 0]] * sq + np.float32([0, 28]) if len(inl) else np.zeros((0, 2), np.float32)
    ph = hf.points()[inl[:, 1]] * sh + off if len(inl) else np.zeros((0, 2), np.float32)
    for a, b in zip(pq, ph):
        a, b = tuple(int(round(v)) for v in a), tuple(int(round(v)) for v in b)
        cv2.line(canvas, a, b, GREEN, 1, cv2.LINE_AA)
        cv2.circle(canvas, a, 3, GREEN, 1, cv2.LINE_AA)
        cv2.circle(canvas, b, 3, GREEN, 1, cv2.LINE_AA)
    if H is not None:
        w, h = qf.width / qf.scale, qf.height / qf.scale  # the query region in feature pixels
        corners = np.float32([[0, 0], [w, 0], [w, h], [0, h]]).reshape(-1, 1, 2)
        proj = cv2.perspectiveTransform(corners, H.astype(np.float64)).reshape(-1, 2)
        poly = (proj * sh + off).round().astype(np.int32)
        cv2.polylines(canvas, [poly], True, OUTLINE, 2, cv2.LINE_AA)
    cv2.putText(canvas, title[:120], (6, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
    return canvas
