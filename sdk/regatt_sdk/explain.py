"""Pictures of what the encoder looks at, and of labelled search results (OpenCV only).

:func:`explain` runs :meth:`regatt_sdk.encoder.Encoder.explain` (a model exported with
``regatt export --explain``) and returns an :class:`Explanation`: the prepared image, its R-MAC
regions and their attention weights. :func:`explanation_figure` draws the paper's figure: on the
left the photo with the ``top`` regions by weight, outlined in a colormap by weight and labelled
with their rank and share of the total weight; on the right the photo under a heatmap of the
mean weight of the regions covering each pixel; below, a colour bar and a one-line legend.

:func:`labelled_grid` is the evaluation picture: a query and its top results as
:func:`regatt_sdk.grid.result_grid`, each result framed and captioned correct / wrong / junk.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .preprocess import Box

_BG = (32, 32, 32)
_TEXT = (235, 235, 235)
_FONT = cv2.FONT_HERSHEY_SIMPLEX
_LEGEND = 44
#: frame colours (BGR) of labelled results


@dataclass(frozen=True)
class Explanation:
    """``image`` prepared BGR uint8 ``(h, w, 3)``; ``boxes`` ``(R, 4)`` inclusive x1, y1, x2, y2 in
    its pixels; ``weights`` ``(R,)`` attention weights; ``descriptor`` ``(D,)``."""

    image: np.ndarray
    boxes: np.ndarray
    weights: np.ndarray
    descriptor: np.ndarray

    def order(self) -> np.ndarray:
        """Region indices by descending weight ``(R,)`` (ties: lower index first)."""
        return np.lexsort((np.arange(self.weights.size), -self.weights))

    def shares(self) -> np.ndarray:
        """Each region's share of the total weight ``(R,)`` (sums to 1)."""
        w = np.maximum(self.weights.astype(np.float64), 0.0)
        total = w.sum()
        return (w / total if total > 0 else np.full_like(w, 1.0 / max(w.size, 1))).astype(np.float32)


def explain(encoder, image: str | Path | np.ndarray, roi: Box | None = None) -> Explanation:
    """Regions and weights of ``image`` (path or BGR array) with ``encoder`` (an
    :class:`~regatt_sdk.encoder.Encoder` of a model exported with ``--explain``)."""
    out = encoder.explain(str(image) if isinstance(image, Path) else image, roi=roi)
    return Explanation(
        image=np.ascontiguousarray(out["image"], dtype=np.uint8),
        boxes=np.asarray(out["boxes"], dtype=np.float32).reshape(-1, 4),
        weights=np.asarray(out["weights"], dtype=np.float32).reshape(-1),
        descriptor=np.asarray(out["descriptor"], dtype=np.float32),
    )


#: a region counts as inside an object box when at least this share of its area is inside
INSIDE = 0.5


def inside_mask(boxes: np.ndarray, box: Sequence[float], inside: float = INSIDE) -> np.ndarray:
    """``(R,)`` bool: regions (``boxes (R, 4)`` inclusive x1, y1, x2, y2, as the encoder's explain
    output) with at least ``inside`` of their area in ``box`` (x1, y1, x2, y2, end-exclusive)."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    x1, y1, x2, y2 = b[:, 0], b[:, 1], b[:, 2] + 1, b[:, 3] + 1
    ix = np.clip(np.minimum(x2, box[2]) - np.maximum(x1, box[0]), 0, None)
    iy = np.clip(np.minimum(y2, box[3]) - np.maximum(y1, box[1]), 0, None)
    area = np.maximum((x2 - x1) * (y2 - y1), 1e-12)
    return ix * iy / area >= inside


def box_share(
    boxes: np.ndarray, weights: np.ndarray, box: Sequence[float], inside: float = INSIDE
) -> tuple[float, float]:
    """``(attention share, uniform share)`` of the regions inside ``box`` (:func:`inside_mask`):
    their summed weight over the total, and their count over the number of regions (both 0 when
    no region is inside). Attention looks at the object when the first is well above the second."""
    mask = inside_mask(boxes, box, inside)
    w = np.maximum(np.asarray(weights, dtype=np.float64).reshape(-1), 0.0)
    total = w.sum()
    share = float(w[mask].sum() / total) if total > 0 else float(mask.mean())
    return share, float(mask.mean())


def weight_map(shape: tuple[int, int], boxes: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Sum of the ``weights`` ``(R,)`` of the ``boxes`` ``(R, 4)`` covering each pixel: ``(h, w)``
    float32 (a summed-area accumulation, O(R + h w))."""
    h, w = shape
    acc = np.zeros((h + 1, w + 1), dtype=np.float64)
    for (x1, y1, x2, y2), wt in zip(np.round(boxes).astype(int), weights.astype(np.float64)):
        x1, y1 = max(x1, 0), max(y1, 0)
        x2, y2 = min(x2, w - 1) + 1, min(y2, h - 1) + 1
        if x2 <= x1 or y2 <= y1:
            continue
        acc[y1, x1] += wt
        acc[y1, x2] -= wt
        acc[y2, x1] -= wt
        acc[y2, x2] += wt
    return acc.cumsum(0).cumsum(1)[:h, :w].astype(np.float32)


