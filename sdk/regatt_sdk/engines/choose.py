"""Which engine runs a model: ``engine="onnxruntime"|"openvino"|"auto"`` and
``precision="fp32"|"bf16"|"auto"``, each gated before it is used: the descriptor gate
(:mod:`.gate`) and the retrieval gate (:mod:`.retrieval`: the variant ranks a photo set as fp32
onnxruntime does). ``engine="auto"`` probes the gated CPU engines and takes the fastest;
``precision="auto"`` probes every engine x precision that passes both gates (bf16 only on CPUs
with AVX512-BF16 or AMX-BF16, by CPU flags; without them the fastest exact engine) and takes the
fastest. Both are cached per model and machine.

The cache is a JSON file (``$REGATT_ENGINE_CACHE``, default ``~/.cache/regatt/engines.json``)
keyed by the model (card hash, size, mtime), the machine (CPU model and flags, engine versions),
threads and precision; it also keeps each variant's retrieval verdict. Delete it to probe again.

The SDK's own onnxruntime sessions (the gates' references) are made without spinning worker
threads and closed after use, so they never take a core from the engine that runs next.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..card import ModelCard, golden_image
from ..errors import MissingExtraError, ModelError
from . import retrieval
from .base import Engine
from .device import Device, parse_device
from .gate import GateResult, check, model_key
from .retrieval import RetrievalResult

ENGINES = ("onnxruntime", "openvino")
CHOICES = ("auto",) + ENGINES
#: compute precisions (INT8 and fp16 are files, run as they are)
PRECISIONS = ("fp32", "bf16")
#: what ``precision=`` accepts
PRECISION_CHOICES = ("auto",) + PRECISIONS
#: CPU flags of units that compute bf16 (``precision="auto"`` tries bf16 only where one is present)
BF16_FLAGS = ("amx_bf16", "avx512_bf16")
#: seconds the probe waits before timing another engine (onnxruntime workers that spin after a
#: run would otherwise take a core from the next engine's timing)
SETTLE_S = 0.03
#: max |diff| allowed to onnxruntime on a GPU (cuDNN/TensorRT kernels are not bit-exact)
GPU_ATOL = 1e-4
PROBE_RUNS = 3
#: the most entries the cache keeps (the newest)
CACHE_ENTRIES = 256


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
    #: the retrieval gate's verdicts (one per variant gated)
    retrieval: list[RetrievalResult] = field(default_factory=list)


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


def bf16_units(flags: set[str] | None = None) -> list[str]:
    """The bf16 units this CPU has, by flag (:data:`BF16_FLAGS`; never by vendor)."""
    flags = cpu_info()[1] if flags is None else flags
    return [f for f in BF16_FLAGS if f in flags]


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
    if len(data) > CACHE_ENTRIES:  # models come and go (re-exports, test files): keep the newest
        newest = sorted(data, key=lambda k: data[k].get("time", 0) if isinstance(data[k], dict) else 0)
        data = {k: data[k] for k in newest[-CACHE_ENTRIES:]}
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
        from .ort import ENCODER_SPINNING, OrtEngine

        dev = device if device.engine == "onnxruntime" else Device("cpu")
        return OrtEngine(model, dev, threads, memory=memory, spinning=ENCODER_SPINNING)
    from . import openvino as ovmod

    ovmod.import_openvino()
    target = device.target if device.engine == "openvino" and device.target else "CPU"
    if precision == "bf16" and not ovmod.cpu_supports("bf16", target):
        raise ModelError(f"openvino:{target} reports no BF16 support on this machine: use precision='fp32'")
    return ovmod.OpenVinoEngine(model, Device("openvino", target=target), threads, precision=precision)


def _runner(engine: Engine, output: str):
    return lambda x: engine.run(x, [output])[output]


def reference_engine(model: Path, threads: int | None):
    """An onnxruntime CPU session for the gates' reference: no spinning worker threads; the
    caller closes it after use."""
    from .ort import OrtEngine

    return OrtEngine(model, "cpu", threads, spinning=False)


def gate_engine(engine: Engine, model: Path, card: ModelCard, precision: str, threads: int | None) -> GateResult:
    """Run :func:`.gate.check` for ``engine``, with onnxruntime CPU fp32 as the reference (a
    session of its own, without spinning, closed before this returns)."""
    reference = ref_engine = None
    if engine.name != "onnxruntime" or engine.device.kind not in ("cpu", "auto"):
        try:
            ref_engine = reference_engine(model, threads)
            reference = _runner(ref_engine, card.output_name)
        except ModelError:
            raise
        except Exception:
            reference = None  # no onnxruntime: the golden vector alone gates
    atol = GPU_ATOL if engine.name == "onnxruntime" and engine.providers[0] != "CPUExecutionProvider" else None
    try:
        return check(
            _runner(engine, card.output_name),
            card,
            engine=engine.name,
            precision=precision,
            reference=reference,
            atol=atol,
        )
    finally:
        if ref_engine is not None:
            ref_engine.close()


#: the reference's descriptors of the retrieval photo set, per reference file (this process)
_REFERENCE: dict[str, np.ndarray] = {}


def _reference_vectors(path: Path, threads: int | None) -> np.ndarray:
    from ..card import read_card

    card = read_card(path)
    key = model_key(path, card)
    if key not in _REFERENCE:
        ref = reference_engine(path, threads)
        try:
            _REFERENCE[key] = retrieval.describe(_runner(ref, card.output_name), card)
        finally:
            ref.close()
    return _REFERENCE[key]


def retrieval_gate(
    engine: Engine, model: Path, card: ModelCard, precision: str, threads: int | None
) -> RetrievalResult:
    """The retrieval gate (:mod:`.retrieval`) for ``engine`` running ``model`` at ``precision``,
    against fp32 onnxruntime CPU on the fp32 file (:func:`.retrieval.reference_model`); the
    verdict is cached with the model and machine (like ``auto``'s probe)."""
    from .ort import cpu_count

    label = f"{engine.name}:{engine.device}"
    key = f"retrieval|{model_key(model, card)}|{machine_key(threads or cpu_count())}|{label}|{precision}"
    cached = _load_cache().get(key)
    if isinstance(cached, dict):
        try:
            result = RetrievalResult.from_dict(cached)
            return replace(result, reason=result.reason + " (cached)")
        except TypeError:
            pass  # an entry of another format: gate again
    ref_path, ref_label = retrieval.reference_model(model, card)
    run = _runner(engine, card.output_name)
    shapes = getattr(engine, "shapes", None)
    if shapes == "auto":  # the set's one shape must not take a static-graph slot (and a compile)
        engine.shapes = "dynamic"
    try:
        result = _retrieval_verdict(engine, model, card, precision, threads, run, ref_path, ref_label)
    finally:
        if shapes == "auto":
            engine.shapes = shapes
    _save_cache(key, {**result.to_dict(), "time": time.time()})
    return result


def _retrieval_verdict(engine, model, card, precision, threads, run, ref_path, ref_label) -> RetrievalResult:
    is_reference = (
        engine.name == "onnxruntime" and engine.device.kind in ("cpu", "auto")
        and engine.providers[:1] == ["CPUExecutionProvider"] and precision == "fp32"
    )  # fmt: skip
    if is_reference and ref_path is not None and ref_path == model:
        vectors = retrieval.describe(run, card)  # the reference itself: ranks as itself
        result = retrieval.judge(vectors, vectors, retrieval.photo_set()[1], engine=engine.name, precision=precision)
        result = replace(result, reason=f"onnxruntime fp32 on CPU is the reference ({result.reason.split(': ', 1)[1]})")
    else:
        ref = _reference_vectors(ref_path or model, threads)
        result = retrieval.check(run, ref, card, engine=engine.name, precision=_label(card, precision),
                                 reference_label=ref_label)  # fmt: skip
    return result


def _label(card: ModelCard, precision: str) -> str:
    """What a variant computes: ``int8`` for an INT8 file at fp32, else the precision (+ file)."""
    if card.precision == "fp32":
        return precision
    return card.precision if precision == "fp32" else f"{precision} on an {card.precision} file"


def _gated(
    name: str,
    model: Path,
    card: ModelCard,
    device: Device,
    threads: int | None,
    precision: str,
    memory: str = "pattern",
):
    """``(engine, descriptor gate, retrieval gate or None)``: the retrieval gate runs once the
    descriptor gate passed."""
    engine = _open(name, model, device, threads, precision, memory)
    result = gate_engine(engine, model, card, precision, threads)
    ranked = retrieval_gate(engine, model, card, precision, threads) if result.passed else None
    return engine, result, ranked


def _verdict(result: GateResult, ranked: RetrievalResult | None) -> tuple[bool, str]:
    if not result.passed or ranked is None:
        return False, result.reason
    if not ranked.passed:
        return False, ranked.reason
    return True, f"{result.reason}; {ranked.reason}"


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
    ``precision="auto"``: the fastest engine x precision that passes both gates here (see the
    module docstring). ``memory``: the onnxruntime session's memory plan
    (:data:`.ort.MEMORY_PLANS`; OpenVINO keeps its own, bounded by its compiled-shape LRU)."""
    from .ort import check_memory

    check_memory(memory)
    model = Path(model)
    dev = parse_device(device)
    if engine not in CHOICES:
        raise ModelError(f"unknown engine {engine!r}: use {', '.join(CHOICES)}")
    if precision not in PRECISION_CHOICES:
        raise ModelError(
            f"unknown precision {precision!r}: use {', '.join(PRECISION_CHOICES)} "
            "(INT8 is a separate file: regatt export --int8)"
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
    if precision == "auto":
        return _auto_precision(model, card, dev, engine, threads, memory, why)
    if engine != "auto":
        eng, result, ranked = _gated(engine, model, card, dev, threads, precision, memory)
        ok, reason = _verdict(result, ranked)
        if not ok:
            raise ModelError(f"{model}: {reason}")
        return eng, EngineChoice(engine, precision, why or reason, [result], retrieval=[ranked] if ranked else [])
    return _auto(model, card, dev, threads, [(e, precision) for e in ENGINES], memory)


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


def _auto_precision(
    model: Path, card: ModelCard, dev: Device, engine: str, threads: int | None, memory: str, why: str
) -> tuple[Engine, EngineChoice]:
    """``precision="auto"``: bf16 is a candidate only on a CPU target whose CPU has a bf16 unit
    (:func:`bf16_units`) and an engine that computes bf16 (OpenVINO); otherwise fp32, said why."""
    from . import openvino as ovmod

    cpu_target = not dev.gpu and (dev.engine != "openvino" or (dev.target or "CPU") == "CPU")
    units = bf16_units()
    engines = list(ENGINES) if engine == "auto" else [engine]
    ov_ok = "openvino" in engines and ovmod.available()
    if not cpu_target:
        fallback = f"fp32: bf16 is chosen on CPUs only ({why or f'device {dev}'})"
    elif not units:
        fallback = (
            "fp32: this CPU has no bf16 unit (no " + " / ".join(BF16_FLAGS) + " flag), so no variant is faster than "
            "the exact engines"
        )
    elif not ov_ok:
        fallback = "fp32: onnxruntime computes no bf16 on CPU" + (
            "" if engine != "auto" else " and openvino is not installed (pip install 'regatt[openvino]')"
        )
    else:
        fallback = ""
    if fallback:
        if engine == "auto":
            eng, choice = _auto(model, card, dev, threads, [(e, "fp32") for e in ENGINES], memory)
        else:
            eng, choice = select(model, card, dev, engine, "fp32", threads, memory)
        choice.reason = f"precision auto -> {fallback}; {choice.reason}"
        return eng, choice
    candidates = [(e, p) for e in engines for p in PRECISIONS if not (e == "onnxruntime" and p != "fp32")]
    return _auto(model, card, dev, threads, candidates, memory, precision_auto=True, units=units)


def _auto(
    model: Path,
    card: ModelCard,
    dev: Device,
    threads: int | None,
    candidates: list[tuple[str, str]],
    memory: str = "pattern",
    *,
    precision_auto: bool = False,
    units: list[str] | None = None,
) -> tuple[Engine, EngineChoice]:
    """Gate ``candidates`` (engine, precision), time the ones that pass interleaved, take the
    fastest; cached per model, machine, threads and what was asked."""
    from . import openvino as ovmod
    from .ort import cpu_count

    nthreads = threads or cpu_count()
    asked = "precision=auto|" + ",".join(f"{e}:{p}" for e, p in candidates) if precision_auto else candidates[0][1]
    key = f"{model_key(model, card)}|{machine_key(nthreads)}|{asked}"
    cached = _load_cache().get(key)
    if isinstance(cached, dict) and (cached.get("engine"), cached.get("precision", candidates[0][1])) in candidates:
        name, prec = cached["engine"], cached.get("precision", candidates[0][1])
        eng, result, ranked = _gated(name, model, card, dev, threads, prec, memory)
        if _verdict(result, ranked)[0]:
            return eng, EngineChoice(
                name, prec, cached.get("reason", "") + " (cached probe)", [result], cached.get("probe_ms", {}), True,
                [ranked] if ranked else [],
            )  # fmt: skip
    candidates = [(e, p) for e, p in candidates if e != "openvino" or ovmod.available()]
    if not precision_auto and candidates and candidates[0][1] != "fp32":
        candidates = [(e, p) for e, p in candidates if e != "onnxruntime"]

    def name_of(e: str, p: str) -> str:
        return f"{e} {_label(card, p)}" if precision_auto else e

    passed: dict[str, tuple[Engine, str, str]] = {}
    gates: list[GateResult] = []
    ranks: list[RetrievalResult] = []
    refused: list[str] = []
    for e, p in candidates:
        try:
            eng, result, ranked = _gated(e, model, card, dev, threads, p, memory)
        except ModelError as exc:
            refused.append(f"{name_of(e, p)}: {exc}")
            continue
        gates.append(result)
        if ranked is not None:
            ranks.append(ranked)
        ok, reason = _verdict(result, ranked)
        if ok:
            passed[name_of(e, p)] = (eng, e, p)
        else:
            refused.append(reason)
    what = "any precision" if precision_auto else candidates[0][1] if candidates else "?"
    if not passed:
        raise ModelError(
            f"{model}: no engine passed its gate for {what} ({'; '.join(refused) or 'no engine installed'})"
        )
    times: dict[str, list[float]] = {n: [] for n in passed}
    for _ in range(2):  # interleaved, twice, the better median counts
        for n, (eng, _e, _p) in passed.items():
            time.sleep(SETTLE_S)  # let a previous engine's spinning workers go idle
            times[n].append(probe_ms(eng, card))
    ms = {n: min(v) for n, v in times.items()}
    best = min(ms, key=ms.get)
    eng, e_best, p_best = passed[best]
    s = card.prepare_side
    shape = f"{int(round(s * 0.75))}x{s}"
    others = ", ".join(f"{n} {ms[n]:.1f} ms" for n in ms if n != best)
    if precision_auto:
        ranked = next((r for r in ranks if r.engine == e_best and r.precision == _label(card, p_best)), None)
        quality = (
            f" (retrieval gate: top-10 agreement {ranked.top10_mean:.3f}, copies mAP {ranked.map_delta:+.2f})"
            if ranked
            else ""
        )
        reason = (
            f"{best} is the fastest variant that passes the retrieval gate here: {ms[best]:.1f} ms at {shape}"
            + quality
            + (f" vs {others}" if others else "")
            + f"; bf16 units: {', '.join(units or [])}"
        )
    else:
        reason = f"{best} is the fastest gated engine here: {ms[best]:.1f} ms at {shape}" + (
            f" vs {others}" if others else ""
        )
    if refused:
        reason += f"; refused: {'; '.join(refused)}"
    _save_cache(key, {"engine": e_best, "precision": p_best, "reason": reason, "probe_ms": ms, "time": time.time()})
    return eng, EngineChoice(e_best, p_best, reason, gates, ms, retrieval=ranks)
