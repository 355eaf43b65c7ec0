"""The options shared by the commands that run a frozen backbone in PyTorch (``regatt train``,
``regatt whiten``; ``--levels`` also ``regatt export``), defined once, and the feature cache they
point at. Torch-free: imported when the CLI registers its commands."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer


def backbone_option():
    return typer.Option("efficientnet-lite0", "--backbone", help="Backbone from the registry.")


def weights_option():
    return typer.Option(None, "--weights", help="Backbone state-dict file, or 'random'.")


def levels_option():
    return typer.Option(5, "--levels", "-L", help="R-MAC levels.")


def cache_option():
    return typer.Option(None, "--cache", help="Feature cache folder (default ~/.cache/regatt/features).")


def no_cache_option():
    return typer.Option(False, "--no-cache", help="Keep no feature maps on disk.")


def threads_option():
    return typer.Option(1, "--threads", help="CPU threads for PyTorch.")


def progress_option():
    return typer.Option(True, "--progress/--no-progress")


def default_cache() -> Path:
    """``$XDG_CACHE_HOME/regatt/features`` (default ``~/.cache/regatt/features``)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "regatt" / "features"


def feature_cache_dir(cache: Optional[Path], no_cache: bool) -> Optional[str]:
    """The feature cache folder for ``--cache`` / ``--no-cache`` (None: keep nothing on disk)."""
    return None if no_cache else str(cache or default_cache())
