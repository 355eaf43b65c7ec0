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

``method="lw"`` is the supervised learned whitening of Radenovic et al. (TPAMI 2018) on a
``<landmark>/<photo>`` tree: with ``x_i`` the mean regional max vector of photo ``i`` (the
whitening is linear, so whitening the photo's mean = the mean of its whitened regions),
``Sigma_S`` the covariance of the differences of matching pairs (two photos of one landmark; it
equals twice the pooled within-landmark covariance) and ``Sigma_D`` the covariance of all
photos' ``x_i``: whiten by ``Sigma_S^-1/2`` (shrunk like above), then rotate by the
eigenvectors of the whitened ``Sigma_D`` (largest first) and keep ``D`` of them.
``landmarks`` restricts the tree to one part of :func:`regatt_export.splits.landmark_split`
(``train`` / ``val`` / ``test``) or to named folders, for both methods (the paper's "PCA
Landmark" is ``method="pca"`` on the ``train`` landmarks).
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
    method: str = "pca"  # pca | lw
    landmarks: str | None = None  # None: every photo; train | val | test | NAME,NAME,...


METHODS = ("pca", "lw")


def landmark_items(root: str | Path, select: str | None, need_pairs: bool) -> tuple[list[Item], list[str]]:
    """Photos of the ``<landmark>/<photo>`` tree ``root`` with ``Item.label`` = landmark index,
    and the landmark names. ``select``: None (all folders), a split part or ``NAME,NAME``.
    ``need_pairs``: at least 2 landmarks and 2 photos in each (supervised whitening)."""
    from .splits import PARTS, landmark_folders, landmark_split

    root = Path(root)
    try:
        folders = landmark_folders(root)
    except (FileNotFoundError, ValueError) as exc:
        raise DataError(str(exc)) from None
    if select is None:
        names = folders
    elif select in PARTS:
        names = landmark_split(root)[select]
    else:
        names = [n.strip() for n in select.split(",") if n.strip()]
        unknown = [n for n in names if n not in folders]
        if unknown or not names:
            raise DataError(
                f"--landmarks {select!r}: no landmark folder named {', '.join(unknown) or '(empty)'} in {root}; "
                f"give train, val, test or folder names such as {', '.join(folders[:3])}"
            )
    if need_pairs and len(names) < 2:
        raise DataError(
            f"learned whitening (lw) needs photos of at least 2 landmarks, {root} gives only {', '.join(names)}: add landmark folders"
        )
    items: list[Item] = []
    for k, name in enumerate(names):
        photos = list_images(root / name)
        if need_pairs and len(photos) < 2:
            raise DataError(
                f"{root / name}: {len(photos)} photo; learned whitening (lw) needs at least 2 photos of each landmark (a matching pair)"
            )
        items += [Item(it.path, f"{name}/{it.name}", k) for it in photos]
    return items, names


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

    facts = {
        "backbone": backbone,
        "weights": weights_fact(weights),
        "max_side": max_side,
        "kind": "full-image",
        "dtype": dtype,
    }
    if weights == "random":
        facts["seed"] = seed
    key = cache_key(**facts)
    return FeatureCache(cache_dir, key, producer, backbone_features(encoder), dtype)


def regional_vectors(
    encoder: RegionalAttentionEncoder,
    cache: FeatureCache,
    items: list[Item],
    progress: Callable[[int, int], None] | None = None,
    counts: list[int] | None = None,
) -> np.ndarray:
    """Stacked regional max vectors ``(M, C)`` float64 of the real regions of every photo
    (``counts``, if given, receives each photo's number of regions)."""
    rows = []
    with torch.no_grad():
        for i, item in enumerate(items):
            fmap, (h, w) = cache.get_sized(item, 0)
            rmax, _, _ = pool_regions(encoder, torch.from_numpy(fmap)[None], h, w, with_mean=False)
            rows.append(rmax[0].double().numpy())
            if counts is not None:
                counts.append(rows[-1].shape[0])
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
    return whitening_from_moments(mu, cov, dim, shrinkage, power)


def whitening_from_moments(
    mu: np.ndarray, cov: np.ndarray, dim: int, shrinkage: float = 0.0, power: float = 0.5
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`learn_whitening` from the mean ``(C,)`` and covariance ``(C, C)`` (computed once
    when several shrinkages or powers are compared)."""
    c = cov.shape[0]
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


def _shrunk_eig(cov: np.ndarray, shrinkage: float) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (largest first, shrunk towards their mean, floored) and eigenvectors with a
    deterministic sign (largest-magnitude coefficient positive) of the symmetric ``cov``."""
    lam, u = np.linalg.eigh(cov)
    order = np.argsort(lam)[::-1]
    lam, u = np.maximum(lam[order], 0.0), u[:, order]
    flip = np.sign(u[np.abs(u).argmax(axis=0), np.arange(u.shape[1])])
    u = u * np.where(flip == 0, 1.0, flip)
    shrunk = (1.0 - shrinkage) * lam + shrinkage * lam.mean()
    return np.maximum(shrunk, max(shrunk.max() * 1e-9, 1e-12)), u


def photo_means(vectors: np.ndarray, photo: np.ndarray, n: int) -> np.ndarray:
    """Mean regional vector of each photo: ``vectors (M, C)``, ``photo (M,)`` in ``0..n-1`` ->
    ``(n, C)`` float64. Raises :class:`DataError` if a photo has no regional vector."""
    counts = np.bincount(photo, minlength=n).astype(np.float64)
    if np.any(counts == 0):
        raise DataError("every photo needs at least one regional vector")
    xi = np.zeros((n, vectors.shape[1]))
    np.add.at(xi, photo, vectors.astype(np.float64))
    return xi / counts[:, None]


def matching_pair_covariance(xi: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Lw's ``Sigma_S (C, C)``: the covariance of ``x_a - x_b`` over the matching pairs (two
    photos of one landmark) of the photo vectors ``xi (N, C)`` with landmarks ``labels (N,)``."""
    classes, inv = np.unique(np.asarray(labels), return_inverse=True)
    sizes = np.bincount(inv).astype(np.float64)
    if len(classes) < 2 or np.any(sizes < 2):
        raise DataError("learned whitening (lw) needs at least 2 landmarks with at least 2 photos each")
    cmean = np.zeros((len(classes), xi.shape[1]))
    np.add.at(cmean, inv, xi)
    cmean /= sizes[:, None]
    within = xi - cmean[inv]
    # sum over the matching pairs of one landmark of (x_a - x_b)(x_a - x_b)^T = n_k * scatter_k
    return (within * sizes[inv, None]).T @ within * 2.0 / max(float((sizes * (sizes - 1)).sum()), 1.0)


def mixture_moments(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``(C,)`` and covariance ``(C, C)`` of the union of several sets, each weighted
    equally whatever its size, from each set's ``(mean (C,), covariance (C, C))``: the mean of
    the means and the mean of the covariances plus the spread of the means about their mean."""
    mus = np.stack([np.asarray(m, dtype=np.float64) for m, _ in parts])
    mu = mus.mean(axis=0)
    d = mus - mu
    cov = np.mean([np.asarray(c, dtype=np.float64) for _, c in parts], axis=0) + d.T @ d / len(parts)
    return mu, cov


def lw_from_moments(
    mu: np.ndarray, sigma_s: np.ndarray, sigma_d: np.ndarray, dim: int, shrinkage: float = 0.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`learn_lw` from the regional mean ``mu (C,)``, the matching-pair covariance
    ``sigma_s (C, C)`` and the covariance of the photo vectors ``sigma_d (C, C)``."""
    lam_s, u_s = _shrunk_eig(sigma_s, shrinkage)
    p_w = (u_s / np.sqrt(lam_s)[None, :]).T  # (C, C): Sigma_S^-1/2 up to a rotation
    lam_d, u_d = _shrunk_eig(p_w @ sigma_d @ p_w.T, 0.0)
    components = (u_d[:, :dim].T @ p_w).astype(np.float32)
    return (-np.asarray(mu)).astype(np.float32), components, lam_d


def learn_lw(
    vectors: np.ndarray, photo: np.ndarray, labels: np.ndarray, dim: int | None = None, shrinkage: float = 0.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Supervised learned whitening (see the module docstring).

    ``vectors (M, C)`` regional max vectors, ``photo (M,)`` the photo index of each, ``labels
    (N,)`` the landmark of each photo. Returns ``(mean (C,), components (D, C), eigenvalues of
    the whitened Sigma_D (C,))``; ``mean`` negated like :func:`learn_whitening`.
    """
    m, c = vectors.shape
    dim = c if dim is None else dim
    if not 1 <= dim <= c:
        raise DataError(f"--dim must be in 1..{c} (the backbone's channels), got {dim}")
    if not 0.0 <= shrinkage <= 1.0:
        raise DataError(f"--shrinkage must be in [0, 1], got {shrinkage}")
    labels = np.asarray(labels)
    n = len(labels)
    xi = photo_means(vectors, photo, n)
    sigma_s = matching_pair_covariance(xi, labels)
    xc = xi - xi.mean(axis=0)
    sigma_d = xc.T @ xc / max(n - 1, 1)
    return lw_from_moments(vectors.astype(np.float64).mean(axis=0), sigma_s, sigma_d, dim, shrinkage)


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
    if cfg.method not in METHODS:
        raise DataError(f"--method must be one of {', '.join(METHODS)}, got {cfg.method!r}")
    if cfg.method == "lw" or cfg.landmarks is not None:
        items, names = landmark_items(cfg.data, cfg.landmarks, need_pairs=cfg.method == "lw")
    else:
        items, names = list_images(cfg.data), []
    torch.manual_seed(cfg.seed)
    encoder = RegionalAttentionEncoder(
        build_backbone(cfg.backbone, cfg.weights), spec, Attention(spec.channels, "none"), None, cfg.levels
    ).eval()
    cache = full_image_cache(encoder, cfg.backbone, cfg.weights, cfg.max_side, cfg.cache_dir, seed=cfg.seed)
    counts: list[int] = []
    vectors = regional_vectors(encoder, cache, items, progress, counts)
    if cfg.method == "lw":
        photo = np.repeat(np.arange(len(items)), counts)
        mean, components, lam = learn_lw(vectors, photo, np.array([it.label for it in items]), cfg.dim, cfg.shrinkage)
    else:
        mean, components, lam = learn_whitening(vectors, cfg.dim, cfg.shrinkage, cfg.power)
    save_whitening(
        cfg.output,
        mean,
        components,
        shrinkage=cfg.shrinkage,
        power=cfg.power,
        max_side=cfg.max_side,
        levels=cfg.levels,
        images=len(items),
        vectors=len(vectors),
        landmarks=len(names),
        supervised=float(cfg.method == "lw"),
    )
    kept = float(lam[: components.shape[0]].sum() / max(lam.sum(), 1e-30))
    summary = {
        "images": len(items),
        "method": cfg.method,
        "landmarks": names,
        "vectors": int(vectors.shape[0]),
        "channels": spec.channels,
        "dim": int(components.shape[0]),
        "variance_kept": kept,
        "computed": cache.stats.computed,
        "loaded": cache.stats.loaded,
        "output": str(cfg.output),
    }
    log(
        f"{'learned (lw) ' if cfg.method == 'lw' else ''}whitening from {len(items)} photos"
        f"{f' of {len(names)} landmarks' if names else ''} ({vectors.shape[0]} regional vectors, {spec.channels}-d) -> "
        f"{components.shape[0]}-d, {100 * kept:.1f}% of the variance kept; wrote {cfg.output}"
    )
    return summary
