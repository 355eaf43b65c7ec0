"""Training views of an image: random rescale of the shorter side + random square crop (+ flip),
and the deterministic centre view used for validation. BGR uint8 ``(H, W, 3)`` in and out.

The paper resizes the shorter side to a random 850..859 and crops 800x800; here every size is a
parameter (the defaults are scaled down for a CPU).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class ViewSpec:
    """``crop``: side of the square crop; shorter side resized to a random integer in
    ``[short_min, short_max]``; ``flip``: random horizontal flips."""

    crop: int = 224
    short_min: int = 240
    short_max: int = 288
    flip: bool = True

    def __post_init__(self) -> None:
        if self.crop < 32:
            raise ValueError(f"crop must be >= 32 px, got {self.crop}")
        if not self.crop <= self.short_min <= self.short_max:
            raise ValueError(
                f"need crop <= short_min <= short_max, got {self.crop}, {self.short_min}, {self.short_max}"
            )


def resize_shorter(image: np.ndarray, short: int) -> np.ndarray:
    """Resize so that the shorter side is ``short`` (bilinear), keeping the aspect ratio."""
    h, w = image.shape[:2]
    scale = short / min(h, w)
    size = (max(short, int(round(w * scale))), max(short, int(round(h * scale))))
    return cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)


def centre_view(image: np.ndarray, spec: ViewSpec) -> np.ndarray:
    """Shorter side to ``crop``, centre crop ``crop x crop`` (the paper's validation view)."""
    r = resize_shorter(image, spec.crop)
    y = (r.shape[0] - spec.crop) // 2
    x = (r.shape[1] - spec.crop) // 2
    return np.ascontiguousarray(r[y : y + spec.crop, x : x + spec.crop])


def random_view(image: np.ndarray, spec: ViewSpec, rng: np.random.Generator) -> np.ndarray:
    """Random shorter side in ``[short_min, short_max]``, random crop, optional flip."""
    r = resize_shorter(image, int(rng.integers(spec.short_min, spec.short_max + 1)))
    y = int(rng.integers(0, r.shape[0] - spec.crop + 1))
    x = int(rng.integers(0, r.shape[1] - spec.crop + 1))
    out = r[y : y + spec.crop, x : x + spec.crop]
    if spec.flip and rng.random() < 0.5:
        out = out[:, ::-1]
    return np.ascontiguousarray(out)


def make_view(image: np.ndarray, spec: ViewSpec, seed: int, index: int, view: int) -> np.ndarray:
    """View ``view`` of image ``index``: 0 is the centre view, others random, seeded by
    ``(seed, index, view)`` so that any view can be recomputed alone."""
    if view == 0:
        return centre_view(image, spec)
    return random_view(image, spec, np.random.default_rng([seed, index, view]))


@dataclass(frozen=True)
class ClutterSpec:
    """A landmark photo pasted small into another photo: the canvas is the background resized to
    longest side ``max_side``; the photo is scaled to ``scale`` (a random value in
    ``[scale_min, scale_max]``) of the largest size that fits, placed at a random position,
    optionally flipped. Teaches the attention which regions belong to the object."""

    max_side: int = 512
    scale_min: float = 0.35
    scale_max: float = 0.65
    flip: bool = True

    def __post_init__(self) -> None:
        if not 0.05 <= self.scale_min <= self.scale_max <= 1.0:
            raise ValueError(f"need 0.05 <= scale_min <= scale_max <= 1, got {self.scale_min}, {self.scale_max}")


def paste_view(
    photo: np.ndarray, background: np.ndarray, spec: ClutterSpec, rng: np.random.Generator
) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """``photo`` pasted into ``background`` (both BGR uint8 ``(H, W, 3)``) ->
    ``(canvas (H', W', 3), box (x1, y1, x2, y2) inclusive)`` of the pasted photo."""
    from regatt_sdk.preprocess import prepare

    canvas = np.ascontiguousarray(prepare(background, spec.max_side)).copy()
    ch, cw = canvas.shape[:2]
    h, w = photo.shape[:2]
    s = float(rng.uniform(spec.scale_min, spec.scale_max)) * min(ch / h, cw / w)
    nh, nw = max(8, min(ch, int(round(h * s)))), max(8, min(cw, int(round(w * s))))
    small = cv2.resize(photo, (nw, nh), interpolation=cv2.INTER_AREA)
    if spec.flip and rng.random() < 0.5:
        small = small[:, ::-1]
    y = int(rng.integers(0, ch - nh + 1))
    x = int(rng.integers(0, cw - nw + 1))
    canvas[y : y + nh, x : x + nw] = small
    return canvas, (x, y, x + nw - 1, y + nh - 1)
