"""``regatt bench``: per-image latency the way the paper reports it, next to the paper's times.

The torch-free half lives here: timing statistics (:mod:`.stats`), the machine's description
and memory (:mod:`.machine`), the fp32 GEMM probe (:mod:`.gemm`), onnxruntime engines and
profiling (:mod:`.engines`, :mod:`.profile`), targets, and the Markdown/JSON/PNG report
(:mod:`.report`). The torch half (building, exporting, eager timing) is
``regatt_export.bench_models``, imported only when needed.
"""

from .paper import PAPER_HARDWARE, PAPER_TIMES_S
from .stats import Timing, summarize

__all__ = ["PAPER_HARDWARE", "PAPER_TIMES_S", "Timing", "summarize"]
