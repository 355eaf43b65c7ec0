"""``regatt train``: learn the regional attention (``regatt whiten`` is in ``whiten_cmd``).

It runs the frozen backbone in PyTorch (the ``export`` extra) and caches its feature maps, so a
second run over the same photos costs only the small head.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from regatt_sdk.errors import RegattError

from . import backbone_opts as opts
from .lazy import export_side


def register(app: typer.Typer) -> None:
    app.command("train")(train)


class _Bar:
    """A rich progress bar driven by ``(label, done, total)`` calls."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.progress = None
        self.tasks: dict[str, int] = {}

    def __enter__(self):
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                transient=True,
            )
            self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        if self.progress is not None:
            self.progress.__exit__(*exc)

    def __call__(self, label: str, done: int, total: int) -> None:
        if self.progress is None:
            return
        if label not in self.tasks:
            self.tasks[label] = self.progress.add_task(label, total=total)
        self.progress.update(self.tasks[label], completed=done)

    def log(self, line: str) -> None:
        if self.progress is not None:
            self.progress.console.print(line, highlight=False)
        else:
            typer.echo(line)


def train(
    data: list[Path] = typer.Argument(
        ...,
        help="Photos: ImageFolder trees or files named by WordNet id (n01440764_x.JPEG), several folders allowed; any folder for --objective contrastive; a <landmark>/<photo> tree for --objective landmark.",
    ),
    output: Path = typer.Option(
        Path("attention.pth"), "-o", "--output", help="Attention weights file to write (release format)."
    ),
    backbone: str = opts.backbone_option(),
    weights: Optional[str] = opts.weights_option(),
    attention: str = typer.Option("context", "--attention", help="context | regional"),
    objective: str = typer.Option(
        "classify",
        "--objective",
        help="classify (the paper: frozen ImageNet fc, labels) | contrastive (label-free) | landmark (retrieval on landmark folders).",
    ),
    crop: int = typer.Option(224, "--crop", help="Side of the square training crop (the paper: 800)."),
    short_min: int = typer.Option(
        240, "--short-min", help="Shorter side is resized to a random value in [short-min, short-max] (the paper: 850)."
    ),
    short_max: int = typer.Option(288, "--short-max", help="(the paper: 859)"),
    views: int = typer.Option(2, "--views", help="Views per photo, computed once and cached (view 0 = centre crop)."),
    levels: int = opts.levels_option(),
    epochs: int = typer.Option(10, "--epochs"),
    lr: float = typer.Option(1e-3, "--lr"),
    momentum: float = typer.Option(0.9, "--momentum"),
    weight_decay: float = typer.Option(5e-5, "--weight-decay"),
    batch: int = typer.Option(4, "--batch", help="Photos per step."),
    accumulate: int = typer.Option(
        4, "--accumulate", help="Steps per optimizer update (effective batch = batch x accumulate)."
    ),
    val_fraction: float = typer.Option(
        0.1, "--val-fraction", help="Held-out share of the photos for validation / early stopping."
    ),
    patience: int = typer.Option(
        3, "--patience", help="Stop after this many epochs without a better validation score."
    ),
    uniform_prior: float = typer.Option(
        0.0, "--uniform-prior", help="Weight of KL(weights || uniform) (0: the paper)."
    ),
    temperature: float = typer.Option(0.1, "--temperature", help="Contrastive softmax temperature."),
    whitening: Optional[Path] = typer.Option(
        None, "--whitening", help="Contrastive only: whitening file used in the descriptor."
    ),
    seed: int = typer.Option(0, "--seed"),
    optimizer: str = typer.Option("sgd", "--optimizer", help="sgd | adam"),
    max_side: int = typer.Option(
        512, "--max-side", "-S", help="Landmark objective: longest side of the photos (the S you encode at)."
    ),
    backgrounds: Optional[Path] = typer.Option(
        None,
        "--backgrounds",
        help="Landmark objective: photos to paste landmarks into for the clutter views (even positions train, odd val).",
    ),
    clutter_min: float = typer.Option(
        0.35, "--clutter-min", help="Landmark objective: smallest pasted size, share of the background that fits."
    ),
    clutter_max: float = typer.Option(0.65, "--clutter-max"),
    per_landmark: int = typer.Option(
        4, "--per-landmark", help="Landmark objective: photos of one landmark per batch (K of P x K)."
    ),
    train_landmarks: Optional[str] = typer.Option(
        None,
        "--train-landmarks",
        help="Landmark objective: comma-separated folders to train on (default: the 'train' part of the landmark split).",
    ),
    val_landmarks: Optional[str] = typer.Option(
        None,
        "--val-landmarks",
        help="Landmark objective: comma-separated folders to validate on (default: the 'val' part; '' for none).",
    ),
    cache: Optional[Path] = opts.cache_option(),
    no_cache: bool = opts.no_cache_option(),
    checkpoint_dir: Optional[Path] = typer.Option(None, "--checkpoint-dir", help="Default: <output>.ckpt/"),
    resume: bool = typer.Option(
        False, "--resume", help="Continue from the checkpoint of an interrupted run with the same settings."
    ),
    threads: int = opts.threads_option(),
    progress: bool = opts.progress_option(),
) -> None:
    """Train the regional attention on a frozen backbone; write release-format weights for
    ``regatt export --attention-weights``."""
    mod = export_side("train", "regatt train")
    datasets = export_side("datasets", "regatt train")
    weights_mod = export_side("weights", "regatt train")
    cfg = mod.TrainConfig(
        data=str(data[0]),
        extra_data=tuple(str(d) for d in data[1:]),
        output=str(output),
        backbone=backbone,
        weights=weights,
        variant=attention,
        objective=objective,
        levels=levels,
        crop=crop,
        short_min=short_min,
        short_max=short_max,
        views=views,
        epochs=epochs,
        lr=lr,
        momentum=momentum,
        weight_decay=weight_decay,
        batch=batch,
        accumulate=accumulate,
        val_fraction=val_fraction,
        patience=patience,
        uniform_prior=uniform_prior,
        temperature=temperature,
        whitening=str(whitening) if whitening else None,
        seed=seed,
        cache_dir=opts.feature_cache_dir(cache, no_cache),
        checkpoint_dir=str(checkpoint_dir) if checkpoint_dir else None,
        threads=threads,
        optimizer=optimizer,
        max_side=max_side,
        backgrounds=str(backgrounds) if backgrounds else None,
        clutter_min=clutter_min,
        clutter_max=clutter_max,
        per_landmark=per_landmark,
        train_landmarks=_names(train_landmarks),
        val_landmarks=_names(val_landmarks),
    )
    try:
        with _Bar(progress) as bar:
            result = mod.train(cfg, resume=resume, log=bar.log, progress=bar)
    except (datasets.DataError, weights_mod.WeightsError, ValueError) as exc:
        raise RegattError(str(exc)) from None
    typer.echo(
        f"wrote {result.output} (epoch {result.best_epoch}, {result.metric} {result.best_metric:.4f}; "
        f"uniform weights {result.baseline_metric:.4f}); features {result.feature_s:.1f} s "
        f"({result.views_computed} computed, {result.views_loaded} cached), {result.epoch_head_s:.2f} s per epoch after that"
    )


def _names(text: Optional[str]) -> Optional[tuple]:
    """``"a,b"`` -> ``("a", "b")``; ``""`` -> ``()``; None stays None."""
    if text is None:
        return None
    return tuple(t.strip() for t in text.split(",") if t.strip())
