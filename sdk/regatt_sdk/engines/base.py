"""The engine interface: what the encoder (and the bench, and the export-side checks) need
from an inference runtime, and nothing more."""

from __future__ import annotations

from typing import Any, Protocol, Sequence

import numpy as np

from .device import Device


class Engine(Protocol):
    """A loaded model on one device.

    ``run(feed)`` takes one prepared batch for the model's single input (for regatt encoders
    ``(N, H, W, 3)`` uint8 or float32, C-contiguous) and returns the named outputs
    (``{"descriptor": (N, D) float32, ...}``); ``outputs`` picks which (default: all).
    """

    #: engine name, e.g. ``"onnxruntime"``
    name: str
    #: the device it was asked for
    device: Device

    @property
    def input_name(self) -> str: ...

    @property
    def output_names(self) -> tuple[str, ...]: ...

    @property
    def providers(self) -> list[str]:
        """What actually runs the graph, first choice first (e.g. ``["CUDAExecutionProvider",
        "CPUExecutionProvider"]``)."""
        ...

    def run(self, feed: np.ndarray, outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]: ...

    def describe(self) -> dict[str, Any]:
        """JSON-ready facts: ``engine``, ``device``, ``providers``, ``version``, ``threads``..."""
        ...


class NamedIO:
    """The input/output-name part of :class:`Engine` that every engine keeps the same way:
    subclasses set ``_input`` (the single input's name) and ``_outputs`` (output names)."""

    _input: str
    _outputs: tuple[str, ...]

    @property
    def input_name(self) -> str:
        return self._input

    @property
    def output_names(self) -> tuple[str, ...]:
        return self._outputs
