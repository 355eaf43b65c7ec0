"""An independent, deliberately naive re-implementation of the released pipeline (SPEC §1).

Loops over regions and slices the feature map like the authors' code; used by the tests as the
ground truth the optimised encoder and its ONNX export are compared against.
"""

from __future__ import annotations

import numpy as np
import torch


def reference_regions(H: int, W: int, L: int = 5) -> np.ndarray:
    """Regions ``(R, 4)`` as ``x, y, side, side`` exactly as the R-MAC reference code."""
    steps = np.array([2, 3, 4, 5, 6, 7], dtype=np.float64)
    w = min(W, H)
    b = (max(H, W) - w) / (steps - 1)
    idx = np.argmin(abs(((w**2 - w * b) / w**2) - 0.4))
    Wd = Hd = 0
    if H < W:
        Wd = idx + 1
    elif H > W:
        Hd = idx + 1
    regions = []
    for l in range(1, L + 1):
        wl = np.floor(2 * w / (l + 1))
        wl2 = np.floor(wl / 2 - 1)
        b = (W - wl) / (l + Wd - 1) if l + Wd - 1 > 0 else 0
        cenW = np.floor(wl2 + np.arange(0, l + Wd) * b) - wl2
        b = (H - wl) / (l + Hd - 1) if l + Hd - 1 > 0 else 0
        cenH = np.floor(wl2 + np.arange(0, l + Hd) * b) - wl2
        for i_ in cenH:
            for j_ in cenW:
                if wl == 0:
                    continue
                regions.append([j_, i_, wl, wl])
    regions = np.asarray(regions, dtype=np.int64)
    over = np.maximum(regions[:, 0] + regions[:, 2] - W, 0)
    regions[:, 0] -= over
    over = np.maximum(regions[:, 1] + regions[:, 3] - H, 0)
    regions[:, 1] -= over
    return regions


def _round_half_away(x: float) -> int:
    return int(np.sign(x) * np.floor(abs(x) + 0.5))


def reference_descriptor(
    trunk: torch.nn.Module,
    image_bgr: np.ndarray,
    pca_mean: np.ndarray | None,
    pca_components: np.ndarray | None,
    attention: dict[str, torch.Tensor] | None,
    variant: str = "context",
    L: int = 5,
    mean=(103.939, 116.779, 123.68),
    std=(1.0, 1.0, 1.0),
    rgb: bool = False,
    stride: int = 32,
) -> np.ndarray:
    """Descriptor of one resized BGR uint8 image ``(H, W, 3)`` the released code's way.

    ``attention`` holds ``conv_att_1.weight (64, in, 1)``, ``conv_att_1.bias``,
    ``conv_att_2.weight (1, 64, 1)``, ``conv_att_2.bias``.
    """
    img = image_bgr.astype(np.float32)
    if rgb:
        img = img[:, :, ::-1]
    img = (img - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    x = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))[None]
    with torch.no_grad():
        f = trunk(x)[0]
    C, fh, fw = f.shape
    H, W = image_bgr.shape[:2]
    regions = reference_regions(H, W, L)
    gmean = f.mean(dim=(1, 2))
    vecs, weights = [], []
    for x0, y0, s, _ in regions:
        x1, y1, x2, y2 = x0, y0, x0 + s - 1, y0 + s - 1
        cx1, cy1 = _round_half_away(x1 / stride), _round_half_away(y1 / stride)
        cx2, cy2 = _round_half_away(x2 / stride), _round_half_away(y2 / stride)
        ew, eh = max(cx2 - cx1 + 1, 1), max(cy2 - cy1 + 1, 1)
        cell = f[:, max(cy1, 0) : min(cy1 + eh, fh), max(cx1, 0) : min(cx1 + ew, fw)]
        r = cell.amax(dim=(1, 2)).double().numpy()
        m = cell.mean(dim=(1, 2))
        if pca_components is not None:
            v = (r + pca_mean.astype(np.float64)) @ pca_components.astype(np.float64).T
        else:
            v = r
        v = v / v.max()
        v = v / (np.linalg.norm(v) + 1e-8)
        vecs.append(v)
        if variant == "none":
            weights.append(1.0)
        else:
            k = torch.cat([m, gmean]) if variant == "context" else m
            k = k.double()
            w1 = attention["conv_att_1.weight"][:, :, 0].double()
            h = torch.tanh(w1 @ k + attention["conv_att_1.bias"].double())
            o = attention["conv_att_2.weight"][:, :, 0].double() @ h + attention["conv_att_2.bias"].double()
            weights.append(float(torch.nn.functional.softplus(o)[0]))
    g = (np.asarray(weights)[:, None] * np.stack(vecs)).sum(0) / len(vecs)
    g = g / g.max()
    return (g / (np.linalg.norm(g) + 1e-8)).astype(np.float32)
