"""TensorFlow "SAME" padding computed from the input's shape with tensor ops.

TF pads a stride-2 convolution asymmetrically, and how depends on the parity of the input
size. timm computes that with ``math.ceil`` on the shape, which an ONNX trace freezes at the
traced size. Here the four amounts are int64 tensors computed from the shape and fed to a
single ONNX ``Pad`` node (whose ``pads`` is an input, not an attribute), so the exported graph
is exact at every size and costs one copy of the tensor (a gather of a statically padded
tensor, the first version, cost three copies and a slow strided gather: ~40 % of the
EfficientNet-Lite0 encoder on CPU).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def same_amounts(size: torch.Tensor, kernel: int, stride: int, dilation: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(before, after)`` int64 scalars of TF-SAME padding for a dimension of length ``size``."""
    span = (kernel - 1) * dilation + 1
    out = torch.div(size + stride - 1, stride, rounding_mode="floor")
    total = torch.clamp((out - 1) * stride + span - size, min=0)
    before = torch.div(total, 2, rounding_mode="floor")
    return before, total - before


class _ZeroPad(torch.autograd.Function):
    """Zero-pad ``x (N, C, H, W)`` by ``pads (8,)`` int64 in ONNX order
    ``[0, 0, top, left, 0, 0, bottom, right]``; exports as one ``Pad`` with a dynamic ``pads``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, pads: torch.Tensor) -> torch.Tensor:  # noqa: D102
        top, left, bottom, right = (int(v) for v in pads[[2, 3, 6, 7]].tolist())
        ctx.box = (top, left, x.shape[2], x.shape[3])
        return F.pad(x, [left, right, top, bottom])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # noqa: D102
        top, left, h, w = ctx.box
        return grad[:, :, top : top + h, left : left + w], None

    @staticmethod
    def symbolic(g, x, pads):  # noqa: D102
        return g.op("Pad", x, pads, mode_s="constant")


def same_pad_2d(
    x: torch.Tensor, kernel: tuple[int, int], stride: tuple[int, int], dilation: tuple[int, int]
) -> torch.Tensor:
    """Pad ``x (N, C, H, W)`` the way TF's ``padding='SAME'`` does -> ``(N, C, H', W')``."""
    height = torch.scalar_tensor(x.shape[2], dtype=torch.int64)
    width = torch.scalar_tensor(x.shape[3], dtype=torch.int64)
    top, bottom = same_amounts(height, kernel[0], stride[0], dilation[0])
    left, right = same_amounts(width, kernel[1], stride[1], dilation[1])
    zero = torch.zeros((), dtype=torch.int64)
    pads = torch.stack([zero, zero, top, left, zero, zero, bottom, right])
    return _ZeroPad.apply(x, pads)


class SamePadConv2d(nn.Module):
    """A ``nn.Conv2d`` (with ``padding=0``) preceded by dynamic TF-SAME padding."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.conv
        x = same_pad_2d(x, c.kernel_size, c.stride, c.dilation)
        return F.conv2d(x, c.weight, c.bias, c.stride, 0, c.dilation, c.groups)


def replace_same_convs(model: nn.Module) -> int:
    """Swap every timm ``Conv2dSame`` in ``model`` for :class:`SamePadConv2d`; returns the count."""
    count = 0
    for name, module in list(model.named_modules()):
        if type(module).__name__ == "Conv2dSame":
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, SamePadConv2d(module))
            count += 1
    return count
