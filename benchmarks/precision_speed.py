"""Speed of each engine x precision x file, and of ``precision="auto"``, one fresh process per
variant and round, the variants interleaved (A, B, C, A, B, C, ...).

Each process opens its encoder as users do (``open_encoder(EncoderOptions(engine=, precision=))``:
gated; ``auto`` probes once and caches in ``--cache``, emptied first of everything but the gates'
retrieval verdicts, so the first ``auto`` process probes here, now, and the others reuse its
choice), runs the image twice (first call, static graph), then times ``--runs`` runs; the figure
is the median of the processes' medians. Speed-ups are against onnxruntime fp32 on the fp32 file
of the same model (``--job`` labels ``MODEL/...``).

    .venv/bin/python benchmarks/precision_speed.py \
        --job default/ort=/tmp/rg24/default.onnx:384x512:onnxruntime:fp32 \
        --job default/auto=/tmp/rg24/default.onnx:384x512:auto:auto ... --out benchmarks/results/precision_speed
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, sys, time
import numpy as np
from regatt_sdk.card import golden_image
from regatt_sdk.compose import EncoderOptions, open_encoder
path, engine, precision, h, w, runs, threads = sys.argv[1:8]
h, w, runs = int(h), int(w), int(runs)
t = time.perf_counter()
enc = open_encoder(path, EncoderOptions(engine=engine, precision=precision, threads=int(threads), max_side=max(h, w)))
opened = time.perf_counter() - t
x = golden_image(h, w, 11)[None]
for _ in range(2):
    enc.encode_prepared(x)
ts = []
for _ in range(runs):
    t = time.perf_counter()
    v = enc.encode_prepared(x)
    ts.append(1000 * (time.perf_counter() - t))
c = enc.choice
print(json.dumps({"ms": float(np.median(ts)), "open_s": opened, "vector": [float(a) for a in v[0]],
                  "engine": c.engine, "precision": c.precision, "reason": c.reason, "cached": c.cached}))
"""


def parse_job(text: str) -> tuple[str, Path, int, int, str, str]:
    label, _, spec = text.partition("=")
    path, size, engine, precision = spec.rsplit(":", 3)
    h, w = (int(v) for v in size.split("x"))
    return label, Path(path), h, w, engine, precision


def run_child(job, runs: int, threads: int, cache: Path) -> dict:
    _label, path, h, w, engine, precision = job
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(path), engine, precision, str(h), str(w), str(runs), str(threads)],
        capture_output=True, text=True, env=dict(os.environ, REGATT_ENGINE_CACHE=str(cache)),
    )  # fmt: skip
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    import numpy as np

    from regatt_sdk.bench.machine import machine_info

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--job", action="append", required=True, help="MODEL/NAME=PATH:HxW:ENGINE:PRECISION")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cache", type=Path, default=Path("/tmp/regatt-precision-speed.json"))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/precision_speed"))
    args = ap.parse_args(argv)
    jobs = [parse_job(j) for j in args.job]
    try:  # keep the gates' retrieval verdicts (no timing in them), drop every probe's choice
        kept = {k: v for k, v in json.loads(args.cache.read_text()).items() if k.startswith("retrieval|")}
    except (OSError, ValueError):
        kept = {}
    args.cache.write_text(json.dumps(kept))
    load_start = os.getloadavg()
    got: dict[int, list[dict]] = {i: [] for i in range(len(jobs))}
    errors: dict[int, str] = {}
    for r in range(args.rounds):
        for i, job in enumerate(jobs):
            if i in errors:
                continue
            res = run_child(job, args.runs, args.threads, args.cache)
            if "error" in res:
                errors[i] = res["error"]
            else:
                got[i].append(res)
        print(f"round {r + 1}/{args.rounds}", flush=True)
    rows = []
    base: dict[str, tuple[float, np.ndarray]] = {}
    for i, (label, path, h, w, engine, precision) in enumerate(jobs):
        row = {"job": label, "file": path.name, "input": f"{h}x{w}", "engine": engine, "precision": precision}
        if i in errors:
            row["error"] = errors[i]
            rows.append(row)
            continue
        procs = got[i]
        row.update(
            ms=float(np.median([p["ms"] for p in procs])), ms_rounds=[round(p["ms"], 2) for p in procs],
            open_s=[round(p["open_s"], 2) for p in procs], chosen=f"{procs[-1]['engine']} {procs[-1]['precision']}",
            reason=procs[0]["reason"],
        )  # fmt: skip
        model = label.split("/")[0]
        if engine == "onnxruntime" and precision == "fp32" and "int8" not in path.name:
            base[model] = (row["ms"], np.asarray(procs[0]["vector"]))
        rows.append(row)
        row["_vector"] = procs[0]["vector"]
    for row in rows:
        ref = base.get(row["job"].split("/")[0])
        vec = row.pop("_vector", None)
        if ref is not None and vec is not None:
            row["speedup_vs_ort_fp32"] = ref[0] / row["ms"]
            row["cosine_to_ort_fp32"] = float(np.asarray(vec) @ ref[1])
    report = {
        "rounds": args.rounds, "runs": args.runs, "threads": args.threads, "machine": machine_info(args.threads),
        "load_start": [round(x, 2) for x in load_start], "load_end": [round(x, 2) for x in os.getloadavg()],
        "rows": rows,
    }  # fmt: skip
    report["command"] = " ".join(["python", *sys.argv])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))
    return 0


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [
        "# Speed of each variant, one fresh process per variant and round",
        "",
        f"Made by `{report.get('command', 'benchmarks/precision_speed.py')}`.",
        "",
        f"{m['cpu_model']}, {m['usable_cpus']} usable CPUs, {report['threads']} threads; CPU flags "
        f"{', '.join(m['simd'])}; units {', '.join(f'{k} {v}' for k, v in m['units'].items())}. "
        f"{report['rounds']} rounds interleaved, {report['runs']} timed runs per process after 2 warm ones; median "
        f"of the process medians. Load average {report['load_start']} -> {report['load_end']}.",
        "",
        "| job | file | input | engine | precision | chosen | ms | x onnxruntime fp32 | cosine to it | per round "
        "| open + gate s |",
        "|---|---|---|---|---|---|---:|---:|---:|---|---|",
    ]
    for r in report["rows"]:
        if "error" in r:
            lines.append(f"| {r['job']} | {r['file']} | {r['input']} | {r['engine']} | {r['precision']} | failed: "
                         f"{r['error']} | | | | | |")  # fmt: skip
            continue
        sp = f"{r['speedup_vs_ort_fp32']:.2f}x" if r.get("speedup_vs_ort_fp32") else "–"
        cos = f"{r['cosine_to_ort_fp32']:.5f}" if r.get("cosine_to_ort_fp32") is not None else "–"
        lines.append(
            f"| {r['job']} | {r['file']} | {r['input']} | {r['engine']} | {r['precision']} | {r['chosen']} "
            f"| {r['ms']:.1f} | {sp} | {cos} | {', '.join(map(str, r['ms_rounds']))} "
            f"| {', '.join(map(str, r['open_s']))} |"
        )
    autos = [r for r in report["rows"] if r.get("precision") == "auto" and "reason" in r]
    if autos:
        lines += ["", "What `precision=auto` chose and why (the first process's probe):", ""]
        lines += [f"- {r['job']}: {r['reason']}" for r in autos]
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
