"""Latency samples -> the figures reported: p50, p90, mean, min, max, images per second."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class Timing:
    """Summary of ``n`` latency samples, in milliseconds."""

    n: int
    p50_ms: float
    p90_ms: float
    mean_ms: float
    min_ms: float
    max_ms: float

    @property
    def images_per_s(self) -> float:
        """Throughput at batch 1, from the median latency."""
        return 1000.0 / self.p50_ms if self.p50_ms > 0 else float("inf")

    def to_dict(self) -> dict[str, float]:
        return {**asdict(self), "images_per_s": self.images_per_s}


def summarize(samples_s: list[float]) -> Timing:
    """Summarise latencies given in seconds (at least one)."""
    if not samples_s:
        raise ValueError("no timing samples")
    ms = np.asarray(samples_s, dtype=np.float64) * 1000.0
    return Timing(
        n=int(ms.size),
        p50_ms=float(np.percentile(ms, 50)),
        p90_ms=float(np.percentile(ms, 90)),
        mean_ms=float(ms.mean()),
        min_ms=float(ms.min()),
        max_ms=float(ms.max()),
    )


def timed(fn: Callable[[], object]) -> float:
    """Seconds one call of ``fn`` takes (``perf_counter``)."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start
