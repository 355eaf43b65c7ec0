"""The R-MAC region grid (Tolias et al.) as the released code computes it, in tensor ops.

Everything is computed from the input's height and width as 0-d float64 tensors, so that an
ONNX export keeps it dynamic (no ``int()`` or ``math.*`` on shapes). To keep every tensor shape
independent of the image, the grid is laid out in fixed *slots*: at level ``l`` there are
``l + MAX_EXTRA`` candidate positions along each axis, and the boxes are the (y, x) slot pairs
where at most one axis uses the extra positions. A boolean mask says which slots are real
regions for this image (55 of them for a square image at L=5, 70 for 4:3, up to 130).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import torch

#: the long side gets up to this many extra regions (``steps = 2..7`` -> 1..6)
MAX_EXTRA = 6
OVERLAP = 0.4


@dataclass(frozen=True)
class SlotLayout:
    """Static bookkeeping of the slots for ``levels`` levels.

    ``axis_level[i]`` / ``axis_pos[i]``: level and position index of 1-d slot ``i`` (the same
    table serves x and y). ``box_y[r]`` / ``box_x[r]``: the 1-d slots a box slot ``r`` combines.
    """

    levels: int
    axis_level: tuple[int, ...]
    axis_pos: tuple[int, ...]
    box_y: tuple[int, ...]
    box_x: tuple[int, ...]

    @property
    def n_axis(self) -> int:
        return len(self.axis_level)

    @property
    def n_boxes(self) -> int:
        return len(self.box_y)


@cache
def slot_layout(levels: int) -> SlotLayout:
    """The fixed slot table for ``levels`` levels (Σ_l l² + 12 l box slots)."""
    if levels < 1:
        raise ValueError(f"levels must be >= 1, got {levels}")
    axis_level: list[int] = []
    axis_pos: list[int] = []
    first: dict[int, int] = {}
    for level in range(1, levels + 1):
        first[level] = len(axis_level)
        for pos in range(level + MAX_EXTRA):
            axis_level.append(level)
            axis_pos.append(pos)
    box_y: list[int] = []
    box_x: list[int] = []
    for level in range(1, levels + 1):
        n = level + MAX_EXTRA
        for m in range(n):
            for k in range(n):
                if m < level or k < level:  # only one axis may use its extra positions
                    box_y.append(first[level] + m)
                    box_x.append(first[level] + k)
    return SlotLayout(levels, tuple(axis_level), tuple(axis_pos), tuple(box_y), tuple(box_x))


def extra_regions(height: torch.Tensor, width: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(Hd, Wd)``: extra regions along the long side, from 0-d float64 ``height``/``width``.

    ``idx = argmin_steps |(w² - w b)/w² - 0.4| + 1`` with ``b = (max - w)/(steps - 1)``.
    """
    short = torch.minimum(height, width)
    long = torch.maximum(height, width)
    steps = torch.arange(2, 2 + MAX_EXTRA, dtype=torch.float64)
    b = (long - short) / (steps - 1)
    score = torch.abs((short * short - short * b) / (short * short) - OVERLAP)
    idx = (torch.argmin(score) + 1).to(torch.float64)
    zero = torch.zeros((), dtype=torch.float64)
    wd = torch.where(height < width, idx, zero)
    hd = torch.where(height > width, idx, zero)
    return hd, wd


def _axis_starts(
    size: torch.Tensor, extra: torch.Tensor, side: torch.Tensor, level: torch.Tensor, pos: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Left (or top) edges of the 1-d slots along one axis, and which slots exist.

    All arguments float64; ``side``, ``level``, ``pos`` are ``(n_axis,)``. Returns ``(start,
    valid)`` of shape ``(n_axis,)``.
    """
    count = level + extra
    half = torch.floor(side / 2 - 1)
    denom = count - 1
    spacing = torch.where(denom > 0, (size - side) / torch.clamp(denom, min=1.0), torch.zeros_like(side))
    start = torch.floor(half + pos * spacing) - half
    # shift back inside the image if a region passes the border
    start = torch.clamp(torch.minimum(start, size - side), min=0.0)
    valid = (pos < count) & (side > 0)
    return start, valid


def _slots(height: torch.Tensor, width: torch.Tensor, levels: int):
    """Left/top pixel edges of the 1-d slots along x and y, their side and validity.

    Returns float64 ``xs, ys, side`` ``(n_axis,)`` and bool ``valid (R,)`` for the box slots.
    """
    layout = slot_layout(levels)
    level = torch.tensor(layout.axis_level, dtype=torch.float64)
    pos = torch.tensor(layout.axis_pos, dtype=torch.float64)
    hd, wd = extra_regions(height, width)
    short = torch.minimum(height, width)
    side = torch.floor(2 * short / (level + 1))
    xs, x_ok = _axis_starts(width, wd, side, level, pos)
    ys, y_ok = _axis_starts(height, hd, side, level, pos)
    by = torch.tensor(layout.box_y, dtype=torch.long)
    bx = torch.tensor(layout.box_x, dtype=torch.long)
    return xs, ys, side, y_ok[by] & x_ok[bx]


def rmac_boxes(height: torch.Tensor, width: torch.Tensor, levels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """R-MAC regions of an image of ``height`` x ``width`` pixels (0-d float64 tensors).

    Returns ``boxes (R, 4)`` float64 as inclusive pixel boxes ``(x1, y1, x2, y2)`` and
    ``valid (R,)`` bool, where ``R = slot_layout(levels).n_boxes``. Invalid slots hold the box
    ``(0, 0, 0, 0)``.
    """
    layout = slot_layout(levels)
    xs, ys, side, valid = _slots(height, width, levels)
    bx = torch.tensor(layout.box_x, dtype=torch.long)
    by = torch.tensor(layout.box_y, dtype=torch.long)
    x1, y1, wl = xs[bx], ys[by], side[bx]
    boxes = torch.stack([x1, y1, x1 + wl - 1, y1 + wl - 1], dim=-1)
    boxes = torch.where(valid[:, None], boxes, torch.zeros_like(boxes))
    return boxes, valid