def _colours(values: np.ndarray, colormap: int) -> list[tuple[int, int, int]]:
    """BGR colours of ``values`` in [0, 1] ``(R,)`` from an OpenCV colormap."""
    lut = cv2.applyColorMap(np.arange(256, dtype=np.uint8)[:, None], colormap)[:, 0]
    idx = np.clip(np.round(values * 255), 0, 255).astype(int)
    return [tuple(int(c) for c in lut[i]) for i in idx]


def _normalise(w: np.ndarray) -> np.ndarray:
    lo, hi = float(w.min()), float(w.max())
    return (w - lo) / (hi - lo) if hi > lo else np.ones_like(w)


def _label_box(img_shape: tuple[int, ...], text: str, box: tuple[int, int, int, int], pad: int,
               taken: list[tuple[int, int, int, int]]) -> tuple[int, int, int, int]:  # fmt: skip
    """Where ``text`` goes for ``box``: the first inner corner whose label rectangle overlaps no
    rectangle in ``taken`` (else the top-left one), clipped to the image. ``(x, y, w, h)``."""
    (tw, th), base = cv2.getTextSize(text, _FONT, 0.45, 1)
    lw, lh = tw + 4, th + base + 4
    x1, y1, x2, y2 = box
    spots = [(x1 + pad, y1 + pad), (x1 + pad, y2 - pad - lh), (x2 - pad - lw, y1 + pad),
             (x2 - pad - lw, y2 - pad - lh)]  # fmt: skip
    placed = []
    for x, y in spots:
        x = int(min(max(x, 0), img_shape[1] - lw))
        y = int(min(max(y, 0), img_shape[0] - lh))
        placed.append((x, y, lw, lh))
        if all(x + lw <= a or a + c <= x or y + lh <= b or b + d <= y for a, b, c, d in taken):
            return placed[-1]
    return placed[0]


def _label(img: np.ndarray, text: str, rect: tuple[int, int, int, int],
           colour: tuple[int, int, int]) -> None:  # fmt: skip
    """``text`` on a filled ``colour`` rectangle ``(x, y, w, h)`` (from :func:`_label_box`)."""
    x, y, w, h = rect
    cv2.rectangle(img, (x, y), (x + w, y + h), colour, -1)
    cv2.rectangle(img, (x, y), (x + w, y + h), (0, 0, 0), 1)
    dark = sum(colour) > 380
    base = cv2.getTextSize(text, _FONT, 0.45, 1)[1]
    cv2.putText(img, text, (x + 2, y + h - base - 2), _FONT, 0.45,
                (0, 0, 0) if dark else (255, 255, 255), 1, cv2.LINE_AA)  # fmt: skip


def draw_regions(
    image: np.ndarray, boxes: np.ndarray, weights: np.ndarray, *, top: int = 8,
    colormap: int = cv2.COLORMAP_TURBO,
) -> np.ndarray:  # fmt: skip
    """``image`` (h, w, 3) with the ``top`` heaviest ``boxes`` (R, 4) outlined in ``colormap``
    colours by weight (R,) and labelled ``#rank share%``; the heaviest is drawn last (on top)."""
    out = image.copy()
    expl = Explanation(image, boxes, weights, np.zeros(0, np.float32))
    order = expl.order()[: max(0, top)]
    colours = _colours(_normalise(weights), colormap)
    shares = expl.shares()
    thick = max(2, round(max(image.shape[:2]) / 250))
    labels: list[tuple[str, tuple[int, int, int, int], tuple[int, int, int]]] = []
    taken: list[tuple[int, int, int, int]] = []
    for rank, r in enumerate(order, start=1):  # labels placed heaviest first, clear of others
        box = tuple(int(round(v)) for v in boxes[r])
        text = f"#{rank} {100 * shares[r]:.1f}%"
        rect = _label_box(out.shape, text, box, thick, taken)  # type: ignore[arg-type]
        taken.append(rect)
        labels.append((text, rect, colours[r]))
    for rank in range(len(order), 0, -1):  # boxes drawn lightest first: the heaviest on top
        x1, y1, x2, y2 = (int(round(v)) for v in boxes[order[rank - 1]])
        cv2.rectangle(out, (x1, y1), (x2, y2), (0, 0, 0), thick + 2)
        cv2.rectangle(out, (x1, y1), (x2, y2), colours[order[rank - 1]], thick)
    for text, rect, colour in reversed(labels):
        _label(out, text, rect, colour)
    return out


