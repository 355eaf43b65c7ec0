"""A truthful fp32 peak for this machine: the best of several GEMM probes, and the theoretical
FMA peak from the CPU's vector units and its measured clock.

- Measured: onnxruntime ``MatMul`` (MLAS), OpenVINO ``MatMul`` (oneDNN, when installed),
  NumPy's BLAS, each at large square sizes after a warm-up, and OpenVINO's 3x3 convolutions
  (:func:`openvino_conv`: oneDNN's convolutions beat its MatMul on this project's AVX-512/AMX
  machine); the peak is the best of them. One
  probe alone underestimates some machines (this project's bench once reported a model at 148 %
  of onnxruntime's own MatMul rate).
- Theoretical: ``cores x fp32 FLOP per cycle x clock``. FLOP per cycle comes from the vector
  units (:func:`flops_per_cycle`: e.g. AMD Zen 2-4 execute AVX2/AVX-512 FMAs on two 256-bit
  pipes = 32 FLOP/cycle; Intel server AVX-512 and Zen 5 on two 512-bit pipes = 64). The clock is
  measured with a chain of dependent integer adds (one cycle each) compiled with the system C
  compiler; without one, the kernel's reported MHz is used and the result says so.

A model's share of either peak above 100 % means a probe is wrong: :func:`share` reports it.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .gemm import GemmResult, _probe, numpy_gemm, ort_gemm

SIZES = (2048, 3072)

_CLOCK_C = r"""
#include <time.h>
double regatt_add_chain(long n) {
    struct timespec a, b;
    unsigned long x = 0, one = 1;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (long i = 0; i < n; i++) {
        /* register + register: newer cores fold chains of immediate adds at rename (Golden
           Cove and later ran "add $1" at several per cycle, a 21 GHz "clock") */
        __asm__ volatile(
            "add %1, %0\n\tadd %1, %0\n\tadd %1, %0\n\tadd %1, %0\n\t"
            "add %1, %0\n\tadd %1, %0\n\tadd %1, %0\n\tadd %1, %0\n\t"
            "add %1, %0\n\tadd %1, %0\n\tadd %1, %0\n\tadd %1, %0\n\t"
            "add %1, %0\n\tadd %1, %0\n\tadd %1, %0\n\tadd %1, %0" : "+r"(x) : "r"(one));
    }
    clock_gettime(CLOCK_MONOTONIC, &b);
    return (b.tv_sec - a.tv_sec) + 1e-9 * (b.tv_nsec - a.tv_nsec);
}
"""
ADDS_PER_ITERATION = 16


@dataclass(frozen=True)
class Peak:
    """``measured_gflops`` (best probe) and ``theoretical_gflops`` with how each was obtained."""

    measured_gflops: float
    measured_by: str
    probes: list[dict[str, object]]
    theoretical_gflops: float | None
    flops_per_cycle: int | None
    clock_ghz: float | None
    clock_source: str
    cores: int
    units: str
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def _cpuinfo() -> dict[str, str]:
    out: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            out.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return out


def flops_per_cycle(info: dict[str, str] | None = None) -> tuple[int | None, str]:
    """fp32 FLOP per cycle per core from the CPU's vector units, and the rule that gave it."""
    info = _cpuinfo() if info is None else info
    flags = set(info.get("flags", "").split())
    vendor = info.get("vendor_id", "")
    try:
        family = int(info.get("cpu family", "0"))
    except ValueError:
        family = 0
    if "fma" not in flags:
        return (8, "no FMA: SSE/AVX add + mul, assumed 8") if "sse2" in flags else (None, "unknown vector units")
    if vendor == "AuthenticAMD":
        if family >= 26 and "avx512f" in flags:
            return 64, "AMD Zen 5: two 512-bit FMA pipes (2 x 16 lanes x 2 FLOP)"
        return 32, "AMD Zen 2-4: two 256-bit FMA pipes (AVX-512 split in two halves; 2 x 8 lanes x 2 FLOP)"
    if "avx512f" in flags:
        return 64, "Intel AVX-512: assumed two 512-bit FMA units (2 x 16 lanes x 2 FLOP; some parts have one)"
    return 32, "AVX2: two 256-bit FMA units (2 x 8 lanes x 2 FLOP)"


