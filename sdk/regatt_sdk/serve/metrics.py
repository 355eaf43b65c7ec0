"""Prometheus text exposition (format 0.0.4) for the server, without a client library:
counters by label, histograms with fixed buckets, gauges read when scraped."""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable, Sequence

#: request latency buckets (seconds)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
#: batch size buckets (images)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


def _labels(pairs: tuple[tuple[str, str], ...]) -> str:
    if not pairs:
        return ""
    inner = ",".join(f'{k}="{str(v)}"' for k, v in pairs)
    return "{" + inner + "}"


class Histogram:
    """Cumulative-bucket histogram keyed by a label tuple."""

    def __init__(self, buckets: Sequence[float]):
        self.buckets = tuple(buckets)
        self.counts: dict[tuple, list[int]] = defaultdict(lambda: [0] * (len(self.buckets) + 1))
        self.sums: dict[tuple, float] = defaultdict(float)

    def observe(self, value: float, labels: tuple = ()) -> None:
        row = self.counts[labels]
        for i, edge in enumerate(self.buckets):
            if value <= edge:
                row[i] += 1
        row[-1] += 1
        self.sums[labels] += value

    def lines(self, name: str) -> list[str]:
        out = []
        for labels, row in sorted(self.counts.items()):
            for edge, count in zip(self.buckets, row):
                out.append(f"{name}_bucket{_labels(labels + (('le', f'{edge:g}'),))} {count}")
            out.append(f"{name}_bucket{_labels(labels + (('le', '+Inf'),))} {row[-1]}")
            out.append(f"{name}_sum{_labels(labels)} {self.sums[labels]:.6f}")
            out.append(f"{name}_count{_labels(labels)} {row[-1]}")
        return out


class Metrics:
    """The server's metrics: requests by endpoint and status, latency, batch sizes, inference
    time, and gauges (queue depth, resident memory) computed at scrape time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple, int] = defaultdict(int)
        self.latency = Histogram(LATENCY_BUCKETS)
        self.batch_size = Histogram(BATCH_BUCKETS)
        self.inference = Histogram(LATENCY_BUCKETS)
        for hist in (self.batch_size, self.inference):  # label-less series exist from the start, at zero
            hist.counts[()] = [0] * (len(hist.buckets) + 1)
            hist.sums[()] = 0.0
        self.gauges: dict[str, tuple[str, Callable[[], float]]] = {}
        #: other counters: name -> (help text, {labels: count}), declared by :meth:`counter`
        self.counters: dict[str, tuple[str, dict[tuple, int]]] = {}

    def counter(self, name: str, help_text: str, labels: Sequence[tuple] = ()) -> None:
        """Declare the counter ``name``; each label tuple of ``labels`` is exposed at zero from the start."""
        with self._lock:
            self.counters.setdefault(name, (help_text, {}))
            for key in labels:
                self.counters[name][1].setdefault(tuple(key), 0)

    def inc(self, name: str, labels: tuple = (), by: int = 1) -> None:
        """Add ``by`` to the counter ``name`` (declared by :meth:`counter`) at ``labels``."""
        with self._lock:
            values = self.counters[name][1]
            values[labels] = values.get(labels, 0) + by

    def request(self, endpoint: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests[(("endpoint", endpoint), ("status", str(status)))] += 1
            self.latency.observe(seconds, (("endpoint", endpoint),))

    def batch(self, size: int, seconds: float) -> None:
        with self._lock:
            self.batch_size.observe(size)
            self.inference.observe(seconds)

    def gauge(self, name: str, help_text: str, read: Callable[[], float]) -> None:
        self.gauges[name] = (help_text, read)

    def render(self) -> str:
        with self._lock:
            lines = ["# HELP regatt_requests_total HTTP requests by endpoint and status.",
                     "# TYPE regatt_requests_total counter"]  # fmt: skip
            lines += [f"regatt_requests_total{_labels(k)} {v}" for k, v in sorted(self.requests.items())]
            for name, hist, text in (
                ("regatt_request_seconds", self.latency, "Request latency in seconds."),
                ("regatt_batch_size", self.batch_size, "Images per inference batch."),
                ("regatt_inference_seconds", self.inference, "Seconds per inference batch."),
            ):
                lines += [f"# HELP {name} {text}", f"# TYPE {name} histogram", *hist.lines(name)]
            for name, (text, values) in sorted(self.counters.items()):
                lines += [f"# HELP {name} {text}", f"# TYPE {name} counter"]
                lines += [f"{name}{_labels(k)} {v}" for k, v in sorted(values.items())]
        for name, (text, read) in sorted(self.gauges.items()):
            lines += [f"# HELP {name} {text}", f"# TYPE {name} gauge", f"{name} {read():g}"]
        return "\n".join(lines) + "\n"


def resident_bytes() -> float:
    """This process's resident memory in bytes (Linux ``/proc``; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            import os

            return float(int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE"))
    except (OSError, ValueError, IndexError):
        return 0.0
