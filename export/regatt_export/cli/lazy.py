"""Lazy imports of the torch side, with the extra to install named when it is missing."""

from __future__ import annotations

import importlib

from regatt_sdk.errors import MissingExtraError


def export_side(module: str, what: str):
    """Import ``regatt_export.<module>``; missing torch/onnx -> a clear "install" message."""
    try:
        return importlib.import_module(f"regatt_export.{module}")
    except ModuleNotFoundError as exc:
        missing = (exc.name or "torch").split(".")[0]
        if missing in ("torch", "torchvision", "onnx", "onnxscript", "timm", "regatt_export"):
            raise MissingExtraError(missing, "export", what) from None
        raise
