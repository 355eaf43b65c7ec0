"""Engines x precisions timed one process each, the processes interleaved.

``engine_bench.py`` times every engine inside one process. On 2 cores that measures the engines
disturbing each other: onnxruntime's worker threads keep spinning after a run and take the CPU
from the OpenVINO run that follows (measured: OpenVINO fp32 18.9 ms in one process with
onnxruntime, 9.8-11.7 ms alone). A user runs one engine per process, so this script starts one
fresh process per (file, engine, precision) and round, in turn (A, B, C, A, B, C, ...), each
timing ``--runs`` warm runs of ``Encoder.encode_prepared`` on one prepared image; the reported
figure is the median over rounds of each process's median.

    python benchmarks/engine_procs.py default.onnx:384x512 default-int8.onnx:384x512 --rounds 5 \
        --out benchmarks/results/engine_procs
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from engine_bench import parse_spec  # noqa: E402  (PATH:HxW, the same spec as engine_bench)

AUTO_CHILD = r"""
import sys
from regatt_sdk import Encoder
print(Encoder(sys.argv[1], engine="auto", threads=int(sys.argv[2])).choice.reason)
"""

CHILD = r"""
import json, sys, time
import numpy as np
from regatt_sdk import Encoder
from regatt_sdk.preprocess import prepare
path, engine, precision, h, w, runs, threads = sys.argv[1:8]
rng = np.random.default_rng(0)
image = rng.integers(0, 255, (int(h), int(w), 3), dtype=np.uint8)
enc = Encoder(path, engine=engine, precision=precision, threads=int(threads))
x = prepare(image, max(int(h), int(w)))[None]
for _ in range(5):
    enc.encode_prepared(x)
ts = []
for _ in range(int(runs)):
    t = time.perf_counter()
    v = enc.encode_prepared(x)
    ts.append(time.perf_counter() - t)
print(json.dumps({"ms": 1e3 * float(np.median(ts)), "vector": [float(a) for a in v[0]]}))
"""

VARIANTS = (("onnxruntime", "fp32"), ("openvino", "fp32"), ("openvino", "bf16"))
INT8_VARIANTS = (("onnxruntime", "fp32"), ("openvino", "fp32"))  # an INT8 file runs as it is


def run_child(path: Path, engine: str, precision: str, h: int, w: int, runs: int, threads: int) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(path), engine, precision, str(h), str(w), str(runs), str(threads)],
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    import numpy as np

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+", help="PATH:HxW; a file whose name contains 'int8' runs as it is")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/engine_procs"))
    args = ap.parse_args(argv)
    jobs = []
    for spec in args.models:
        path, h, w = parse_spec(spec)
        for engine, precision in INT8_VARIANTS if "int8" in path.name else VARIANTS:
            jobs.append((path, engine, precision, h, w))
    load_start = os.getloadavg()
    times: dict[int, list[float]] = {i: [] for i in range(len(jobs))}
    vectors: dict[int, np.ndarray] = {}
    errors: dict[int, str] = {}
    for r in range(args.rounds):
        for i, (path, engine, precision, h, w) in enumerate(jobs):
            if i in errors:
                continue
            got = run_child(path, engine, precision, h, w, args.runs, args.threads)
            if "error" in got:
                errors[i] = got["error"]
                continue
            times[i].append(got["ms"])
            vectors[i] = np.array(got["vector"])
        print(f"round {r + 1}/{args.rounds}", flush=True)
    rows = []
    base: dict[str, tuple[float, np.ndarray]] = {}
    for i, (path, engine, precision, h, w) in enumerate(jobs):
        row = {"file": path.name, "input": f"{h}x{w}", "engine": engine, "precision": precision}
        if i in errors:
            row["refused"] = errors[i]
        else:
            row["ms"] = float(np.median(times[i]))
            row["ms_rounds"] = [round(t, 2) for t in times[i]]
            if engine == "onnxruntime" and precision == "fp32":
                base[path.name] = (row["ms"], vectors[i])
            ref = base.get(path.name)
            if ref is not None:
                row["speedup_vs_ort"] = ref[0] / row["ms"]
                row["cosine_to_ort"] = float(vectors[i] @ ref[1])
        rows.append(row)
    auto = {}
    args.out.with_suffix(".auto-cache.json").unlink(missing_ok=True)
    for spec in args.models:
        path = parse_spec(spec)[0]
        if "int8" not in path.name:
            out = subprocess.run(
                [sys.executable, "-c", AUTO_CHILD, str(path), str(args.threads)],
                capture_output=True,
                text=True,
                env=dict(os.environ, REGATT_ENGINE_CACHE=str(args.out.with_suffix(".auto-cache.json"))),
            )  # a cache of its own, emptied first: a fresh probe, not an earlier answer
            auto[path.name] = (out.stdout.strip().splitlines() or [out.stderr.strip()[-200:]])[-1]
    fp32 = {r["file"]: r["ms"] for r in rows if r.get("engine") == "onnxruntime" and "int8" not in r["file"]}
    for r in rows:
        twin = r["file"].replace("-int8", "")
        if "int8" in r["file"] and "ms" in r and twin in fp32:
            r["speedup_vs_ort_fp32_file"] = fp32[twin] / r["ms"]
    result = {
        "rows": rows,
        "rounds": args.rounds,
        "runs": args.runs,
        "threads": args.threads,
        "load_start": [round(x, 2) for x in load_start],
        "load_end": [round(x, 2) for x in os.getloadavg()],
        "cpus": os.cpu_count(),
        "auto_choice": auto,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# Engines x precisions, one process each (processes interleaved)",
        "",
        f"Made by `benchmarks/engine_procs.py`; {args.threads} threads; {args.rounds} rounds of one fresh process per row, "
        f"{args.runs} warm runs each; median over rounds of each process's median. Load average at start "
        f"{result['load_start']}, at end {result['load_end']} ({result['cpus']} CPUs).",
        "",
        "| file | input | engine | precision | ms | vs onnxruntime (same file) | vs onnxruntime fp32 file | cosine to onnxruntime |",
        "| --- | --- | --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        if "refused" in r:
            lines.append(
                f"| {r['file']} | {r['input']} | {r['engine']} | {r['precision']} | refused: {r['refused']} | | | |"
            )
            continue
        sp = f"{r['speedup_vs_ort']:.2f}x" if "speedup_vs_ort" in r else ""
        sf = f"{r['speedup_vs_ort_fp32_file']:.2f}x" if "speedup_vs_ort_fp32_file" in r else ""
        cos = f"{r['cosine_to_ort']:.6f}" if "cosine_to_ort" in r else ""
        lines.append(
            f"| {r['file']} | {r['input']} | {r['engine']} | {r['precision']} | {r['ms']:.1f} | {sp} | {sf} | {cos} |"
        )
    lines += ["", '`engine="auto"` (its own probe, a fresh process per file):', ""]
    lines += [f"- {name}: {reason}" for name, reason in auto.items()]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