def _clock_library() -> ctypes.CDLL | None:
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None or os.uname().machine not in ("x86_64", "AMD64"):
        return None
    tmp = Path(tempfile.mkdtemp(prefix="regatt-clock-"))
    src, lib = tmp / "clock.c", tmp / "clock.so"
    src.write_text(_CLOCK_C)
    try:
        subprocess.run(
            [cc, "-O1", "-shared", "-fPIC", "-o", str(lib), str(src)], check=True, capture_output=True, timeout=60
        )
        dll = ctypes.CDLL(str(lib))
    except (OSError, subprocess.SubprocessError):
        return None
    dll.regatt_add_chain.restype = ctypes.c_double
    dll.regatt_add_chain.argtypes = [ctypes.c_long]
    return dll


def measure_clock(repeats: int = 1000, seconds: float = 0.002) -> tuple[float | None, str]:
    """``(GHz, source)``: the best of ``repeats`` timed chains of dependent adds (one per cycle)
    short enough that one of them runs without being preempted on a shared machine, or the kernel's ``cpu MHz`` when no C compiler."""
    dll = _clock_library()
    if dll is None:
        mhz = _cpuinfo().get("cpu MHz")
        return (
            (float(mhz) / 1000.0, "kernel-reported cpu MHz (no C compiler to measure it)") if mhz else (None, "unknown")
        )
    n = 1_000_000
    dll.regatt_add_chain(n)
    t = dll.regatt_add_chain(n)
    n = max(n, int(n * seconds / max(t, 1e-6)))
    best = 0.0
    for _ in range(repeats):
        t = dll.regatt_add_chain(n)
        best = max(best, n * ADDS_PER_ITERATION / t / 1e9)
    return best, f"measured: dependent integer adds, one per cycle (best of {repeats})"


def openvino_gemm(
    size: int, threads: int, runs: int = 10, warmup: int = 2, precision: str = "fp32"
) -> GemmResult | None:
    """``size``-cube MatMul in OpenVINO, or None without openvino. ``precision``: ``fp32`` (f32
    forced, two inputs), ``bf16`` (bf16 hint, the second matrix a constant like a layer's
    weights: oneDNN's AMX/AVX512-BF16 kernels) or ``int8`` (u8 activations x i8 weights through
    FakeQuantize, which OpenVINO runs as an integer FullyConnected: AMX-INT8/VNNI kernels)."""
    from ..engines import openvino as ovmod

    if not ovmod.available():
        return None
    if precision != "fp32":
        return _openvino_low_gemm(size, threads, runs, warmup, precision)
    ov = ovmod.import_openvino()
    import openvino.opset13 as ops

    a_in = ops.parameter([size, size], np.float32, name="A")
    b_in = ops.parameter([size, size], np.float32, name="B")
    model = ov.Model([ops.matmul(a_in, b_in, False, False)], [a_in, b_in])
    cfg = {
        "INFERENCE_PRECISION_HINT": "f32",
        "INFERENCE_NUM_THREADS": int(threads),
        "NUM_STREAMS": 1,
        "PERFORMANCE_HINT": "LATENCY",
    }
    request = ov.Core().compile_model(model, "CPU", cfg).create_infer_request()
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    request.infer({0: a, 1: b})
    got = request.get_output_tensor(0).data
    if not np.allclose(got[:4, :4], a[:4] @ b[:, :4], rtol=1e-3, atol=1e-2):
        raise RuntimeError("GEMM probe: OpenVINO MatMul gave a wrong product")
    return _probe("openvino MatMul", size, threads, runs, warmup, lambda: request.infer({0: a, 1: b}))


