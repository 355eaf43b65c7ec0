"""The regional-attention encoder as one ``nn.Module``: image in, descriptor out.

``image (N, H, W, 3)`` BGR, uint8 or float 0..255 (already resized) -> ``descriptor (N, D)``:
colour order, mean/std, backbone, R-MAC grid, regional max and mean pooling, whitening, the
release's normalisation, attention, attention-weighted mean over the ``R`` real regions (the sum
divided by ``R``, not by the weights), normalisation again.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .backbones import BackboneSpec
from .head import Attention, Whitening, release_normalize
from .pooling import POOLING, box_cells, box_mean, roi_max, table_max
from .regions import rmac_boxes


class RegionalAttentionEncoder(nn.Module):
    """Backbone + regional-attention head; see the module docstring for shapes."""

    def __init__(
        self,
        backbone: nn.Module,
        spec: BackboneSpec,
        attention: Attention,
        whitening: Whitening | None = None,
        levels: int = 5,
        pooling: str = "roi",
    ):
        super().__init__()
        if pooling not in POOLING:
            raise ValueError(f"unknown pooling {pooling!r}; choose one of {POOLING}")
        if whitening is not None and whitening.in_dim != spec.channels:
            raise ValueError(
                f"whitening expects {whitening.in_dim}-d regional vectors, backbone {spec.name} gives {spec.channels}"
            )
        if attention.channels != spec.channels:
            raise ValueError(f"attention expects {attention.channels} channels, backbone gives {spec.channels}")
        self.backbone = backbone
        self.spec = spec
        self.attention = attention
        self.whitening = whitening
        self.levels = levels
        self.pooling = pooling
        # (1, 3, 1, 1): normalisation runs on whole planes after the layout change (a broadcast over
        # a trailing axis of 3 is several times slower in onnxruntime)
        self.register_buffer(
            "pixel_mean", torch.tensor(spec.mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False
        )
        self.register_buffer(
            "pixel_std", torch.tensor(spec.std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False
        )
        self.unit_std = all(s == 1.0 for s in spec.std)

    @property
    def dim(self) -> int:
        return self.whitening.out_dim if self.whitening is not None else self.spec.channels

    def normalize_input(self, image: torch.Tensor) -> torch.Tensor:
        """``(N, H, W, 3)`` BGR 0..255 -> ``(N, 3, H, W)`` float in the backbone's convention."""
        x = image.to(torch.float32).permute(0, 3, 1, 2)
        if self.spec.color == "RGB":
            x = x.index_select(1, torch.tensor([2, 1, 0], device=x.device))
        x = x - self.pixel_mean
        if not self.unit_std:
            x = x / self.pixel_std
        return x

    def boxes(self, image: torch.Tensor) -> torch.Tensor:
        """The real R-MAC regions of ``image (N, H, W, 3)``: ``(R, 4)`` float64 inclusive boxes."""
        height = torch.scalar_tensor(image.shape[1], dtype=torch.float64)
        width = torch.scalar_tensor(image.shape[2], dtype=torch.float64)
        return self.boxes_hw(height, width)

    def boxes_hw(self, height: torch.Tensor, width: torch.Tensor) -> torch.Tensor:
        """The real R-MAC regions of a ``height`` x ``width`` image (0-d float64): ``(R, 4)``."""
        boxes, valid = rmac_boxes(height, width, self.levels)
        return boxes.index_select(0, torch.nonzero(valid)[:, 0])

    def regional(self, image: torch.Tensor, feat: torch.Tensor):
        """Pool ``feat (N, C, h, w)`` over the R-MAC regions of ``image``'s size.

        Returns ``rmax (N, R, C)``, ``rmean (N, R, C)`` or None, ``gmean (N, C)`` or None and
        ``valid (R,)`` (all true: only real regions are kept; the head accepts a mask).
        """
        return self.regional_boxes(self.boxes(image), feat)

    def regional_boxes(self, boxes: torch.Tensor, feat: torch.Tensor):
        """:meth:`regional` for given ``boxes (R, 4)`` float64 pixel boxes."""
        fh = torch.scalar_tensor(feat.shape[2], dtype=torch.int64)
        fw = torch.scalar_tensor(feat.shape[3], dtype=torch.int64)
        y0, y1, x0, x1 = box_cells(boxes, self.spec.stride, fh, fw)
        if self.pooling == "roi":
            rmax = roi_max(feat, boxes, self.spec.stride)
        else:
            rmax = table_max(feat, y0, y1, x0, x1)
        need_mean = self.attention.needs_means
        rmean = box_mean(feat, y0, y1, x0, x1) if need_mean else None
        gmean = feat.mean(dim=(2, 3)) if need_mean else None
        return rmax, rmean, gmean, torch.ones_like(y0, dtype=torch.bool)

    def region_vectors(self, rmax: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """``rmax (N, R, C)`` -> whitened, normalised regional vectors ``(N, R, D)`` (invalid: 0)."""
        v = self.whitening(rmax) if self.whitening is not None else rmax
        v = release_normalize(v)
        return torch.where(valid[None, :, None], v, torch.zeros_like(v))

    def terms(self, rmax, rmean, gmean, valid) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(v (N, R, D) normalised regional vectors, phi (N, R) weights, count ())``."""
        v = self.region_vectors(rmax, valid)
        if self.attention.variant == "none":
            phi = valid.to(v.dtype)[None, :].expand(v.shape[0], -1)
        else:
            phi = self.attention(rmean, gmean) * valid.to(v.dtype)[None, :]
        return v, phi, valid.to(v.dtype).sum()

    def head(self, rmax, rmean, gmean, valid) -> tuple[torch.Tensor, torch.Tensor]:
        """Regional vectors -> ``(descriptor (N, D), weights (N, R))``; invalid slots weigh 0."""
        v, phi, count = self.terms(rmax, rmean, gmean, valid)
        g = (phi[..., None] * v).sum(dim=1) / count
        return release_normalize(g), phi

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        feat = self.backbone(self.normalize_input(image))
        g, _ = self.head(*self.regional(image, feat))
        return g

    def explain(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(descriptor (N, D), boxes (R, 4) float64 x1,y1,x2,y2 inclusive, valid (R,), weights (N, R))``."""
        feat = self.backbone(self.normalize_input(image))
        parts = self.regional(image, feat)
        g, phi = self.head(*parts)
        return g, self.boxes(image), parts[3], phi

    def explain_regions(self, image: torch.Tensor):
        """:meth:`explain` plus the regional vectors ``regions (N, R, D)`` the descriptor averages."""
        feat = self.backbone(self.normalize_input(image))
        parts = self.regional(image, feat)
        g, phi = self.head(*parts)
        return g, self.boxes(image), parts[3], phi, self.region_vectors(parts[0], parts[3])


class ExplainEncoder(nn.Module):
    """Export wrapper with the extra outputs ``boxes``, ``valid``, ``weights`` and ``regions``
    (the whitened, normalised regional vectors, e.g. for region-to-region matching in dedup)."""

    def __init__(self, encoder: RegionalAttentionEncoder):
        super().__init__()
        self.encoder = encoder

    def forward(self, image: torch.Tensor):
        g, boxes, valid, phi, regions = self.encoder.explain_regions(image)
        return g, boxes.to(torch.float32), valid.to(torch.uint8), phi, regions
