"""The OpenVINO engine: reads the same ``.onnx`` file (model card included) with OpenVINO's own
ONNX frontend and runs it on an OpenVINO device (``openvino`` = ``openvino:CPU``).

``openvino`` is imported only when this module is (``pip install 'regatt[openvino]'``), never by
``import regatt_sdk``, and never together with torch.

Shapes: regatt graphs take any ``(N, H, W, 3)``. ``shapes="dynamic"`` compiles the graph once
with dynamic dimensions (no cost per new shape, but slower kernels: 1.1-1.8x the static time
here); ``shapes="static"`` compiles one graph per input shape (the fastest kernels, but about
1 s of compile per new shape on this 2-core machine); ``shapes="auto"`` (default) runs a shape
seen for the first time on the dynamic graph and compiles a static one when the shape comes
again, until ``cache_size`` shapes have static graphs; every other shape then runs on the
dynamic graph (at most ``cache_size + 1`` compiles in all: a collection cycling through many
sizes, such as photos of mixed orientations in batches, measured 12 img/s with eviction against
the onnxruntime engine's 57). ``shapes="static"`` keeps a least-recently-used cache of
``cache_size`` graphs instead.
``benchmarks/results/engines.md`` and ``engine_procs.md`` have the engine measurements;
``tests/test_openvino.py`` tests the shape policy.

Precision: ``fp32`` sets ``INFERENCE_PRECISION_HINT=f32`` explicitly (OpenVINO otherwise runs
bf16 on CPUs that have it, which is not exact); ``bf16`` asks for bf16 (opt-in, gated by cosine,
see :mod:`.gate`).
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import ModelError
from ..optional import require
from .base import NamedIO
from .device import Device, parse_device
from .ort import cpu_count

#: regatt precision name -> OpenVINO ``INFERENCE_PRECISION_HINT``
PRECISIONS: dict[str, str] = {"fp32": "f32", "bf16": "bf16"}
SHAPE_MODES = ("auto", "dynamic", "static")
DEFAULT_SHAPES = "auto"
#: how many distinct shapes ``shapes="auto"`` remembers having seen
SEEN_LIMIT = 4096
DEFAULT_CACHE = 8


def import_openvino():
    """``openvino`` or a :class:`MissingExtraError` naming ``pip install 'regatt[openvino]'``."""
    return require("openvino", extra="openvino", what="the OpenVINO engine", package="openvino")


def available() -> bool:
    """True when the ``openvino`` package can be imported (without importing it twice)."""
    import importlib.util

    return importlib.util.find_spec("openvino") is not None


def cpu_supports(precision: str, target: str = "CPU") -> bool:
    """Whether OpenVINO reports ``precision`` (``fp32``/``bf16``/``int8``) for ``target``."""
    ov = import_openvino()
    caps = ov.Core().get_property(target, "OPTIMIZATION_CAPABILITIES")
    return {"fp32": "FP32", "bf16": "BF16", "int8": "INT8"}[precision] in caps


class OpenVinoEngine(NamedIO):
    """An OpenVINO compiled model behind the :class:`~regatt_sdk.engines.base.Engine` interface.

    ``OpenVinoEngine(model, device="openvino", threads=None, precision="fp32", shapes="auto",
    cache_size=8)``; ``run(feed (N, H, W, 3)) -> {name: array}``.
    """

    name = "openvino"

    def __init__(
        self,
        model: str | Path,
        device: str | Device = "openvino",
        threads: int | None = None,
        *,
        precision: str = "fp32",
        shapes: str = DEFAULT_SHAPES,
        cache_size: int = DEFAULT_CACHE,
    ):
        ov = import_openvino()
        self.device = parse_device(device)
        if self.device.engine != "openvino":
            self.device = Device("openvino", target="CPU")
        self.target = self.device.target or "CPU"
        if precision not in PRECISIONS:
            raise ModelError(f"precision {precision!r}: the OpenVINO engine runs {sorted(PRECISIONS)}")
        if shapes not in SHAPE_MODES:
            raise ModelError(f"shapes {shapes!r}: use one of {SHAPE_MODES}")
        self.precision = precision
        self.shapes = shapes
        self.cache_size = max(1, int(cache_size))
        self.threads = threads or cpu_count()
        path = Path(model)
        if not path.is_file():
            raise ModelError(f"{path}: model file not found (make one with  regatt export -o {path})")
        self._core = ov.Core()
        try:
            self._model = self._core.read_model(str(path))
        except Exception as exc:
            raise ModelError(
                f"{path}: OpenVINO cannot read this ONNX model ({str(exc).splitlines()[0][:200]})"
            ) from None
        if len(self._model.inputs) != 1:
            raise ModelError(f"{path}: expected one input, the model has {len(self._model.inputs)}")
        self._input = self._model.inputs[0].get_any_name()
        self._outputs = tuple(o.get_any_name() for o in self._model.outputs)
        self.config = {
            "INFERENCE_PRECISION_HINT": PRECISIONS[precision],
            "INFERENCE_NUM_THREADS": int(self.threads),
            "PERFORMANCE_HINT": "LATENCY",
            "NUM_STREAMS": 1,
        }
        self._compiled: OrderedDict[tuple[int, ...] | None, Any] = OrderedDict()
        self._dynamic: Any = None
        self._seen: OrderedDict[tuple[int, ...], None] = OrderedDict()
        self.compiles = 0

    # -- compiled graphs, one per shape (static) or one in all (dynamic) ---------------------
    def _request(self, shape: tuple[int, ...]):
        key: tuple[int, ...] | None = tuple(shape)
        if self.shapes == "dynamic":
            key = None
        elif self.shapes == "auto" and key not in self._compiled:
            # a shape earns a static graph when it comes again and the cache has room; once the
            # cache is full, other shapes stay on the dynamic graph: no eviction, so a collection
            # cycling through more sizes than the cache never compiles again and again
            if key not in self._seen or len(self._compiled) >= self.cache_size:
                self._seen[key] = None
                while len(self._seen) > SEEN_LIMIT:
                    self._seen.popitem(last=False)
                key = None
        if key is None and self._dynamic is not None:
            return self._dynamic
        hit = self._compiled.get(key)
        if hit is not None:
            self._compiled.move_to_end(key)
            return hit
        model = self._model
        if key is not None:
            model = self._model.clone()
            model.reshape({self._input: list(key)})
        try:
            compiled = self._core.compile_model(model, self.target, self.config)
        except Exception as exc:
            raise ModelError(
                f"OpenVINO could not compile the model for {self.target} ({str(exc).splitlines()[0][:200]})"
            ) from None
        self.compiles += 1
        request = compiled.create_infer_request()
        if key is None:
            self._dynamic = request
            return request
        self._compiled[key] = request
        while len(self._compiled) > self.cache_size:
            self._compiled.popitem(last=False)
        return request

    @property
    def providers(self) -> list[str]:
        return [f"openvino:{self.target}"]

    def run(self, feed: np.ndarray, outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """``{name: array}`` for ``outputs`` (default all) on the one-input ``feed``."""
        names = list(outputs) if outputs is not None else list(self._outputs)
        request = self._request(feed.shape)
        request.infer({0: np.ascontiguousarray(feed)})
        result: dict[str, np.ndarray] = {}
        for name in names:
            if name not in self._outputs:
                raise ModelError(f"the model has no output {name!r} (outputs: {list(self._outputs)})")
            result[name] = np.array(request.get_tensor(name).data, copy=True)
        return result

    def describe(self) -> dict[str, Any]:
        return {
            "engine": self.name,
            "device": str(self.device),
            "providers": self.providers,
            "version": import_openvino().__version__,
            "threads": self.threads,
            "precision": self.precision,
            "shapes": self.shapes,
            "cache_size": self.cache_size,
            "compiled_shapes": len(self._compiled),
        }

    def __repr__(self) -> str:
        return f"OpenVinoEngine(target={self.target}, precision={self.precision}, shapes={self.shapes})"


def open_engine(
    model: str | Path, device: str | Device = "openvino", threads: int | None = None, *, precision: str = "fp32"
) -> OpenVinoEngine:
    """The engine-module entry point used by :func:`regatt_sdk.engines.open_engine`."""
    return OpenVinoEngine(model, device, threads, precision=precision)
