"""A truthful fp32 peak for this machine: the best of several GEMM probes, and the theoretical
FMA peak from the CPU's vector units and its measured clock.

- Measured: onnxruntime ``MatMul`` (MLAS), OpenVINO ``MatMul`` (oneDNN, when installed) and
  NumPy's BLAS, each at large square sizes after a warm-up; the peak is the best of them. One
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
    unsigned long x = 0;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (long i = 0; i < n; i++) {
        __asm__ volatile(
            "add $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\t"
            "add $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\t"
            "add $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\t"
            "add $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0" : "+r"(x));
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


def openvino_gemm(size: int, threads: int, runs: int = 10, warmup: int = 2) -> GemmResult | None:
    """fp32 ``size``-cube MatMul in OpenVINO (f32 precision forced), or None without openvino."""
    from ..engines import openvino as ovmod

    if not ovmod.available():
        return None
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


def machine_peak(threads: int, sizes: tuple[int, ...] = SIZES, runs: int = 6, *, clock: bool = True) -> Peak:
    """Best measured fp32 GEMM rate over the probes and sizes, and the theoretical FMA peak for
    ``threads`` cores (``clock=False``: probes only, no clock measurement and no theoretical peak,
    e.g. for a second probe at the end of a run)."""
    probes: list[GemmResult] = []
    notes: list[str] = []
    for size in sizes:  # interleaved: each probe at each size, in turn
        for fn in (ort_gemm, openvino_gemm, numpy_gemm):
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
        measured_by=f"{best.engine} {best.size}^3 (best run)",
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
