"""Decoding image files into BGR uint8 arrays ``(H, W, 3)`` the way OpenCV does."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from .errors import ImageError


def read_image(path: str | Path) -> np.ndarray:
    """Decode ``path`` with OpenCV into BGR uint8 ``(H, W, 3)``; raise :class:`ImageError`."""
    p = Path(path)
    if not p.exists():
        raise ImageError(p, "file not found")
    if not p.is_file():
        raise ImageError(p, "not a regular file")
    data = np.fromfile(p, dtype=np.uint8)
    if data.size == 0:
        raise ImageError(p, "file is empty")
    image = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if image is None:
        raise ImageError(p, "not an image OpenCV can decode (corrupt or unsupported format)")
    return image
