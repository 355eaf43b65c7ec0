"""The descriptor head: per-region whitening, the release's normalisation, attention.

Shapes: ``N`` images, ``R`` region slots, ``C`` backbone channels, ``D`` descriptor size.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

VARIANTS = ("context", "regional", "none")
HIDDEN = 64


def release_normalize(v: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Divide each row (last axis) by its maximum, then by its L2 norm + ``eps``.

    The released code's normalisation (a negative maximum flips the sign, a zero gives NaN:
    reproduced on purpose).
    """
    v = v / v.amax(dim=-1, keepdim=True)
    return v / (torch.linalg.vector_norm(v, dim=-1, keepdim=True) + eps)


class Whitening(nn.Module):
    """``v = (r + mean) @ components.T``: ``(..., C) -> (..., D)``.

    The release *adds* its mean vector and the projection has no bias. ``components`` is
    ``(D, C)``, rows are output dimensions.
    """

    def __init__(self, mean: torch.Tensor, components: torch.Tensor, source: str = "custom"):
        super().__init__()
        if components.ndim != 2 or mean.shape != (components.shape[1],):
            raise ValueError(
                f"whitening shapes do not fit: mean {tuple(mean.shape)}, components {tuple(components.shape)}"
            )
        self.register_buffer("mean", mean.detach().float().clone())
        self.register_buffer("components", components.detach().float().clone())
        self.source = source

    @property
    def in_dim(self) -> int:
        return self.components.shape[1]

    @property
    def out_dim(self) -> int:
        return self.components.shape[0]

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        return torch.matmul(r + self.mean, self.components.t())


class Attention(nn.Module):
    """Regional attention ``phi = softplus(W2 tanh(W1 k + b1) + b2)``: ``(N, R) >= 0`` weights.

    ``variant``: ``context`` (``k`` = region mean ++ global mean, 2C in), ``regional`` (region
    mean alone, C in) or ``none`` (all ones, plain R-MAC).
    """

    def __init__(self, channels: int, variant: str = "context", hidden: int = HIDDEN):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"unknown attention variant {variant!r}; choose one of {VARIANTS}")
        self.variant = variant
        self.channels = channels
        if variant != "none":
            in_dim = 2 * channels if variant == "context" else channels
            self.fc1 = nn.Linear(in_dim, hidden)
            self.fc2 = nn.Linear(hidden, 1)

    @property
    def needs_means(self) -> bool:
        return self.variant != "none"

    def forward(
        self, region_mean: torch.Tensor | None, global_mean: torch.Tensor | None, n_regions: int | None = None
    ) -> torch.Tensor:
        """``region_mean (N, R, C)``, ``global_mean (N, C)`` -> weights ``(N, R)``."""
        if self.variant == "none":
            raise RuntimeError("the 'none' variant has no weights to compute; use ones")
        k = region_mean
        if self.variant == "context":
            k = torch.cat([region_mean, global_mean[:, None, :].expand_as(region_mean)], dim=-1)
        return F.softplus(self.fc2(torch.tanh(self.fc1(k))))[..., 0]
