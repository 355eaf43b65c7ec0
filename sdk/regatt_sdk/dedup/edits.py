"""Known edits of a photo, the transformations duplicates go through in real collections.

Used to build the dedup benchmark (``benchmarks/dedup_bench.py``) and the tests' fixtures. Each
edit maps a BGR uint8 image ``(H, W, 3)`` and a ``numpy.random.Generator`` to the edited image
(JPEG edits return the decoded result of the re-encoding).
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

Edit = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    """``image`` re-encoded as JPEG at ``quality`` and decoded again."""
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return cv2.imdecode(buf, cv2.IMREAD_COLOR)


def resize(image: np.ndarray, factor: float) -> np.ndarray:
    h, w = image.shape[:2]
    size = (max(8, round(w * factor)), max(8, round(h * factor)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR)


def crop(image: np.ndarray, keep: float, rng: np.random.Generator) -> np.ndarray:
    """A random crop keeping ``keep`` of each side."""
    h, w = image.shape[:2]
    ch, cw = max(8, round(h * keep)), max(8, round(w * keep))
    y = int(rng.integers(0, h - ch + 1))
    x = int(rng.integers(0, w - cw + 1))
    return image[y : y + ch, x : x + cw].copy()


def rotate(image: np.ndarray, degrees: float) -> np.ndarray:
    """Rotated about the centre, cropped to the largest same-aspect box without empty corners."""
    h, w = image.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), degrees, 1.0)
    out = cv2.warpAffine(image, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    a = abs(np.deg2rad(degrees))
    shrink = 1.0 / (np.cos(a) + np.sin(a) * max(h / w, w / h))
    ch, cw = int(h * shrink), int(w * shrink)
    y, x = (h - ch) // 2, (w - cw) // 2
    return out[y : y + ch, x : x + cw].copy()


def colour(image: np.ndarray, brightness: float, saturation: float) -> np.ndarray:
    """Brightness times ``brightness`` and saturation times ``saturation`` (HSV)."""
    hsv = cv2.cvtColor(image, cv2.COLOR_BGR2HSV).astype(np.float32)
    hsv[..., 1] *= saturation
    hsv[..., 2] *= brightness
    return cv2.cvtColor(np.clip(hsv, 0, 255).astype(np.uint8), cv2.COLOR_HSV2BGR)


def text_overlay(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A caption band and a watermark, as meme and stock-photo copies carry."""
    out = image.copy()
    h, w = out.shape[:2]
    scale = max(0.4, w / 500)
    band = max(12, h // 8)
    y0 = 0 if rng.random() < 0.5 else h - band
    overlay = out.copy()
    cv2.rectangle(overlay, (0, y0), (w, y0 + band), (0, 0, 0), -1)
    out = cv2.addWeighted(overlay, 0.5, out, 0.5, 0)
    words = ["HOLIDAY 2019", "best trip ever", "SAMPLE", "photo by @someone", "DO NOT COPY"]
    text = words[int(rng.integers(len(words)))]
    cv2.putText(out, text, (int(w * 0.05), y0 + int(band * 0.7)), cv2.FONT_HERSHEY_SIMPLEX,
                scale, (255, 255, 255), max(1, int(2 * scale)), cv2.LINE_AA)  # fmt: skip
    cv2.putText(out, "(c) stock", (int(w * 0.55), int(h * 0.55)), cv2.FONT_HERSHEY_SIMPLEX,
                scale * 1.2, (200, 200, 200), max(1, int(2 * scale)), cv2.LINE_AA)  # fmt: skip
    return out


def screenshot(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The photo shown smaller inside a flat window frame (title bar, side margins, status bar)."""
    h, w = image.shape[:2]
    inner = resize(image, float(rng.uniform(0.7, 0.85)))
    ih, iw = inner.shape[:2]
    top, bottom = max(8, h // 10), max(4, h // 20)
    side = max(4, (w - iw) // 2)
    grey = int(rng.integers(200, 250))
    frame = np.full((ih + top + bottom, iw + 2 * side, 3), grey, dtype=np.uint8)
    frame[: top // 2] = (60, 60, 60)
    frame[top : top + ih, side : side + iw] = inner
    cv2.putText(frame, "image.jpg - Viewer", (6, max(10, top // 2 - 3)), cv2.FONT_HERSHEY_SIMPLEX,
                max(0.3, w / 1500), (230, 230, 230), 1, cv2.LINE_AA)  # fmt: skip
    return frame


#: name -> edit; each is one of the transformations the dedup presets are calibrated on
EDITS: dict[str, Edit] = {
    "jpeg_q20": lambda im, rng: jpeg(im, 20),
    "resize_half_q20": lambda im, rng: jpeg(resize(im, 0.5), 20),
    "resize_0.6": lambda im, rng: jpeg(resize(im, 0.6), 85),
    "crop_85": lambda im, rng: jpeg(crop(im, 0.85, rng), 85),
    "crop_70": lambda im, rng: jpeg(crop(im, 0.7, rng), 85),
    "rotate_3": lambda im, rng: jpeg(rotate(im, float(rng.choice([-3.0, 3.0]))), 85),
    "colour": lambda im, rng: jpeg(colour(im, float(rng.uniform(1.2, 1.3)), float(rng.uniform(0.5, 1.4))), 85),
    "text": lambda im, rng: jpeg(text_overlay(im, rng), 85),
    "screenshot": lambda im, rng: jpeg(screenshot(im, rng), 90),
    "crop_bright_rot": lambda im, rng: jpeg(colour(rotate(crop(im, 0.85, rng), 3.0), 1.25, 1.0), 85),
}


def apply(name: str, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``EDITS[name](image, rng)``; an unknown name raises ``KeyError`` listing the known ones."""
    if name not in EDITS:
        raise KeyError(f"unknown edit {name!r}: known {', '.join(EDITS)}")
    return EDITS[name](image, rng)
