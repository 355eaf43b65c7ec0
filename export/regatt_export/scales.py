"""Multi-scale descriptors inside the graph: the per-scale size rule, an exact bilinear resize
made of plain tensor ops, and the encoder that runs backbone + regions + head per scale.

The prepared input ``(N, H, W, 3)`` is described at each scale ``s`` at the size
:func:`regatt_sdk.scales.scaled_shape` gives for its factor ``f = s / max(1, max(scales))``
(:func:`regatt_sdk.scales.graph_factors`: longest side ``round(f * max(H, W))``, both sides by
the preprocessing rule, NumPy rounding), computed here from the input's shape with float64 tensor
ops so the ONNX graph stays dynamic. With a scale > 1 the SDK feeds ``round(max(scales) * S)``
(the card's ``input_side``), so scale ``s`` lands at ``round(s * S)`` from the photo's own pixels
and the largest scale is the input as given; with every scale <= 1 the factors are the scales. Aggregation: ``sum`` (the per-scale descriptors summed,
then L2) or ``regions`` (the regional vectors of all scales in one attention-weighted mean).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from regatt_sdk.scales import AGGREGATIONS, graph_factors

from .encoder import RegionalAttentionEncoder
from .head import release_normalize


def scaled_size(height: torch.Tensor, width: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(h', w')`` 0-d float64 for 0-d float64 ``height``/``width`` (round half to even, >= 1)."""
    longest = torch.maximum(height, width)
    target = torch.clamp(torch.round(longest * scale), min=1.0)
    new_h = torch.clamp(torch.round(height * target / longest), min=1.0)
    new_w = torch.clamp(torch.round(width * target / longest), min=1.0)
    return new_h, new_w


def _axis_taps(size_in: torch.Tensor, size_out: torch.Tensor):
    """Source indices ``(lo, hi)`` int64 and weight ``frac`` float32 of one axis, each ``(size_out,)``.

    Half-pixel centres as ``torch.nn.functional.interpolate(mode="bilinear",
    align_corners=False)`` computes them: ``src = (i + 0.5) * in / out - 0.5`` in float32,
    clamped at 0; ``lo = floor(src)``, ``hi = min(lo + 1, in - 1)``.
    """
    scale = size_in.to(torch.float32) / size_out.to(torch.float32)
    idx = torch.arange(size_out.to(torch.int64)).to(torch.float32)
    src = torch.clamp((idx + 0.5) * scale - 0.5, min=0.0)
    lo = torch.floor(src)
    frac = src - lo
    lo_i = lo.to(torch.int64)
    hi_i = torch.minimum(lo_i + 1, size_in.to(torch.int64) - 1)
    return lo_i, hi_i, frac


def bilinear_resize(x: torch.Tensor, out_h: torch.Tensor, out_w: torch.Tensor) -> torch.Tensor:
    """Resize ``x (N, C, H, W)`` float32 to ``(N, C, out_h, out_w)`` (0-d tensors), bilinear.

    Rows then columns, each a gather of two taps and a lerp; no anti-aliasing (like cv2's
    INTER_LINEAR and torch's default), so it traces to plain Gather/Mul/Add ONNX ops.
    """
    in_h = torch.scalar_tensor(x.shape[2], dtype=torch.float64)
    in_w = torch.scalar_tensor(x.shape[3], dtype=torch.float64)
    y0, y1, fy = _axis_taps(in_h, out_h)
    x0, x1, fx = _axis_taps(in_w, out_w)
    fy = fy[None, None, :, None]
    rows = x.index_select(2, y0) * (1.0 - fy) + x.index_select(2, y1) * fy
    fx = fx[None, None, None, :]
    return rows.index_select(3, x0) * (1.0 - fx) + rows.index_select(3, x1) * fx


class MultiScaleEncoder(nn.Module):
    """``image (N, H, W, 3)`` -> ``descriptor (N, D)`` from several scales of the same input."""

    def __init__(self, base: RegionalAttentionEncoder, scales: tuple[float, ...], aggregation: str = "sum"):
        super().__init__()
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"unknown scale aggregation {aggregation!r}; choose one of {AGGREGATIONS}")
        if not scales:
            raise ValueError("a multi-scale encoder needs at least one scale")
        self.base = base
        self.scales = tuple(float(s) for s in scales)
        #: the resize factor of the prepared input per scale (``s / max(scales)`` when one is > 1)
        self.factors = graph_factors(self.scales)
        self.aggregation = aggregation

    @property
    def dim(self) -> int:
        return self.base.dim

    @property
    def spec(self):
        return self.base.spec

    def per_scale(self, image: torch.Tensor):
        """``[(rmax, rmean, gmean, valid)]`` per scale (see :meth:`RegionalAttentionEncoder.regional`),
        each from the input resized by that scale's factor (:attr:`factors`)."""
        x = self.base.normalize_input(image)
        height = torch.scalar_tensor(image.shape[1], dtype=torch.float64)
        width = torch.scalar_tensor(image.shape[2], dtype=torch.float64)
        parts = []
        for f in self.factors:
            if f == 1.0:
                xs, hs, ws = x, height, width
            else:
                hs, ws = scaled_size(height, width, f)
                xs = bilinear_resize(x, hs, ws)
            feat = self.base.backbone(xs)
            parts.append(self.base.regional_boxes(self.base.boxes_hw(hs, ws), feat))
        return parts

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        parts = self.per_scale(image)
        if self.aggregation == "sum":
            g = torch.stack([self.base.head(*p)[0] for p in parts]).sum(dim=0)
            return g / torch.linalg.vector_norm(g, dim=-1, keepdim=True)
        terms = [self.base.terms(*p) for p in parts]
        v = torch.cat([t[0] for t in terms], dim=1)
        phi = torch.cat([t[1] for t in terms], dim=1)
        count = torch.stack([t[2] for t in terms]).sum()
        return release_normalize((phi[..., None] * v).sum(dim=1) / count)
