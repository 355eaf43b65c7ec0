"""Which engine runs a model: ``engine="onnxruntime"|"openvino"|"auto"`` and ``precision``,
each gated (:mod:`.gate`) before it is used; ``auto`` probes the gated CPU engines and takes the
fastest, cached per model and machine.

The cache is a JSON file (``$REGATT_ENGINE_CACHE``, default ``~/.cache/regatt/engines.json``)
keyed by the model (card hash, size, mtime), the machine (CPU model and flags, engine versions),
threads and precision. Delete it to probe again.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..card import ModelCard, golden_image
from ..errors import MissingExtraError, ModelError
from .base import Engine
from .device import Device, parse_device
from .gate import GateResult, check, model_key

ENGINES = ("onnxruntime", "openvino")
CHOICES = ("auto",) + ENGINES
PRECISIONS = ("fp32", "bf16")
#: max |diff| allowed to onnxruntime on a GPU (cuDNN/TensorRT kernels are not bit-exact)
GPU_ATOL = 1e-4
PROBE_RUNS = 3


@dataclass
class EngineChoice:
    """What runs a model and why: ``engine``, ``precision``, ``reason`` (one line), the gates
    that were run and, for ``auto``, the probe's ms per image per engine."""

    engine: str
    precision: str
    reason: str
    gates: list[GateResult] = field(default_factory=list)
    probe_ms: dict[str, float] = field(default_factory=dict)
    cached: bool = False


def machine_key(threads: int) -> str:
    """CPU model + flags + engine versions + threads, hashed (the ``auto`` cache key's half)."""
    from . import ort

    model, flags = cpu_info()
    parts = [platform.machine(), model, " ".join(sorted(flags)), f"threads={threads}"]
    try:
        parts.append("ort=" + ort.import_ort().__version__)
    except (ImportError, MissingExtraError):  # no onnxruntime: that is part of the key too
        parts.append("ort=none")
    from . import openvino as ovmod

    if ovmod.available():
        from importlib.metadata import version

        try:
            parts.append("openvino=" + version("openvino"))
        except ImportError:  # PackageNotFoundError: importable but without metadata
            parts.append("openvino=unknown")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def cpu_info() -> tuple[str, set[str]]:
    """``(model name, flags)`` from /proc/cpuinfo (empty on systems without it)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "?", set()
    model, flags = "?", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and model == "?":
            model = value.strip()
        elif key == "flags" and not flags:
            flags = set(value.split())
    return model, flags


def cache_path() -> Path:
    return Path(os.environ.get("REGATT_ENGINE_CACHE", str(Path.home() / ".cache" / "regatt" / "engines.json")))


def _load_cache() -> dict[str, Any]:
    try:
        data = json.loads(cache_path().read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _save_cache(key: str, entry: dict[str, Any]) -> None:
    from ..files import write_text_atomic

    data = _load_cache()
    data[key] = entry
    try:
        cache_path().parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(cache_path(), json.dumps(data, indent=1, sort_keys=True))
    except OSError:
        pass  # a read-only home only costs a probe next time


def _open(
    name: str, model: Path, device: Device, threads: int | None, precision: str, memory: str = "pattern"
) -> Engine:
    if name == "onnxruntime":
        if precision != "fp32":
            raise ModelError(
                f"onnxruntime has no {precision} compute on CPU: use engine='openvino' (pip install 'regatt[openvino]')"
            )
        from .ort import OrtEngine

        return OrtEngine(model, device if device.engine == "onnxruntime" else Device("cpu"), threads, memory=memory)
    from . import openvino as ovmod

    ovmod.import_openvino()
    target = device.target if device.engine == "openvino" and device.target else "CPU"
    if precision == "bf16" and not ovmod.cpu_supports("bf16", target):
        raise ModelError(f"openvino:{target} reports no BF16 support on this machine: use precision='fp32'")
    return ovmod.OpenVinoEngine(model, Device("openvino", target=target), threads, precision=precision)


def _runner(engine: Engine, output: str):
    return lambda x: engine.run(x, [output])[output]


def gate_engine(engine: Engine, model: Path, card: ModelCard, precision: str, threads: int | None) -> GateResult:
    """Run :func:`.gate.check` for ``engine``, with onnxruntime CPU fp32 as the reference."""
    reference = None
    if engine.name != "onnxruntime" or engine.device.kind not in ("cpu", "auto"):
        try:
            from .ort import OrtEngine

            reference = _runner(OrtEngine(model, "cpu", threads), card.output_name)
        except ModelError:
            raise
        except Exception:
            reference = None  # no onnxruntime: the golden vector alone gates
    atol = GPU_ATOL if engine.name == "onnxruntime" and engine.providers[0] != "CPUExecutionProvider" else None
    return check(
        _runner(engine, card.output_name), card, engine=engine.name, precision=precision, reference=reference, atol=atol
    )


def _gated(
    name: str,
    model: Path,
    card: ModelCard,
    device: Device,
    threads: int | None,
    precision: str,
    memory: str = "pattern",
):
    engine = _open(name, model, device, threads, precision, memory)
    result = gate_engine(engine, model, card, precision, threads)
    return engine, result


def probe_ms(engine: Engine, card: ModelCard, runs: int = PROBE_RUNS) -> float:
    """Median ms of ``runs`` warm runs at a 3:4 image of the card's prepared longest side."""
    s = card.prepare_side
    x = golden_image(int(round(s * 0.75)), s, 7)[None]
    if card.input_dtype != "uint8":
        x = x.astype(np.float32)
    for _ in range(2):  # first run: dynamic graph; second: the static one (openvino shapes=auto)
        engine.run(x, [card.output_name])
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        engine.run(x, [card.output_name])
        times.append(1000 * (time.perf_counter() - t))
    return float(np.median(times))


