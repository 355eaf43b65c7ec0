"""Peak memory of ``encode_to_store`` versus collection size: it must stay flat.

Writes N small synthetic PNGs (smooth gradients + noise, 64x48 .. 96x72), then, each in a fresh
subprocess, encodes the first n of them for every n in ``--sizes`` and records the process's peak
resident set size (``VmHWM``) and the RSS right before encoding (after imports and model load).

The encoder is a numpy stand-in with the real Encoder's interface (``--dim``, default 4096: a
store of 2,000 rows is 32 MiB, so holding the vectors in RAM would show) unless ``--model`` names
an exported .onnx file, which is then run by onnxruntime through ``regatt_sdk.Encoder``.

    .venv/bin/python benchmarks/encode_memory.py                # 100 vs 2000, fake encoder
    .venv/bin/python benchmarks/encode_memory.py --model tiny.onnx --sizes 100 2000

Results: ``benchmarks/results/encode_memory.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"

CHILD = r"""
import json, sys, time
import numpy as np

def vm(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return 0

class FakeCard:
    def __init__(self, dim):
        self.hash, self.dim, self.max_side, self.backbone = f"bench-fake-{dim}", dim, 96, "fake"

class FakeEncoder:
    '''numpy stand-in: (N, h, w, 3) uint8 -> (N, dim) float32 unit rows.'''
    def __init__(self, dim):
        self.card, self.dim, self.max_side = FakeCard(dim), dim, 96
    def encode_prepared(self, batch):
        flat = batch.reshape(len(batch), -1).astype(np.float32) + 1.0
        out = np.resize(flat, (len(batch), self.dim)) if flat.shape[1] < self.dim else flat[:, :self.dim]
        out = np.ascontiguousarray(out, dtype=np.float32)
        return out / np.linalg.norm(out, axis=1, keepdims=True)

args = json.loads(sys.argv[1])
from regatt_sdk.pipeline import encode_to_store
if args["model"]:
    from regatt_sdk.encoder import Encoder
    encoder = Encoder(args["model"], device="cpu")
else:
    encoder = FakeEncoder(args["dim"])
before = vm("VmRSS")
start = time.perf_counter()
report = encode_to_store(encoder, ["@" + args["list"]], args["store"], progress=False,
                         batch_size=args["batch_size"], workers=args["workers"])
elapsed = time.perf_counter() - start
print(json.dumps({"n": report.encoded, "failed": report.failed, "dim": encoder.dim,
                  "rss_before_encoding": before, "peak_rss": vm("VmHWM"),
                  "rss_after": vm("VmRSS"), "seconds": elapsed}))
"""


def make_images(folder: Path, n: int, seed: int = 0) -> list[str]:
    """``n`` synthetic PNGs in ``folder``; returns their paths."""
    import cv2

    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        h, w = (48, 64) if i % 2 else (72, 96)
        yy, xx = np.mgrid[0:h, 0:w]
        base = np.stack([xx * 255 / w, yy * 255 / h, (xx + yy + i) % 256], axis=-1)
        img = np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)
        path = folder / f"{i:06d}.png"
        cv2.imwrite(str(path), img)
        paths.append(str(path))
    return paths


def measure(n: int, paths: list[str], work: Path, args: argparse.Namespace) -> dict:
    listing = work / f"list{n}.txt"
    listing.write_text("".join(p + "\n" for p in paths[:n]))
    store = work / f"store{n}"
    spec = {"model": args.model, "dim": args.dim, "list": str(listing), "store": str(store),
            "batch_size": args.batch_size, "workers": args.workers}  # fmt: skip
    out = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(spec)], capture_output=True, text=True, check=True
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["store_bytes"] = sum(f.stat().st_size for f in store.iterdir())
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 2000, 4000])
    parser.add_argument("--model", default=None, help="exported .onnx (default: numpy fake)")
    parser.add_argument("--dim", type=int, default=4096, help="fake encoder's descriptor length")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS / "encode_memory")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="regatt-bench-") as tmp:
        work = Path(tmp)
        (work / "img").mkdir()
        t0 = time.perf_counter()
        paths = make_images(work / "img", max(args.sizes))
        print(f"wrote {len(paths)} images in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        runs = []
        for n in args.sizes:
            r = measure(n, paths, work, args)
            runs.append(r)
            print(
                f"n={r['n']:>6}  peak RSS {r['peak_rss'] / 2**20:7.1f} MiB  "
                f"(before encoding {r['rss_before_encoding'] / 2**20:7.1f} MiB)  "
                f"{r['seconds']:.1f} s  store {r['store_bytes'] / 2**20:.1f} MiB",
                file=sys.stderr,
            )
    growth = runs[-1]["peak_rss"] - runs[0]["peak_rss"]
    vectors_bytes = (runs[-1]["n"] - runs[0]["n"]) * runs[-1]["dim"] * 4
    result = {
        "encoder": args.model or f"numpy fake encoder, dim {args.dim}",
        "images": "synthetic PNG, 64x48 and 96x72 alternating",
        "batch_size": args.batch_size,
        "workers": args.workers,
        "runs": runs,
        "peak_rss_growth_bytes": growth,
        "extra_vector_bytes": vectors_bytes,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# Peak memory of `regatt encode` vs collection size",
        "",
        f"Encoder: {result['encoder']}. Images: {result['images']}. "
        f"Batch {args.batch_size}, {args.workers} decode workers, {os.cpu_count()} CPUs.",
        "Each size runs in a fresh process; peak RSS is the process's VmHWM.",
        "",
        "| images | peak RSS (MiB) | RSS before encoding (MiB) | seconds | store (MiB) |",
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in runs:
        lines.append(
            f"| {r['n']} | {r['peak_rss'] / 2**20:.1f} | {r['rss_before_encoding'] / 2**20:.1f} "
            f"| {r['seconds']:.1f} | {r['store_bytes'] / 2**20:.1f} |"
        )
    lines += [
        "",
        f"Peak RSS grows by {growth / 2**20:.1f} MiB from {runs[0]['n']} to {runs[-1]['n']} images, "
        f"while the extra descriptors written to the store total {vectors_bytes / 2**20:.1f} MiB: "
        "the vectors are flushed to disk in chunks, never all held in memory.",
        "",
    ]
    args.out.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
