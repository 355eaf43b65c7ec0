"""Two .onnx files of the same model (A: before a graph edit, B: after), timed interleaved per engine.

    python benchmarks/ab_models.py old.onnx new.onnx --size 384x512 --reps 30 --threads 2 \
        --engines onnxruntime,openvino

Each engine opens both files through ``Encoder(engine=...)`` (so each passes its gate), warms
up 3 runs, then alternates single runs A, B, B, A, ... on one golden image ``(1, H, W, 3)``;
prints the median ms of each, the ratio A/B (> 1: B is faster), the largest descriptor
difference between A and B, and the load average before and after (on a shared machine read
the ratio, not the times).
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from regatt_sdk.card import golden_image
from regatt_sdk.encoder import Encoder


def ab_times(a: str, b: str, engine: str, image: np.ndarray, reps: int, threads: int) -> dict[str, float]:
    """Median seconds of ``a`` and ``b`` on ``engine`` (runs interleaved) and their max |diff|."""
    engines = {k: Encoder(p, engine=engine, threads=threads).engine for k, p in (("a", a), ("b", b))}
    outs = {k: [e.run(image)["descriptor"] for _ in range(3)][-1] for k, e in engines.items()}
    times: dict[str, list[float]] = {"a": [], "b": []}
    for i in range(reps):
        for k in ("a", "b") if i % 2 == 0 else ("b", "a"):
            start = time.perf_counter()
            engines[k].run(image)
            times[k].append(time.perf_counter() - start)
    return {
        "a": float(np.median(times["a"])),
        "b": float(np.median(times["b"])),
        "max_diff": float(np.abs(outs["a"] - outs["b"]).max()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a")
    parser.add_argument("b")
    parser.add_argument("--size", default="384x512", help="HxW of the prepared image")
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--engines", default="onnxruntime,openvino")
    args = parser.parse_args()
    h, _, w = args.size.partition("x")
    image = golden_image(int(h), int(w), 5)[None]
    print(f"load average at start {os.getloadavg()}")
    for engine in args.engines.split(","):
        r = ab_times(args.a, args.b, engine, image, args.reps, args.threads)
        print(
            f"{engine}: A {r['a'] * 1e3:.1f} ms, B {r['b'] * 1e3:.1f} ms (median of {args.reps}, "
            f"{args.threads} threads, {args.size}), A/B {r['a'] / r['b']:.3f}, max|diff| {r['max_diff']:.2e}"
        )
    print(f"load average at end {os.getloadavg()}")


if __name__ == "__main__":
    main()
