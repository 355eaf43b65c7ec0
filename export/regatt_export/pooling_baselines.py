"""Classic global poolings of a feature map, for comparison with R-MAC: MAC (max), SPoC (sum /
average) and GeM (generalised mean, Radenovic et al.). ``feat (N, C, h, w) -> (N, C)`` unit rows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def mac(feat: torch.Tensor) -> torch.Tensor:
    """Global max pooling, L2-normalised."""
    return F.normalize(feat.amax(dim=(2, 3)), dim=-1)


def spoc(feat: torch.Tensor) -> torch.Tensor:
    """Global average (sum) pooling, L2-normalised."""
    return F.normalize(feat.mean(dim=(2, 3)), dim=-1)


def gem(feat: torch.Tensor, p: float = 3.0, eps: float = 1e-6) -> torch.Tensor:
    """Generalised mean ``(mean x^p)^(1/p)`` over positions (``x`` clamped at ``eps``), L2-normalised."""
    pooled = feat.clamp_min(eps).pow(p).mean(dim=(2, 3)).pow(1.0 / p)
    return F.normalize(pooled, dim=-1)


POOLINGS = {"MAC": mac, "SPoC": spoc, "GeM": gem}
