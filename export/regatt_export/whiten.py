"""``regatt whiten``: learn the per-region PCA whitening from a folder of photos.

Regional max vectors ``r (M, C)`` are pooled exactly as at inference (each photo resized so
that its longest side is ``S``, the frozen backbone, the encoder's own R-MAC grid and pooling).
Then, with ``mu`` their mean and ``Sigma = U diag(lam) U^T`` their covariance:

* shrinkage ``s`` pulls the eigenvalues towards their mean: ``lam' = (1 - s) lam + s mean(lam)``
  (stabilises the small eigenvalues when there are few photos),
* power ``p`` scales each direction by ``lam'^-p`` (0.5 = full whitening, 0 = plain PCA
  rotation; values below 0.5 whiten partially),
* the ``D`` leading directions are kept.

Inference computes ``v = (r + mean) @ components.T``, so the file stores ``mean = -mu`` and
``components = diag(lam'^-p) U[:, :D]^T`` of shape ``(D, C)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .backbones import build_backbone, get_spec
from .datasets import DataError, Item, list_images
from .encoder import RegionalAttentionEncoder
from .featcache import FeatureCache, backbone_features, cache_key, pool_regions, weights_fact
from .head import Attention


@dataclass(frozen=True)
class WhitenConfig:
    """A whitening run: data folder, output ``.npz``, backbone, S, L, D, shrinkage, power."""

    data: str
    output: str
    backbone: str = "efficientnet-lite0"
    weights: str | None = None
    max_side: int = 384
    levels: int = 5
    dim: int | None = None
    shrinkage: float = 0.0
    power: float = 0.5
    cache_dir: str | None = None
    threads: int = 1
    seed: int = 0  # only matters for random backbone weights (as in ``build_encoder``)


def full_image_cache(
    encoder: RegionalAttentionEncoder,
    backbone: str,
    weights: str | None,
    max_side: int,
    cache_dir: str | None,
    dtype: str = "float32",
    seed: int = 0,
) -> FeatureCache:
    """Feature maps of whole photos resized to longest side ``max_side`` (the SDK's ``prepare``)."""
    from regatt_sdk.imageio import read_image
    from regatt_sdk.preprocess import prepare

    def producer(item: Item, view: int) -> np.ndarray:
        return prepare(read_image(item.path), max_side)

    facts = {"backbone": backbone, "weights": weights_fact(weights), "max_side": max_side, "kind": "full-image", "dtype": dtype}
    if weights == "random":
        facts["seed"] = seed
    key = cache_key(**facts)
    return FeatureCache(cache_dir, key, producer, backbone_features(encoder), dtype)


def regional_vectors(
    encoder: RegionalAttentionEncoder, cache: FeatureCache, items: list[Item], progress: Callable[[int, int], None] | None = None
) -> np.ndarray:
    """Stacked regional max vectors ``(M, C)`` float64 of the real regions of every photo."""
    rows = []
    with torch.no_grad():
        for i, item in enumerate(items):
            fmap, (h, w) = cache.get_sized(item, 0)
            rmax, _, _ = pool_regions(encoder, torch.from_numpy(fmap)[None], h, w, with_mean=False)
            rows.append(rmax[0].double().numpy())
            if progress is not None:
                progress(i + 1, len(items))
    return np.concatenate(rows)


def learn_whitening(
    vectors: np.ndarray, dim: int | None = None, shrinkage: float = 0.0, power: float = 0.5
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``vectors (M, C)`` -> ``(mean (C,), components (D, C), eigenvalues (C,))`` float32/64.

    ``mean`` is already negated (inference adds it). Raises :class:`DataError` on bad options.
    """
    m, c = vectors.shape
    if m < 2:
        raise DataError(f"whitening needs at least 2 regional vectors, got {m}")
    if dim is None:
        dim = c
    if not 1 <= dim <= c:
        raise DataError(f"--dim must be in 1..{c} (the backbone's channels), got {dim}")
    if not 0.0 <= shrinkage <= 1.0:
        raise DataError(f"--shrinkage must be in [0, 1], got {shrinkage}")
    if not 0.0 <= power <= 1.0:
        raise DataError(f"--power must be in [0, 1], got {power}")
    x = vectors.astype(np.float64)
    mu = x.mean(axis=0)
    xc = x - mu
    cov = xc.T @ xc / max(m - 1, 1)
    lam, u = np.linalg.eigh(cov)
    order = np.argsort(lam)[::-1]
    lam, u = np.maximum(lam[order], 0.0), u[:, order]
    # a deterministic sign per direction: the largest-magnitude coefficient is positive
    flip = np.sign(u[np.abs(u).argmax(axis=0), np.arange(c)])
    u = u * np.where(flip == 0, 1.0, flip)
    shrunk = (1.0 - shrinkage) * lam + shrinkage * lam.mean()
    floor = max(shrunk.max() * 1e-9, 1e-12)
    scale = np.power(np.maximum(shrunk, floor), -power)
    components = (scale[:dim, None] * u[:, :dim].T).astype(np.float32)
    return (-mu).astype(np.float32), components, lam


def save_whitening(path: str | Path, mean: np.ndarray, components: np.ndarray, **meta: float) -> Path:
    """Write the ``.npz`` that ``regatt export --whitening`` reads (plain arrays, no pickle)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    extra = {k: np.asarray(v, dtype=np.float64) for k, v in meta.items()}
    with open(p, "wb") as fh:
        np.savez(fh, mean=mean, components=components, **extra)
    return p


def whiten(cfg: WhitenConfig, log: Callable[[str], None] = print, progress=None) -> dict:
    """Learn and write the whitening of ``cfg``; returns a summary (counts, energy kept)."""
    torch.set_num_threads(cfg.threads)
    spec = get_spec(cfg.backbone)
    if cfg.dim is not None and not 1 <= cfg.dim <= spec.channels:
        raise DataError(f"--dim must be in 1..{spec.channels} for {cfg.backbone}, got {cfg.dim}")
    items = list_images(cfg.data)
    torch.manual_seed(cfg.seed)
    encoder = RegionalAttentionEncoder(build_backbone(cfg.backbone, cfg.weights), spec, Attention(spec.channels, "none"), None, cfg.levels).eval()
    cache = full_image_cache(encoder, cfg.backbone, cfg.weights, cfg.max_side, cfg.cache_dir, seed=cfg.seed)
    vectors = regional_vectors(encoder, cache, items, progress)
    mean, components, lam = learn_whitening(vectors, cfg.dim, cfg.shrinkage, cfg.power)
    save_whitening(cfg.output, mean, components, shrinkage=cfg.shrinkage, power=cfg.power, max_side=cfg.max_side, levels=cfg.levels, images=len(items), vectors=len(vectors))
    kept = float(lam[: components.shape[0]].sum() / max(lam.sum(), 1e-30))
    summary = {
        "images": len(items),
        "vectors": int(vectors.shape[0]),
        "channels": spec.channels,
        "dim": int(components.shape[0]),
        "variance_kept": kept,
        "computed": cache.stats.computed,
        "loaded": cache.stats.loaded,
        "output": str(cfg.output),
    }
    log(
        f"whitening from {len(items)} photos ({vectors.shape[0]} regional vectors, {spec.channels}-d) -> "
        f"{components.shape[0]}-d, {100 * kept:.1f}% of the variance kept; wrote {cfg.output}"
    )
    return summary
