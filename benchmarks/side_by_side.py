"""Engines side by side in one process, and the onnxruntime spinning policy, measured.

Each configuration runs in a fresh process, the configurations interleaved over ``--rounds``
(A, B, C, A, B, C, ...); each process opens its encoders through the SDK (gated), warms them, and
times ``--runs`` runs of one prepared image; the figure is the median over rounds of each
process's median:

- ``ort``: an onnxruntime encoder alone, its workers spinning (onnxruntime's default) or not;
- ``ov``: an OpenVINO encoder alone (opened through the SDK: its gates' onnxruntime references
  are made and closed on the way);
- ``ov+ort``: an OpenVINO encoder in a process that also holds an onnxruntime encoder and uses
  both in turn (one onnxruntime run, then the timed OpenVINO run), the onnxruntime encoder
  spinning or not: the case of issue 24 (30.2 ms beside a live onnxruntime encoder vs 16.5 alone);
- ``ov+idle-ort``: the onnxruntime encoder opened and run once, then idle.

The target: OpenVINO beside an onnxruntime encoder within 15 % of its speed alone (this is the
benchmark of it; ``tests/test_precision_gate.py`` checks the mechanism: the SDK's reference
sessions never spin and are closed after use).

    .venv/bin/python benchmarks/side_by_side.py /tmp/rg24/default.onnx --size 384x512 --rounds 3 \
        --out benchmarks/results/side_by_side
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
from regatt_sdk.engines import ort
path, mode, spin, precision, h, w, runs, threads = sys.argv[1:9]
h, w, runs, threads = int(h), int(w), int(runs), int(threads)
ort.ENCODER_SPINNING = spin == "on"
x = golden_image(h, w, 5)[None]
opts = dict(threads=threads, max_side=max(h, w))
encs = {}
if mode in ("ort", "ov+ort", "ov+idle-ort"):
    encs["ort"] = open_encoder(path, EncoderOptions(engine="onnxruntime", **opts))
if mode != "ort":
    encs["ov"] = open_encoder(path, EncoderOptions(engine="openvino", precision=precision, **opts))
for e in encs.values():
    for _ in range(3):
        e.encode_prepared(x)
timed = encs["ort"] if mode == "ort" else encs["ov"]
other = encs["ort"] if mode == "ov+ort" else None
ts = []
for _ in range(runs):
    if other is not None:
        other.encode_prepared(x)  # the other engine runs just before, as in an app using both
    t = time.perf_counter()
    timed.encode_prepared(x)
    ts.append(1000 * (time.perf_counter() - t))
print(json.dumps({"ms": float(np.median(ts)), "spinning": getattr(encs.get("ort", timed).engine, "spinning", None)}))
"""

CONFIGS = (
    ("ort", "on"), ("ort", "off"), ("ov", "off"), ("ov+ort", "on"), ("ov+ort", "off"), ("ov+idle-ort", "on"),
)  # fmt: skip


def run_child(path: Path, mode: str, spin: str, precision: str, h: int, w: int, runs: int, threads: int) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(path), mode, spin, precision, str(h), str(w), str(runs), str(threads)],
        capture_output=True, text=True,
    )  # fmt: skip
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    import numpy as np

    from regatt_sdk.bench.machine import machine_info

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("--size", default="384x512")
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], help="OpenVINO precisions")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/side_by_side"))
    args = ap.parse_args(argv)
    h, w = (int(v) for v in args.size.split("x"))
    jobs = [(m, s, "fp32") for m, s in CONFIGS if m == "ort"]
    jobs += [(m, s, p) for p in args.precisions for m, s in CONFIGS if m != "ort"]
    load_start = os.getloadavg()
    got: dict[int, list[float]] = {i: [] for i in range(len(jobs))}
    errors: dict[int, str] = {}
    for r in range(args.rounds):
        for i, (mode, spin, precision) in enumerate(jobs):
            if i in errors:
                continue
            res = run_child(args.model, mode, spin, precision, h, w, args.runs, args.threads)
            if "error" in res:
                errors[i] = res["error"]
            else:
                got[i].append(res["ms"])
        print(f"round {r + 1}/{args.rounds}", flush=True)
    rows = []
    for i, (mode, spin, precision) in enumerate(jobs):
        row = {"mode": mode, "spinning": spin, "precision": precision if mode != "ort" else "fp32"}
        if i in errors:
            row["error"] = errors[i]
        else:
            row["ms"] = float(np.median(got[i]))
            row["ms_rounds"] = [round(t, 2) for t in got[i]]
        rows.append(row)
    ms = {(r["mode"], r["spinning"], r["precision"]): r.get("ms") for r in rows}
    for r in rows:
        alone = ms.get(("ov", "off", r["precision"])) if r["mode"].startswith("ov") else ms.get(("ort", "on", "fp32"))
        r["vs_alone"] = r["ms"] / alone if r.get("ms") and alone else None
    report = {
        "model": str(args.model), "input": args.size, "rounds": args.rounds, "runs": args.runs,
        "threads": args.threads, "machine": machine_info(args.threads), "load_start": list(load_start),
        "load_end": list(os.getloadavg()), "rows": rows,
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
        "# Engines side by side in one process; onnxruntime spinning",
        "",
        f"Made by `{report.get('command', 'benchmarks/side_by_side.py')}`.",
        "",
        f"{report['model']}, input {report['input']}, {report['threads']} threads; {m['cpu_model']}, "
        f"{m['usable_cpus']} usable CPUs, flags {', '.join(m['simd'])}. One fresh process per configuration and "
        f"round, {report['rounds']} rounds interleaved, {report['runs']} timed runs each; median of the process "
        f"medians. Load average {report['load_start']} -> {report['load_end']}.",
        "",
        "| configuration | onnxruntime spinning | OpenVINO precision | ms (timed engine) | vs alone | per round |",
        "|---|---|---|---:|---:|---|",
    ]
    names = {
        "ort": "onnxruntime alone",
        "ov": "OpenVINO alone (through the SDK: gate references closed)",
        "ov+ort": "OpenVINO, an onnxruntime encoder in the same process used in turn",
        "ov+idle-ort": "OpenVINO, an onnxruntime encoder in the same process idle",
    }
    for r in report["rows"]:
        prec = r["precision"] if r["mode"] != "ort" else "–"
        if "error" in r:
            lines.append(f"| {names[r['mode']]} | {r['spinning']} | {prec} | failed: {r['error']} | | |")
            continue
        vs = f"{r['vs_alone']:.2f}x" if r.get("vs_alone") else "–"
        lines.append(
            f"| {names[r['mode']]} | {r['spinning']} | {prec} | {r['ms']:.1f} | {vs} | {', '.join(map(str, r['ms_rounds']))} |"
        )
    lines += [
        "",
        "vs alone: OpenVINO rows against OpenVINO alone at the same precision; onnxruntime rows against "
        "onnxruntime alone with spinning (onnxruntime's default).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