def _openvino_low_gemm(size: int, threads: int, runs: int, warmup: int, precision: str) -> GemmResult:
    from ..engines import openvino as ovmod

    ov = ovmod.import_openvino()
    import openvino.opset13 as ops

    rng = np.random.default_rng(0)
    a_in = ops.parameter([size, size], np.float32, name="A")
    # a chain of CHAIN products, as a network's layers: the input's conversion from f32 (a few ms
    # at 2048^2, as long as one AMX product) is paid once, not per product
    if precision == "int8":
        a = rng.integers(0, 256, (size, size)).astype(np.float32)
        w = rng.integers(-127, 128, (size, size)).astype(np.float32)

        def c(v: float):
            return ops.constant(np.array(v, np.float32))

        wq = ops.fake_quantize(ops.constant(w), c(-127), c(127), c(-127), c(127), 255)
        x = a_in
        for _ in range(CHAIN):
            x = ops.matmul(ops.fake_quantize(x, c(0), c(255), c(0), c(255), 256), wq, False, False)
        out, hint, label = x, "f32", f"openvino MatMul u8 x i8 (FakeQuantize) x{CHAIN}"
    elif precision == "bf16":
        a = rng.standard_normal((size, size), dtype=np.float32)
        w = (rng.standard_normal((size, size), dtype=np.float32) / np.float32(np.sqrt(size))).astype(np.float32)
        x = a_in
        for _ in range(CHAIN):
            x = ops.matmul(x, ops.constant(w), False, False)
        out, hint, label = x, "bf16", f"openvino MatMul bf16 x{CHAIN}"
    else:
        raise ValueError(f"precision {precision!r}: fp32, bf16 or int8")
    cfg = {"INFERENCE_PRECISION_HINT": hint, "INFERENCE_NUM_THREADS": int(threads), "NUM_STREAMS": 1,
           "PERFORMANCE_HINT": "LATENCY"}  # fmt: skip
    request = ov.Core().compile_model(ov.Model([out], [a_in]), "CPU", cfg).create_infer_request()
    request.infer({0: a})
    got = np.asarray(request.get_output_tensor(0).data, np.float64)
    want = a.astype(np.float64) @ w.astype(np.float64)  # the first product, then the rest of the chain
    for _ in range(CHAIN - 1):
        if precision == "int8":  # FakeQuantize clips to 0..255 and rounds between the products
            want = np.clip(np.round(want), 0, 255)
        want = want @ w.astype(np.float64)
    scale = float(np.abs(want).max()) or 1.0
    if np.abs(got[:4, :4] - want[:4, :4]).max() > (1e-5 if precision == "int8" else 5e-2) * scale:
        raise RuntimeError(f"GEMM probe: OpenVINO {precision} MatMul gave a wrong product")
    result = _probe(label, size, threads, runs, warmup, lambda: request.infer({0: a}))
    k = float(CHAIN)  # CHAIN products per run
    return GemmResult(result.engine, size, threads, runs, result.p50_ms, k * result.gflops_per_s,
                      k * result.best_gflops_per_s)  # fmt: skip


def openvino_conv(threads: int, runs: int = 6, warmup: int = 2, precision: str = "bf16") -> GemmResult | None:
    """A chain of :data:`CHAIN` 3x3 convolutions, 512 -> 512 channels on 48x64 (a ResNet stage's
    shape) in OpenVINO at ``precision`` (``fp32``/``bf16`` hint): oneDNN's convolution kernels,
    which reach more of AMX than its MatMul does; GOP/s = 2 x MACs / time. None without openvino."""
    from ..engines import openvino as ovmod

    if not ovmod.available():
        return None
    ov = ovmod.import_openvino()
    import openvino.opset13 as ops

    c, h, w = 512, 48, 64
    rng = np.random.default_rng(0)
    x_in = ops.parameter([1, c, h, w], np.float32, name="x")
    x = x_in
    weights = []
    for _ in range(CHAIN):
        wt = (rng.standard_normal((c, c, 3, 3), dtype=np.float32) / np.float32(np.sqrt(c * 9))).astype(np.float32)
        weights.append(wt)
        x = ops.convolution(x, ops.constant(wt), [1, 1], [1, 1], [1, 1], [1, 1])
    cfg = {"INFERENCE_PRECISION_HINT": PRECISION_HINTS[precision], "INFERENCE_NUM_THREADS": int(threads),
           "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY"}  # fmt: skip
    request = ov.Core().compile_model(ov.Model([x], [x_in]), "CPU", cfg).create_infer_request()
    a = rng.standard_normal((1, c, h, w), dtype=np.float32)
    request.infer({0: a})
    got = np.asarray(request.get_output_tensor(0).data[0, :2, 10, 10:12], np.float64)
    y = a[0].astype(np.float64)  # the first output pixels, by hand, through the chain (a 9x9 window suffices)
    win = y[:, 10 - CHAIN : 10 + CHAIN + 1, 10 - CHAIN : 12 + CHAIN]
    for wt in weights:
        k = wt.astype(np.float64)
        out = np.zeros((c, win.shape[1] - 2, win.shape[2] - 2))
        for dy in range(3):
            for dx in range(3):
                out += np.einsum("oc,chw->ohw", k[:, :, dy, dx], win[:, dy : dy + out.shape[1], dx : dx + out.shape[2]])
        win = out
    want = win[:2, 0, :2]
    if np.abs(got - want).max() > 5e-2 * (float(np.abs(want).max()) or 1.0):
        raise RuntimeError(f"convolution probe: OpenVINO {precision} gave a wrong result")
    flop = 2.0 * c * c * 9 * h * w * CHAIN
    result = _probe(f"openvino Convolution 3x3 {precision} x{CHAIN}", 1, threads, runs, warmup,
                    lambda: request.infer({0: a}))  # fmt: skip
    scale = flop / (2.0 * 1**3)  # _probe counts 2 x size^3 FLOP: rescale to the chain's
    return GemmResult(result.engine, c, threads, runs, result.p50_ms, result.gflops_per_s * scale,
                      result.best_gflops_per_s * scale)  # fmt: skip


