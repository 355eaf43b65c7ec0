"""Decode-side preprocessing exactly as the released pipeline does it (SPEC section 1).

Pure functions on BGR ``uint8`` arrays ``(H, W, 3)``. Colour order, mean and std are applied
inside the ONNX graph, so these only resize (longest side to ``S``) and crop query boxes.
"""

from __future__ import annotations

import cv2
import numpy as np

Box = tuple[float, float, float, float]


def resized_shape(height: int, width: int, max_side: int) -> tuple[int, int]:
    """``(h', w')`` with the longest side ``max_side``: ``round(h*S/max(h, w))``, half to even."""
    if height <= 0 or width <= 0:
        raise ValueError(f"image has no pixels ({height}x{width})")
    longest = max(height, width)
    new_h = int(np.round(height * max_side / longest))
    new_w = int(np.round(width * max_side / longest))
    return max(new_h, 1), max(new_w, 1)


def resize_longest(image: np.ndarray, max_side: int) -> np.ndarray:
    """Resize ``(H, W, 3)`` so that its longest side is ``max_side`` (bilinear, up or down)."""
    new_h, new_w = resized_shape(image.shape[0], image.shape[1], max_side)
    if (new_h, new_w) == image.shape[:2]:
        return image
    return cv2.resize(image, (new_w, new_h))


def scale_box(box: Box, height: int, width: int, max_side: int) -> tuple[int, int, int, int]:
    """A query box in original pixels mapped onto the resized image the release's way.

    The box is multiplied by ``S / max(h, w)`` in float32 and rounded half to even.
    """
    ratio = np.float32(max_side / max(height, width))
    with np.errstate(over="ignore", invalid="ignore"):
        scaled = np.round(np.asarray(box, dtype=np.float32) * ratio)
    if not np.all(np.isfinite(scaled)):  # inf, nan, or beyond float32 (int() would overflow)
        raise ValueError(f"query box {tuple(box)}: x1,y1,x2,y2 must be finite numbers of pixels")
    x1, y1, x2, y2 = (int(v) for v in scaled)
    return x1, y1, x2, y2


def crop_box(resized: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """``resized[y1:y2, x1:x2]`` (end excluded), refusing boxes that leave nothing."""
    x1, y1, x2, y2 = box
    h, w = resized.shape[:2]
    x1c, y1c, x2c, y2c = max(x1, 0), max(y1, 0), min(x2, w), min(y2, h)
    if x2c <= x1c or y2c <= y1c:
        raise ValueError(
            f"query box {box} leaves no pixels on the {w}x{h} resized image; "
            "give x1,y1,x2,y2 in original pixels with x1 < x2 and y1 < y2"
        )
    return resized[y1c:y2c, x1c:x2c]


def prepare(image: np.ndarray, max_side: int, roi: Box | None = None) -> np.ndarray:
    """The network input for one decoded image: resized, then cropped to ``roi`` if given.

    ``image`` is BGR uint8 ``(H, W, 3)``; returns BGR uint8 ``(h', w', 3)``, C-contiguous.
    """
    resized = resize_longest(image, max_side)
    if roi is not None:
        resized = crop_box(resized, scale_box(roi, image.shape[0], image.shape[1], max_side))
    return np.ascontiguousarray(resized)