def select(
    model: str | Path,
    card: ModelCard,
    device: str | Device = "auto",
    engine: str = "onnxruntime",
    precision: str = "fp32",
    threads: int | None = None,
    memory: str = "pattern",
) -> tuple[Engine, EngineChoice]:
    """The gated engine for ``model`` and why it was chosen; raises :class:`ModelError` with the
    gate's reason when the engine asked for (or every candidate of ``auto``) is refused.
    ``memory``: the onnxruntime session's memory plan (:data:`.ort.MEMORY_PLANS`; OpenVINO keeps
    its own, bounded by its compiled-shape LRU)."""
    from .ort import check_memory

    check_memory(memory)
    model = Path(model)
    dev = parse_device(device)
    if engine not in CHOICES:
        raise ModelError(f"unknown engine {engine!r}: use {', '.join(CHOICES)}")
    if precision not in PRECISIONS:
        raise ModelError(
            f"unknown precision {precision!r}: use {', '.join(PRECISIONS)} (INT8 is a separate file: regatt export --int8)"
        )
    if engine == "openvino" and dev.gpu:
        raise ModelError(f"device {dev} is an onnxruntime GPU device: for OpenVINO use device='openvino:GPU'")
    if dev.engine == "openvino" and engine == "onnxruntime":
        raise ModelError(f"device {dev} is run by the openvino engine, not onnxruntime")
    if engine == "auto" and (dev.engine == "openvino" or dev.gpu or _ort_has_gpu(dev)):
        engine = dev.engine  # a GPU or an OpenVINO target was asked for: its engine decides
        why = f"device {dev} is run by {engine}"
    else:
        why = ""
    if engine != "auto":
        eng, result = _gated(engine, model, card, dev, threads, precision, memory)
        if not result.passed:
            raise ModelError(f"{model}: {result.reason}")
        return eng, EngineChoice(engine, precision, why or result.reason, [result])
    return _auto(model, card, dev, threads, precision, memory)


def _ort_has_gpu(dev: Device) -> bool:
    if dev.kind != "auto":
        return False
    try:
        from .ort import import_ort

        return any(
            p in import_ort().get_available_providers() for p in ("CUDAExecutionProvider", "TensorrtExecutionProvider")
        )
    except Exception:
        return False


def _auto(
    model: Path, card: ModelCard, dev: Device, threads: int | None, precision: str, memory: str = "pattern"
) -> tuple[Engine, EngineChoice]:
    from . import openvino as ovmod
    from .ort import cpu_count

    nthreads = threads or cpu_count()
    key = f"{model_key(model, card)}|{machine_key(nthreads)}|{precision}"
    cached = _load_cache().get(key)
    if isinstance(cached, dict) and cached.get("engine") in ENGINES:
        eng, result = _gated(cached["engine"], model, card, dev, threads, precision, memory)
        if result.passed:
            return eng, EngineChoice(
                cached["engine"],
                precision,
                cached.get("reason", "") + " (cached probe)",
                [result],
                cached.get("probe_ms", {}),
                True,
            )
    candidates = [e for e in ENGINES if e != "openvino" or ovmod.available()]
    if precision != "fp32":
        candidates = [e for e in candidates if e != "onnxruntime"]
    passed: dict[str, Engine] = {}
    gates: list[GateResult] = []
    refused: list[str] = []
    for name in candidates:
        try:
            eng, result = _gated(name, model, card, dev, threads, precision, memory)
        except ModelError as exc:
            refused.append(f"{name}: {exc}")
            continue
        gates.append(result)
        if result.passed:
            passed[name] = eng
        else:
            refused.append(result.reason)
    if not passed:
        raise ModelError(
            f"{model}: no engine passed its gate for {precision} ({'; '.join(refused) or 'no engine installed'})"
        )
    times: dict[str, list[float]] = {n: [] for n in passed}
    for _ in range(2):  # interleaved, twice, the better median counts
        for name, eng in passed.items():
            times[name].append(probe_ms(eng, card))
    ms = {n: min(v) for n, v in times.items()}
    best = min(ms, key=ms.get)
    s = card.prepare_side
    shape = f"{int(round(s * 0.75))}x{s}"
    others = ", ".join(f"{n} {ms[n]:.1f} ms" for n in ms if n != best)
    reason = f"{best} is the fastest gated engine here: {ms[best]:.1f} ms at {shape}" + (
        f" vs {others}" if others else ""
    )
    if refused:
        reason += f"; refused: {'; '.join(refused)}"
    _save_cache(key, {"engine": best, "reason": reason, "probe_ms": ms, "time": time.time()})
    return passed[best], EngineChoice(best, precision, reason, gates, ms)
