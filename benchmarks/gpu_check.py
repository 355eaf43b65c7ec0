"""GPU check for a lent accelerator machine (prepared; needs onnxruntime-gpu and, to build the
model, torch): CUDA parity with CPU and the per-image p50 at S=1024, fp32, beside the paper.

1. The model: ``--model X.onnx``, or the paper's configuration built with random weights
   (``regatt_export.bench_models``, Caffe ResNet-101, context attention) into ``--cache``.
2. Parity: the same images through onnxruntime CPU and CUDA at several sizes (none of them the
   traced size); every descriptor pair must have cosine >= ``--min-cosine`` (0.9999).
3. Latency: CUDA p50/p90 at 768x1024 (S=1024), after warm-up, and the paper's 0.123 s.

Exit status 0 when parity holds, 1 when it fails, 2 when CUDA is not usable. Results go to
``--json`` (default ``$OUT/gpu_check.json`` when ``$OUT`` is set).

    .venv/bin/python benchmarks/gpu_check.py --runs 20
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

#: (label, height, width): the paper's size both ways, an odd size, a square
PARITY_SIZES = (("768x1024", 768, 1024), ("1024x768", 1024, 768), ("683x1024", 683, 1024), ("512x512", 512, 512))


def build_model(cache: Path, variant: str) -> Path:
    from regatt_export.bench_models import prepare_variant

    return prepare_variant("resnet101-caffe", variant, 5, 0, cache).onnx_path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, help="exported .onnx (default: build the paper's configuration)")
    ap.add_argument("--variant", default="context", choices=("none", "regional", "context"))
    ap.add_argument("--cache", type=Path, default=Path("/tmp/regatt-gpu-cache"))
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--min-cosine", type=float, default=0.9999)
    ap.add_argument(
        "--json", type=Path, default=Path(os.environ["OUT"]) / "gpu_check.json" if os.environ.get("OUT") else None
    )
    args = ap.parse_args()

    import onnxruntime as ort

    from regatt_sdk.bench.paper import PAPER_TIMES_S
    from regatt_sdk.bench.stats import summarize
    from regatt_sdk.engines.ort import create_session

    report: dict[str, object] = {"onnxruntime": ort.__version__, "providers_available": ort.get_available_providers()}
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        print("CUDAExecutionProvider not available in this onnxruntime build", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    model = args.model or build_model(args.cache, args.variant)
    report["model"], report["build_s"] = str(model), time.perf_counter() - t0
    cpu = create_session(model, "cpu")
    t0 = time.perf_counter()
    gpu = create_session(model, "cuda")
    report["cuda_session_s"] = time.perf_counter() - t0
    report["cuda_providers"] = gpu.get_providers()
    if gpu.get_providers()[0] != "CUDAExecutionProvider":
        print(f"CUDA did not start: session runs on {gpu.get_providers()}", file=sys.stderr)
        return 2
    name, out = cpu.get_inputs()[0].name, cpu.get_outputs()[0].name
    rng = np.random.default_rng(0)
    parity = []
    for label, h, w in PARITY_SIZES:
        image = rng.integers(0, 256, (1, h, w, 3), dtype=np.uint8)
        a = cpu.run([out], {name: image})[0]
        b = gpu.run([out], {name: image})[0]
        cos = float(np.sum(a * b) / (np.linalg.norm(a) * np.linalg.norm(b)))
        parity.append(
            {"size": label, "cosine": cos, "max_abs_diff": float(np.abs(a - b).max()), "ok": cos >= args.min_cosine}
        )
        print(
            f"parity {label:>9}: cosine {cos:.7f}  max|diff| {parity[-1]['max_abs_diff']:.2e}  {'ok' if parity[-1]['ok'] else 'FAIL'}"
        )
    report["parity"] = parity
    image = rng.integers(0, 256, (1, 768, 1024, 3), dtype=np.uint8)
    t0 = time.perf_counter()
    gpu.run([out], {name: image})
    report["first_call_ms"] = (time.perf_counter() - t0) * 1000
    for _ in range(args.warmup):
        gpu.run([out], {name: image})
    samples = []
    for _ in range(args.runs):
        t0 = time.perf_counter()
        gpu.run([out], {name: image})
        samples.append(time.perf_counter() - t0)
    timing = summarize(samples)
    report["cuda_768x1024"] = timing.to_dict()
    report["paper_s"] = PAPER_TIMES_S[args.variant]
    print(
        f"CUDA fp32 768x1024 ({args.variant}): p50 {timing.p50_ms:.1f} ms, p90 {timing.p90_ms:.1f} ms, "
        f"{timing.images_per_s:.1f} img/s; paper {PAPER_TIMES_S[args.variant]:.3f} s"
    )
    ok = all(p["ok"] for p in parity)
    report["parity_ok"] = ok
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