def draw_heatmap(
    image: np.ndarray, boxes: np.ndarray, weights: np.ndarray, *, alpha: float = 0.55,
    colormap: int = cv2.COLORMAP_TURBO,
) -> np.ndarray:  # fmt: skip
    """``image`` (h, w, 3) blended with the mean attention weight of the regions covering each
    pixel (min..max scaled). A plain sum would mostly show where regions overlap."""
    total = weight_map(image.shape[:2], boxes, np.maximum(weights, 0))
    cover = weight_map(image.shape[:2], boxes, np.ones_like(weights))
    heat = np.where(cover > 0, total / np.maximum(cover, 1e-12), 0.0).astype(np.float32)
    scaled = np.round(_normalise(heat) * 255).astype(np.uint8)
    return cv2.addWeighted(image, 1 - alpha, cv2.applyColorMap(scaled, colormap), alpha, 0)


def _legend(width: int, text: str, colormap: int) -> np.ndarray:
    strip = np.full((_LEGEND, width, 3), _BG, dtype=np.uint8)
    bar_w = min(200, width // 3)
    ramp = np.tile(np.linspace(0, 255, bar_w).astype(np.uint8), (12, 1))
    strip[8:20, 8 : 8 + bar_w] = cv2.applyColorMap(ramp, colormap)
    cv2.putText(strip, "low", (8, 36), _FONT, 0.4, _TEXT, 1, cv2.LINE_AA)
    cv2.putText(strip, "high weight", (bar_w - 70, 36), _FONT, 0.4, _TEXT, 1, cv2.LINE_AA)
    cv2.putText(strip, text, (bar_w + 20, 24), _FONT, 0.45, _TEXT, 1, cv2.LINE_AA)
    return strip


def explanation_figure(
    expl: Explanation, *, top: int = 8, size: int = 400, colormap: int = cv2.COLORMAP_TURBO,
    title: str = "", box: Sequence[float] | None = None,
) -> np.ndarray:  # fmt: skip
    """The figure as BGR uint8 ``(h' + 44, 2 w' + 8, 3)``: regions | heatmap, legend below.

    Both panels show the prepared image scaled so its longer side is ``size`` pixels. ``box``
    (x1, y1, x2, y2 end-exclusive, prepared-image pixels): an object box, drawn dashed-white on
    both panels, with its :func:`box_share` in the legend.
    """
    h, w = expl.image.shape[:2]
    scale = size / max(h, w)
    small = cv2.resize(expl.image, (max(1, round(w * scale)), max(1, round(h * scale))),
                       interpolation=cv2.INTER_AREA)  # fmt: skip
    boxes = (expl.boxes + 0.5) * scale - 0.5
    left = draw_regions(small, boxes, expl.weights, top=top, colormap=colormap)
    right = draw_heatmap(small, boxes, expl.weights, colormap=colormap)
    if box is not None:
        p1 = (int(round(box[0] * scale)), int(round(box[1] * scale)))
        p2 = (int(round(box[2] * scale)) - 1, int(round(box[3] * scale)) - 1)
        for panel in (left, right):
            cv2.rectangle(panel, p1, p2, (255, 255, 255), 2)
    gap = np.full((small.shape[0], 8, 3), _BG, dtype=np.uint8)
    panels = np.hstack([left, gap, right])
    n = expl.weights.size
    shown = min(top, n)
    text = (f"{title + ': ' if title else ''}top {shown} of {n} regions by attention weight "
            f"(share of total); right: mean weight per pixel")  # fmt: skip
    if box is not None:
        share, uniform = box_share(expl.boxes, expl.weights, box)
        text += f"; box: {100 * share:.0f}% of the weight (uniform {100 * uniform:.0f}%)"
    return np.vstack([panels, _legend(panels.shape[1], text, colormap)])
