"""The machine's fp32 GEMM throughput, measured with the thread count the benchmark uses.

The main figure is an onnxruntime ``MatMul`` (the same MLAS kernels the encoder's convolutions
use); numpy's BLAS is measured too for reference (OpenBLAS may be throttled, e.g. by
``OPENBLAS_CORETYPE``).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np

from .onnx_proto import matmul_integer_model, matmul_model
from .stats import summarize


@dataclass(frozen=True)
class GemmResult:
    """One GEMM probe: ``size`` cube, GFLOP/s at the median and best run."""

    engine: str
    size: int
    threads: int
    runs: int
    p50_ms: float
    gflops_per_s: float  # at the median run
    best_gflops_per_s: float

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def _probe(engine: str, size: int, threads: int, runs: int, warmup: int, call) -> GemmResult:
    for _ in range(warmup):
        call()
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        samples.append(time.perf_counter() - start)
    t = summarize(samples)
    flop = 2.0 * size**3
    return GemmResult(engine, size, threads, runs, t.p50_ms, flop / (t.p50_ms * 1e6), flop / (t.min_ms * 1e6))


def _cpu_session(model: bytes, threads: int):
    """A CPU ``InferenceSession`` of a probe graph with ``threads`` intra-op threads."""
    from ..engines.ort import create_session

    return create_session(model, "cpu", threads)


def ort_gemm(size: int, threads: int, runs: int = 10, warmup: int = 2) -> GemmResult:
    """fp32 ``size``-cube MatMul in onnxruntime (CPU, ``threads`` intra-op threads)."""
    sess = _cpu_session(matmul_model(size, size, size), threads)
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    got = sess.run(None, {"A": a, "B": b})[0]
    if not np.allclose(got[:4, :4], a[:4] @ b[:, :4], rtol=1e-3, atol=1e-2):
        raise RuntimeError("GEMM probe: onnxruntime MatMul gave a wrong product")
    return _probe("onnxruntime MatMul", size, threads, runs, warmup, lambda: sess.run(None, {"A": a, "B": b}))


def ort_gemm_int8(size: int, threads: int, runs: int = 10, warmup: int = 2) -> GemmResult:
    """uint8 x int8 ``size``-cube ``MatMulInteger`` in onnxruntime (the MLAS kernels of the int8
    convolutions); its "GFLOP/s" counts a multiply-add as 2 operations, like the fp32 probe, so
    the ratio of the two is the most an int8 graph can gain over fp32 on this CPU."""
    sess = _cpu_session(matmul_integer_model(size, size, size), threads)
    rng = np.random.default_rng(0)
    # 7-bit activations: AVX2's u8 x s8 pair sums saturate at 16 bits with full-range values
    # (the speed does not depend on the values)
    a = rng.integers(0, 128, (size, size), dtype=np.uint8)
    b = rng.integers(-127, 128, (size, size), dtype=np.int8)
    got = sess.run(None, {"A": a, "B": b})[0]
    want = a[:4].astype(np.int64) @ b[:, :4].astype(np.int64)
    if got.dtype != np.int32 or not np.array_equal(got[:4, :4].astype(np.int64), want):
        raise RuntimeError("GEMM probe: onnxruntime MatMulInteger gave a wrong product")
    return _probe(
        "onnxruntime MatMulInteger u8s8", size, threads, runs, warmup, lambda: sess.run(None, {"A": a, "B": b})
    )


def numpy_gemm(size: int, threads: int, runs: int = 10, warmup: int = 2) -> GemmResult:
    """fp32 ``size``-cube ``a @ b`` in numpy's BLAS (its own thread setting; for reference)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    return _probe("numpy matmul", size, threads, runs, warmup, lambda: a @ b)
