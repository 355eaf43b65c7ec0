"""Regional max and mean pooling over rectangular cell ranges, exact and export-friendly.

The boxes of the R-MAC grid are products of 1-d intervals (a y-slot and an x-slot), so pooling
is separable: first over x for every x-interval, then over y for every box. Max pooling uses a
sparse table (``T_j[i] = max(F[i : i + 2^j])``), so an interval ``[a, b)`` costs two gathers:
``max(T_k[a], T_k[b - 2^k])`` with ``2^k <= b - a < 2^(k+1)``. It is exact (a max never rounds),
needs no ``MaxRoiPool`` (which onnxruntime lacks on CUDA), and costs a few passes over the
feature map. Means are sums of 0/1 masks by matrix products, divided by the cell count.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: intervals up to 2**(TABLE_LEVELS - 1) * 2 - 1 cells are exact (32767 px at stride 32)
TABLE_LEVELS = 10


def _shifted(t: torch.Tensor, shift: int, dim: int) -> torch.Tensor:
    """``t`` moved left by ``shift`` along ``dim`` (2 or 3 of NCHW), padded with -inf."""
    pad = [0, shift] if dim == 3 else [0, 0, 0, shift]
    padded = F.pad(t, pad, value=float("-inf"))
    return padded.narrow(dim, shift, t.shape[dim])


def _level_of(length: torch.Tensor) -> torch.Tensor:
    """``floor(log2(length))`` for int64 lengths >= 1, capped at ``TABLE_LEVELS - 1``."""
    level = torch.zeros_like(length)
    for j in range(1, TABLE_LEVELS):
        level = level + (length >= (1 << j)).to(length.dtype)
    return level


def interval_max(t: torch.Tensor, start: torch.Tensor, stop: torch.Tensor, dim: int) -> torch.Tensor:
    """Max of ``t`` (NCHW) over ``[start[i], stop[i])`` along ``dim`` (2 or 3).

    ``start``/``stop`` are int64 ``(n,)`` with ``stop > start``; the result replaces axis ``dim``
    by ``n`` intervals, e.g. ``(N, C, H, n)`` for ``dim=3``.
    """
    length = stop - start
    level = _level_of(length)
    size = torch.ones_like(level) << level  # 2**level
    left = start
    right = stop - size
    out = None
    table = t
    for j in range(TABLE_LEVELS):
        if j > 0:
            table = torch.maximum(table, _shifted(table, 1 << (j - 1), dim))
        pick = torch.maximum(table.index_select(dim, left), table.index_select(dim, right))
        if out is None:
            out = pick
        else:
            chosen = (level == j).reshape([-1 if d == dim else 1 for d in range(4)])
            out = torch.where(chosen, pick, out)
    return out


def _interval_mask(start: torch.Tensor, stop: torch.Tensor, size: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """0/1 matrix ``(n, size)``: row i marks cells ``[start[i], stop[i])``."""
    cells = torch.arange(size, device=start.device)
    return ((cells[None, :] >= start[:, None]) & (cells[None, :] < stop[:, None])).to(dtype)


def box_pool(
    feat: torch.Tensor,
    y0: torch.Tensor,
    y1: torch.Tensor,
    x0: torch.Tensor,
    x1: torch.Tensor,
    box_y: torch.Tensor,
    box_x: torch.Tensor,
    with_mean: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Max (and mean) of ``feat (N, C, H, W)`` over boxes ``[y0, y1) x [x0, x1)``.

    ``y0, y1, x0, x1`` are int64 ``(n_axis,)`` 1-d slot intervals; box ``r`` combines y-slot
    ``box_y[r]`` with x-slot ``box_x[r]``. Returns ``(max, mean)``, each ``(N, R, C)``.
    """
    n, c = feat.shape[0], feat.shape[1]
    # max: over x per x-interval, then over y per y-interval, then pick the box pairs
    gx = interval_max(feat, x0, x1, dim=3)  # (N, C, H, nx)
    gxy = interval_max(gx, y0, y1, dim=2)  # (N, C, ny, nx)
    n_axis = gxy.shape[3]
    flat = gxy.reshape(n, c, -1)
    pair = box_y * n_axis + box_x
    rmax = flat.index_select(2, pair).transpose(1, 2)
    if not with_mean:
        return rmax, None
    mx = _interval_mask(x0, x1, feat.shape[3], feat.dtype)  # (nx, W)
    my = _interval_mask(y0, y1, feat.shape[2], feat.dtype)  # (ny, H)
    sx = torch.matmul(feat, mx.t())  # (N, C, H, nx)
    sxy = torch.matmul(my, sx)  # (N, C, ny, nx)
    area = ((y1 - y0)[:, None] * (x1 - x0)[None, :]).to(feat.dtype)  # (ny, nx)
    mean_all = sxy / area
    rmean = mean_all.reshape(n, c, -1).index_select(2, pair).transpose(1, 2)
    return rmax, rmean
