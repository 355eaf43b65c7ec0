"""Extension points filled by other packages through entry points, so the runtime never imports
them: ``regatt.commands`` (``name = "module:register"``, each ``register(app)`` adds CLI
commands; the export package adds ``export``, ``train`` and ``whiten`` this way) and
``regatt.providers`` (``name = "module"``: named capabilities, e.g. ``bench_models``, the
PyTorch model builder the bench uses when no model file is given)."""

from __future__ import annotations

import sys
from importlib.metadata import EntryPoint, entry_points
from types import ModuleType
from typing import Any, Callable

COMMANDS = "regatt.commands"
PROVIDERS = "regatt.providers"
#: modules whose absence means "the export extra is not installed"
EXPORT_MODULES = ("torch", "torchvision", "onnx", "onnxscript", "timm", "regatt_export")


def _group(group: str) -> list[EntryPoint]:
    return sorted(entry_points(group=group), key=lambda ep: ep.name)


def command_registrars() -> list[tuple[str, Callable[[Any], None]]]:
    """``(name, register)`` for every installed ``regatt.commands`` entry point, by name.

    One that cannot be imported is reported on stderr and left out (the other commands work).
    """
    out = []
    for ep in _group(COMMANDS):
        try:
            out.append((ep.name, ep.load()))
        except ImportError as exc:
            print(f"regatt: commands '{ep.name}' ({ep.value}) unavailable: {exc}", file=sys.stderr)
    return out


def provider(name: str) -> ModuleType | None:
    """The ``regatt.providers`` entry point ``name``, loaded; None when not installed or when
    it needs a missing export-side dependency (torch...)."""
    for ep in _group(PROVIDERS):
        if ep.name == name:
            try:
                return ep.load()
            except ModuleNotFoundError as exc:
                if (exc.name or "").split(".")[0] in EXPORT_MODULES:
                    return None
                raise
    return None
