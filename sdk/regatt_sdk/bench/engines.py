"""Engines and the timing protocol shared by all of them.

An engine gives two callables on a prepared batch ``(1, H, W, 3)`` uint8: the full encoder and
(optionally) the backbone alone. :func:`measure` times them the same way for every engine:
first call, warm-up, then ``runs`` paired calls (full and backbone alternating, in ABBA order, so
load from other processes hits both alike), with the process's peak resident memory recorded
for the full encoder's phase.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..engines.ort import OrtEngine, choose_providers, import_ort
from .machine import peak_rss_mb, reset_peak_rss, rss_mb
from .stats import Timing, summarize

Call = Callable[[np.ndarray], object]
#: engine name -> the ``device`` argument of :class:`regatt_sdk.engines.ort.OrtEngine`
ORT_DEVICES: dict[str, str] = {"ort-cpu": "cpu", "ort-cuda": "cuda", "ort-trt": "tensorrt"}
#: engine name -> the onnxruntime provider it needs
ORT_PROVIDERS: dict[str, str] = {
    "ort-cpu": "CPUExecutionProvider",
    "ort-cuda": "CUDAExecutionProvider",
    "ort-trt": "TensorrtExecutionProvider",
}
EAGER = "torch-eager"
ENGINES: tuple[str, ...] = (EAGER, "ort-cpu", "ort-cuda", "ort-trt")


def available_ort_engines() -> list[str]:
    """The onnxruntime engines this build can run."""
    providers = import_ort().get_available_providers()
    return [name for name, prov in ORT_PROVIDERS.items() if prov in providers]


@dataclass
class Opened:
    """An engine ready to run one variant."""

    full: Call
    backbone: Call | None
    setup_s: float | None  # session creation (None for eager: the module is already built)
    providers: list[str] = field(default_factory=list)


@dataclass
class Measurement:
    """What :func:`measure` found for one engine and one variant."""

    setup_s: float | None
    first_call_ms: float
    backbone_first_call_ms: float | None
    full: Timing
    backbone: Timing | None
    head_ms: float | None  # median over runs of (full - backbone), paired
    rss_before_mb: float | None
    peak_rss_mb: float | None
    peak_reset: bool
    providers: list[str]


def open_ort_backbone(engine: str, backbone_path: Path | None, threads: int) -> Call | None:
    """A session on the backbone-only graph (None without one)."""
    if backbone_path is None:
        return None
    eng = OrtEngine(backbone_path, ORT_DEVICES[engine], threads)
    return lambda image: eng.run(image)


def open_ort(engine: str, model_path: Path, threads: int) -> Opened:
    """The onnxruntime engine on the full encoder, timed from file to ready."""
    choose_providers(ORT_DEVICES[engine])  # fail early on an unknown device
    start = time.perf_counter()
    eng = OrtEngine(model_path, ORT_DEVICES[engine], threads)
    setup = time.perf_counter() - start
    out = [eng.output_names[0]]
    return Opened(lambda image: eng.run(image, out), None, setup, eng.providers)


def _once(fn: Call, image: np.ndarray) -> float:
    start = time.perf_counter()
    fn(image)
    return time.perf_counter() - start


def measure(
    open_full: Callable[[], Opened],
    backbone: Call | None,
    image: np.ndarray,
    warmup: int,
    runs: int,
    tick: Callable[[str], None],
) -> Measurement:
    """Time one engine on one variant (see the module docstring)."""
    bb_first = _once(backbone, image) * 1000.0 if backbone is not None else None
    before = rss_mb()
    reset = reset_peak_rss()
    opened = open_full()
    first = _once(opened.full, image) * 1000.0
    tick("first call")
    for _ in range(warmup):
        opened.full(image)
        if backbone is not None:
            backbone(image)
        tick("warm-up")
    full_s: list[float] = []
    bb_s: list[float] = []
    for i in range(runs):
        if backbone is None:
            full_s.append(_once(opened.full, image))
        elif i % 2 == 0:
            full_s.append(_once(opened.full, image))
            bb_s.append(_once(backbone, image))
        else:
            bb_s.append(_once(backbone, image))
            full_s.append(_once(opened.full, image))
        tick("timed run")
    peak = peak_rss_mb()
    head = float(np.median(np.subtract(full_s, bb_s))) * 1000.0 if bb_s else None
    return Measurement(
        setup_s=opened.setup_s,
        first_call_ms=first,
        backbone_first_call_ms=bb_first,
        full=summarize(full_s),
        backbone=summarize(bb_s) if bb_s else None,
        head_ms=head,
        rss_before_mb=before,
        peak_rss_mb=peak,
        peak_reset=reset,
        providers=opened.providers,
    )