PRECISION_HINTS = {"fp32": "f32", "bf16": "bf16"}


def _probe_label(r: GemmResult) -> str:
    if "Convolution" in r.engine:
        return f"{r.engine} on 1x{r.size}x48x64 (best run)"
    return f"{r.engine} {r.size}^3 (best run)"


#: products chained in one OpenVINO bf16/int8 probe graph
CHAIN = 4

#: CPU flag -> (operations per cycle per core, the rule), best unit first, per precision
#: (a multiply-add counts 2, as in the fp32 rule)
LOW_PRECISION_UNITS: dict[str, tuple[tuple[str, int, str], ...]] = {
    "bf16": (
        ("amx_bf16", 1024, "AMX-BF16: TDPBF16PS, a 16x32 x 32x16 bf16 tile product (8192 MAC) per 16 cycles"),
        ("avx512_bf16", 128, "AVX512-BF16: VDPBF16PS, assumed two 512-bit pipes (2 x 16 lanes x 2 pairs x 2)"),
    ),
    "int8": (
        ("amx_int8", 2048, "AMX-INT8: TDPBUSD, a 16x64 x 64x16 u8 x s8 tile product (16384 MAC) per 16 cycles"),
        ("avx512_vnni", 256, "AVX512-VNNI: VPDPBUSD, assumed two 512-bit pipes (2 x 16 lanes x 4 x 2)"),
        ("avx_vnni", 128, "AVX-VNNI: VPDPBUSD on 256 bits, two pipes (2 x 8 lanes x 4 x 2)"),
    ),
}


def precision_units(flags: set[str] | None = None) -> dict[str, dict[str, object]]:
    """Per precision (``fp32``, ``bf16``, ``int8``): the best unit this CPU has by its flags, its
    operations per cycle per core and the rule (``ops_per_cycle`` None: no such unit)."""
    info = _cpuinfo()
    flags = set(info.get("flags", "").split()) if flags is None else flags
    fpc, rule = flops_per_cycle({**info, "flags": " ".join(sorted(flags))})
    out: dict[str, dict[str, object]] = {"fp32": {"unit": "FMA", "flag": "fma", "ops_per_cycle": fpc, "rule": rule}}
    for precision, units in LOW_PRECISION_UNITS.items():
        hit = next((u for u in units if u[0] in flags), None)
        if hit is None:
            out[precision] = {"unit": None, "flag": None, "ops_per_cycle": None,
                              "rule": f"no {precision} unit (none of {', '.join(u[0] for u in units)})"}  # fmt: skip
        else:
            out[precision] = {"unit": hit[2].split(":")[0], "flag": hit[0], "ops_per_cycle": hit[1], "rule": hit[2]}
    return out


