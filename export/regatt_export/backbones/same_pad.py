"""TensorFlow "SAME" padding computed from the input's shape with tensor ops.

TF pads a stride-2 convolution asymmetrically, and how depends on the parity of the input
size. timm computes that with ``math.ceil`` on the shape, which an ONNX trace freezes at the
traced size; here the padding is a gather of a statically padded tensor with a dynamic index,
so the exported graph is exact at every size.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def same_pad(x: torch.Tensor, dim: int, kernel: int, stride: int, dilation: int) -> torch.Tensor:
    """Pad ``x (N, C, H, W)`` along ``dim`` (2 or 3) the way TF's ``padding='SAME'`` does."""
    size = torch.scalar_tensor(x.shape[dim], dtype=torch.int64)
    span = (kernel - 1) * dilation + 1
    out = torch.div(size + stride - 1, stride, rounding_mode="floor")
    total = torch.clamp((out - 1) * stride + span - size, min=0)
    before = torch.div(total, 2, rounding_mode="floor")
    margin = span - 1
    padded = F.pad(x, [0, 0, margin, margin] if dim == 2 else [margin, margin])
    index = torch.arange(size + total) + (margin - before)
    return padded.index_select(dim, index)


class SamePadConv2d(nn.Module):
    """A ``nn.Conv2d`` (with ``padding=0``) preceded by dynamic TF-SAME padding."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.conv
        x = same_pad(x, 2, c.kernel_size[0], c.stride[0], c.dilation[0])
        x = same_pad(x, 3, c.kernel_size[1], c.stride[1], c.dilation[1])
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
