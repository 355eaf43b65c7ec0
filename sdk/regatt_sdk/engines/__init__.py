"""Inference engines behind one small interface (:class:`~.base.Engine`).

``open_engine(model_path, device, threads)`` parses ``device`` (:func:`~.device.parse_device`)
and opens the engine that runs it: ``cpu``/``cuda[:N]``/``tensorrt[:N]``/``auto`` ->
onnxruntime (:mod:`.ort`); ``openvino[:TARGET]`` -> the ``openvino`` engine module. An engine
module is a module under this package with ``open_engine(model, device, threads) -> Engine``;
another one can be added with :func:`register_engine`.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Callable

from ..errors import ModelError
from .base import Engine
from .device import HELP as DEVICE_HELP
from .device import Device, parse_device

__all__ = ["DEVICE_HELP", "Device", "Engine", "open_engine", "parse_device", "register_engine"]

#: engine name -> module (relative to this package, or absolute) holding ``open_engine``
_MODULES: dict[str, str] = {"onnxruntime": ".ort", "openvino": ".openvino"}
_FACTORIES: dict[str, Callable[..., Engine]] = {}


def register_engine(name: str, factory: Callable[..., Engine]) -> None:
    """Make ``factory(model, device, threads) -> Engine`` the engine called ``name``."""
    _FACTORIES[name] = factory


def open_engine(model: str | Path, device: str | Device = "auto", threads: int | None = None) -> Engine:
    """Load ``model`` on ``device`` with the engine that runs it (see the module docstring)."""
    dev = parse_device(device)
    factory = _FACTORIES.get(dev.engine)
    if factory is None:
        module = _MODULES.get(dev.engine)
        try:
            mod = importlib.import_module(module, __name__) if module else None
        except ModuleNotFoundError as exc:
            if not str(exc.name or "").startswith(__name__):
                raise
            mod = None
        if mod is None:
            raise ModelError(f"device {dev}: the {dev.engine} engine is not part of this regatt")
        factory = mod.open_engine
    return factory(model, dev, threads)