def precision_peaks(
    threads: int, fp32: Peak, sizes: tuple[int, ...] = SIZES, runs: int = 6
) -> dict[str, dict[str, object]]:
    """Measured and theoretical peak per precision: ``fp32`` from ``fp32`` (:func:`machine_peak`),
    ``bf16`` (OpenVINO MatMul, bf16 hint) and ``int8`` (onnxruntime MatMulInteger and OpenVINO's
    integer MatMul): GOP/s (a multiply-add = 2), best probe, theoretical = cores x ops/cycle of
    the CPU's unit (:func:`precision_units`) x the clock measured for ``fp32`` (AMX and AVX-512
    may run below that clock: the theoretical figure is an upper bound)."""
    from .gemm import ort_gemm_int8

    units = precision_units()
    out: dict[str, dict[str, object]] = {}
    for precision in ("fp32", "bf16", "int8"):
        unit = units[precision]
        probes: list[GemmResult] = []
        notes: list[str] = []
        if precision == "fp32":
            best_gops, best_by = fp32.measured_gflops, fp32.measured_by
            probe_dicts = fp32.probes
        else:
            fns = [lambda n: openvino_gemm(n, threads, runs, precision=precision)]
            if precision == "int8":
                fns.insert(0, lambda n: ort_gemm_int8(n, threads, runs))
            if precision == "bf16":
                fns.append(lambda n: openvino_conv(threads, runs, precision="bf16") if n == sizes[0] else None)
            for size in sizes:
                for fn in fns:
                    try:
                        r = fn(size)
                    except Exception as exc:  # a probe that cannot run is left out, and said so
                        notes.append(f"{precision} probe at {size} failed: {str(exc).splitlines()[0][:120]}")
                        continue
                    if r is not None:
                        probes.append(r)
            best = max(probes, key=lambda r: r.best_gflops_per_s) if probes else None
            best_gops = best.best_gflops_per_s if best else None
            best_by = _probe_label(best) if best else None
            probe_dicts = [r.to_dict() for r in probes]
        opc = unit["ops_per_cycle"]
        theoretical = opc * fp32.clock_ghz * threads if opc and fp32.clock_ghz else None
        if theoretical and best_gops and best_gops > theoretical:
            notes.append(f"measured {best_gops:.0f} GOP/s exceeds the theoretical {theoretical:.0f}: a rule is wrong")
        out[precision] = {
            "measured_gops": best_gops, "measured_by": best_by, "probes": probe_dicts,
            "theoretical_gops": theoretical, "ops_per_cycle": opc, "unit": unit["unit"], "flag": unit["flag"],
            "rule": unit["rule"], "clock_ghz": fp32.clock_ghz, "cores": threads, "notes": notes,
        }  # fmt: skip
    return out


def machine_peak(threads: int, sizes: tuple[int, ...] = SIZES, runs: int = 6, *, clock: bool = True) -> Peak:
    """Best measured fp32 GEMM rate over the probes and sizes, and the theoretical FMA peak for
    ``threads`` cores (``clock=False``: probes only, no clock measurement and no theoretical peak,
    e.g. for a second probe at the end of a run)."""
    probes: list[GemmResult] = []
    notes: list[str] = []

    def conv(size: int, threads: int, runs: int) -> GemmResult | None:  # once: it has its own shape
        return openvino_conv(threads, runs, precision="fp32") if size == sizes[0] else None

    for size in sizes:  # interleaved: each probe at each size, in turn
        for fn in (ort_gemm, openvino_gemm, numpy_gemm, conv):
            try:
                r = fn(size, threads, runs)
            except Exception as exc:  # a probe that cannot run is left out, and said so
                notes.append(f"{fn.__name__}({size}) failed: {str(exc).splitlines()[0][:120]}")
                continue
            if r is not None:
                probes.append(r)
    best = max(probes, key=lambda r: r.best_gflops_per_s)
    fpc, units = flops_per_cycle()
    ghz, source = measure_clock() if clock else (None, "not measured")
    theoretical = fpc * ghz * threads if fpc and ghz else None
    if theoretical and best.best_gflops_per_s > theoretical:
        notes.append(
            f"measured {best.best_gflops_per_s:.0f} GFLOP/s exceeds the theoretical {theoretical:.0f}: "
            "the clock or the vector-unit rule is wrong for this CPU"
        )
    return Peak(
        measured_gflops=best.best_gflops_per_s,
        measured_by=_probe_label(best),
        probes=[r.to_dict() for r in probes],
        theoretical_gflops=theoretical,
        flops_per_cycle=fpc,
        clock_ghz=ghz,
        clock_source=source,
        cores=threads,
        units=units,
        notes=notes,
    )


def share(gflops: float | None, peak: float | None) -> tuple[float | None, str | None]:
    """``(percent, problem)``: ``gflops`` as a share of ``peak``; ``problem`` names a share over
    100 %, which means the peak probe is wrong (never a model faster than the machine)."""
    if not gflops or not peak:
        return None, None
    pct = 100.0 * gflops / peak
    return pct, (f"{pct:.0f} % of the peak: the peak is underestimated (a bug in the probe)" if pct > 100.0 else None)


def timed(fn, *args, **kwargs) -> tuple[object, float]:
    """``(fn(*args, **kwargs), seconds)``."""
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t
