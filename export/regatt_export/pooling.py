"""Regional max and mean pooling over the R-MAC boxes, exact and export-friendly.

Boxes are inclusive pixel boxes ``(x1, y1, x2, y2)``. Their feature cells follow the release:
each edge divided by the stride and rounded half away from zero, extent
``max(round(x2) - round(x1) + 1, 1)``, clipped to the feature map (:func:`box_cells`).

Two exact ways to take the regional max:

* ``roi`` — ``torchvision.ops.roi_pool`` with a 1x1 output, exported as ONNX ``MaxRoiPool``,
  whose onnxruntime CPU kernel rounds exactly like the release. Costs a pass over each box.
  onnxruntime has no CUDA kernel for it (the node then runs on the CPU).
* ``table`` — a sparse table (``T_j[i] = max(F[i : i + 2^j])``) along x then y, so an interval
  ``[a, b)`` is ``max(T_k[a], T_k[b - 2^k])`` with ``2^k <= b - a``: plain Max/Slice/Gather ops
  that run on any provider. Regions up to ``2^TABLE_LEVELS - 1`` cells (4064 px at stride 32).

Means are 0/1-mask matrix products divided by the cell count.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

TABLE_LEVELS = 7
POOLING = ("roi", "table")


def box_cells(boxes: torch.Tensor, stride: int, feat_h: torch.Tensor, feat_w: torch.Tensor):
    """Cell ranges ``[y0, y1) x [x0, x1)`` (int64 ``(R,)`` each) of pixel boxes ``(R, 4)`` float64.

    A start past the map is clamped to its last cell, so no box is ever empty.
    """
    scale = 1.0 / stride

    def axis(lo_px: torch.Tensor, hi_px: torch.Tensor, size: torch.Tensor):
        lo = torch.floor(lo_px * scale + 0.5)
        hi = torch.floor(hi_px * scale + 0.5)
        extent = torch.clamp(hi - lo + 1, min=1.0).to(torch.int64)
        start = torch.minimum(torch.clamp(lo.to(torch.int64), min=0), size - 1)
        stop = torch.minimum(torch.maximum(start + extent, start + 1), size)
        return start, stop

    x0, x1 = axis(boxes[:, 0], boxes[:, 2], feat_w)
    y0, y1 = axis(boxes[:, 1], boxes[:, 3], feat_h)
    return y0, y1, x0, x1


def roi_max(feat: torch.Tensor, boxes: torch.Tensor, stride: int) -> torch.Tensor:
    """Max of ``feat (N, C, h, w)`` over each pixel box ``(R, 4)`` -> ``(N, R, C)`` (MaxRoiPool).

    A box whose start rounds past the map is moved onto the last cell first (the same cells as
    :func:`box_cells`; MaxRoiPool would return zeros for it).
    """
    from torchvision.ops import roi_pool

    n, r = feat.shape[0], boxes.shape[0]
    last_x = (torch.scalar_tensor(feat.shape[3], dtype=torch.float64) - 1) * stride
    last_y = (torch.scalar_tensor(feat.shape[2], dtype=torch.float64) - 1) * stride
    x1 = torch.minimum(boxes[:, 0], last_x)
    y1 = torch.minimum(boxes[:, 1], last_y)
    boxes = torch.stack([x1, y1, boxes[:, 2], boxes[:, 3]], dim=1)
    batch = torch.arange(n, device=feat.device, dtype=torch.float32).repeat_interleave(r)
    rois = torch.cat([batch[:, None], boxes.to(torch.float32).repeat(n, 1)], dim=1)
    pooled = roi_pool(feat, rois, output_size=(1, 1), spatial_scale=1.0 / stride)  # (N*R, C, 1, 1)
    return pooled.reshape(n, r, feat.shape[1])


def _table_levels(length: torch.Tensor) -> torch.Tensor:
    """``floor(log2(length))`` for int64 lengths >= 1, capped at ``TABLE_LEVELS - 1``."""
    level = torch.zeros_like(length)
    for j in range(1, TABLE_LEVELS):
        level = level + (length >= (1 << j)).to(length.dtype)
    return level


def _sparse_pick(t: torch.Tensor, start: torch.Tensor, stop: torch.Tensor, dim: int, diagonal: bool) -> torch.Tensor:
    """Interval maxima of ``t`` (4-d) along ``dim`` over ``[start[i], stop[i])``.

    ``diagonal=False``: every interval for every position of the last axis is taken, ``dim``
    is replaced by the ``n`` intervals. ``diagonal=True`` (``dim=2``): interval ``i`` is taken
    only in column ``i`` of the last axis, giving ``(N, C, 1, n)``.
    """
    level = _table_levels(stop - start)
    width = torch.ones_like(level) << level
    left, right = start, stop - width
    pad = [0, 0] * (3 - dim) + [0, (1 << (TABLE_LEVELS - 1))]
    table = F.pad(t, pad, value=float("-inf"))
    out = None
    for j in range(TABLE_LEVELS):
        if j > 0:
            s = 1 << (j - 1)
            table = torch.maximum(
                table.narrow(dim, 0, table.shape[dim] - s), table.narrow(dim, s, table.shape[dim] - s)
            )
        if diagonal:
            n = t.shape[3]
            li = left.reshape(1, 1, 1, -1).expand(t.shape[0], t.shape[1], 1, n)
            ri = right.reshape(1, 1, 1, -1).expand(t.shape[0], t.shape[1], 1, n)
            pick = torch.maximum(torch.gather(table, 2, li), torch.gather(table, 2, ri))
            chosen = (level == j).reshape(1, 1, 1, -1)
        else:
            pick = torch.maximum(table.index_select(dim, left), table.index_select(dim, right))
            chosen = (level == j).reshape([-1 if d == dim else 1 for d in range(4)])
        out = pick if out is None else torch.where(chosen, pick, out)
    return out


def table_max(feat: torch.Tensor, y0, y1, x0, x1) -> torch.Tensor:
    """Max of ``feat (N, C, h, w)`` over cell boxes (int64 ``(R,)`` each) -> ``(N, R, C)``."""
    cols = _sparse_pick(feat, x0, x1, dim=3, diagonal=False)  # (N, C, h, R)
    return _sparse_pick(cols, y0, y1, dim=2, diagonal=True)[:, :, 0, :].transpose(1, 2)


def box_mean(feat: torch.Tensor, y0, y1, x0, x1) -> torch.Tensor:
    """Mean of ``feat (N, C, h, w)`` over cell boxes (int64 ``(R,)`` each) -> ``(N, R, C)``."""
    cells_x = torch.arange(feat.shape[3], device=feat.device)
    cells_y = torch.arange(feat.shape[2], device=feat.device)
    mx = ((cells_x[None, :] >= x0[:, None]) & (cells_x[None, :] < x1[:, None])).to(feat.dtype)  # (R, w)
    my = ((cells_y[None, :] >= y0[:, None]) & (cells_y[None, :] < y1[:, None])).to(feat.dtype)  # (R, h)
    sx = torch.matmul(feat, mx.t())  # (N, C, h, R)
    s = (sx * my.t()[None, None]).sum(dim=2)  # (N, C, R)
    area = ((y1 - y0) * (x1 - x0)).to(feat.dtype)
    return (s / area).transpose(1, 2)
