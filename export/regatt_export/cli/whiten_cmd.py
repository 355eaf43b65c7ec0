"""``regatt whiten``: learn the regional whitening (PCA, or supervised ``lw`` from landmark
folders) on a frozen backbone; the feature maps are cached like ``regatt train``'s."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from regatt_sdk.errors import RegattError

from . import backbone_opts as opts
from .lazy import export_side
from .train_cmd import _Bar


def register(app: typer.Typer) -> None:
    app.command("whiten")(whiten)


def whiten(
    data: Path = typer.Argument(
        ...,
        help="Folder of photos (searched recursively); for --method lw or --landmarks, one sub-folder per landmark.",
    ),
    output: Path = typer.Option(Path("whitening.npz"), "-o", "--output", help="Whitening file to write."),
    method: str = typer.Option(
        "pca",
        "--method",
        help="pca (unsupervised, any photos) | lw (learned whitening from same-landmark pairs, Radenovic et al.)",
    ),
    landmarks: Optional[str] = typer.Option(
        None,
        "--landmarks",
        help="Only these landmark folders: train | val | test (the landmark-disjoint split) or NAME,NAME.",
    ),
    backbone: str = opts.backbone_option(),
    weights: Optional[str] = opts.weights_option(),
    max_side: int = typer.Option(
        384, "--max-side", "-S", help="Longest side the photos are resized to (use the S you will encode at)."
    ),
    levels: int = opts.levels_option(),
    dim: Optional[int] = typer.Option(None, "--dim", help="Output dimensionality (default: the backbone's channels)."),
    shrinkage: float = typer.Option(
        0.0, "--shrinkage", help="Pull eigenvalues towards their mean, 0..1 (stabilises few photos)."
    ),
    power: float = typer.Option(
        0.5, "--power", help="pca only: eigenvalue power, 0.5 full whitening, 0 plain PCA rotation."
    ),
    cache: Optional[Path] = opts.cache_option(),
    no_cache: bool = opts.no_cache_option(),
    threads: int = opts.threads_option(),
    progress: bool = opts.progress_option(),
) -> None:
    """Learn the per-region whitening from photos; write the ``.npz`` for
    ``regatt export --whitening``."""
    mod = export_side("whiten", "regatt whiten")
    datasets = export_side("datasets", "regatt whiten")
    weights_mod = export_side("weights", "regatt whiten")
    cfg = mod.WhitenConfig(
        data=str(data),
        output=str(output),
        backbone=backbone,
        weights=weights,
        max_side=max_side,
        levels=levels,
        dim=dim,
        shrinkage=shrinkage,
        power=power,
        cache_dir=opts.feature_cache_dir(cache, no_cache),
        threads=threads,
        method=method,
        landmarks=landmarks,
    )
    try:
        with _Bar(progress) as bar:
            mod.whiten(cfg, log=bar.log, progress=lambda d, t: bar("regional vectors", d, t))
    except (datasets.DataError, weights_mod.WeightsError, ValueError) as exc:
        raise RegattError(str(exc)) from None
