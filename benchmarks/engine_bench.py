"""Engines x precisions on the same .onnx files, in one interleaved run, beside the machine's
truthful fp32 peak (``regatt_sdk.bench.peak``).

    python benchmarks/engine_bench.py --model default.onnx:384x512 --model paper.onnx:768x1024 \
        [--int8 default-int8.onnx:384x512] --rounds 8 --out benchmarks/results/engines

For each model: every engine/precision is opened through ``Encoder(engine=..., precision=...)``,
so it passes its gate first (a refused one is listed with the reason, never timed); then rounds
of one run each, in turn (A, B, C, A, B, C, ...), median ms per image; descriptor cosine to
onnxruntime fp32 on the bench image; peak RSS of a fresh process per engine (open + 3 runs);
the model's GFLOP/s (MACs from onnxruntime's profile) as a share of the measured and the
theoretical peak. Writes JSON + Markdown.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from regatt_sdk.bench.machine import load_average, machine_info
from regatt_sdk.bench.peak import machine_peak, share
from regatt_sdk.bench.profile import profile_model
from regatt_sdk.card import golden_image, read_card
from regatt_sdk.encoder import Encoder
from regatt_sdk.errors import ModelError

VARIANTS = (("onnxruntime", "fp32"), ("openvino", "fp32"), ("openvino", "bf16"))
PAPER_MS = {"none": 95.0, "regional": 115.0, "context": 123.0}  # the paper's GPU times, 1024 px

RSS_CODE = """
import sys, numpy as np
from regatt_sdk.encoder import Encoder
from regatt_sdk.card import golden_image
enc = Encoder(sys.argv[1], engine=sys.argv[2], precision=sys.argv[3], threads=int(sys.argv[6]))
x = golden_image(int(sys.argv[4]), int(sys.argv[5]), 3)[None]
for _ in range(3):
    enc.encode_prepared(x)
# VmHWM, not ru_maxrss: on Linux ru_maxrss survives exec and reports the parent's peak
print(next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")) / 1024.0)
"""


def parse_spec(text: str) -> tuple[Path, int, int]:
    path, _, size = text.rpartition(":")
    h, _, w = size.partition("x")
    return Path(path), int(h), int(w)


def peak_rss(path: Path, engine: str, precision: str, h: int, w: int, threads: int) -> float | None:
    out = subprocess.run(
        [sys.executable, "-c", RSS_CODE, str(path), engine, precision, str(h), str(w), str(threads)],
        capture_output=True, text=True,
    )  # fmt: skip
    try:
        return float(out.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return None


def bench_model(path: Path, h: int, w: int, rounds: int, threads: int, variants, label: str) -> dict:
    card = read_card(path)
    x = golden_image(h, w, 11)[None]
    opened: dict[str, Encoder] = {}
    refused: dict[str, str] = {}
    gate: dict[str, dict] = {}
    for engine, precision in variants:
        key = f"{engine} {precision}"
        t = time.perf_counter()
        try:
            enc = Encoder(path, engine=engine, precision=precision, threads=threads, max_side=max(h, w))
        except ModelError as exc:
            refused[key] = str(exc)
            continue
        opened[key] = enc
        g = enc.choice.gates[0]
        gate[key] = {
            "passed": g.passed,
            "max_diff": g.max_diff,
            "min_cosine": g.min_cosine,
            "open_and_gate_s": time.perf_counter() - t,
        }
    first: dict[str, float] = {}
    for key, enc in opened.items():
        t = time.perf_counter()
        enc.encode_prepared(x)
        first[key] = 1000 * (time.perf_counter() - t)
        enc.encode_prepared(x)  # openvino shapes=auto: the second sight compiles the static graph
    times: dict[str, list[float]] = {k: [] for k in opened}
    for _ in range(rounds):
        for key, enc in opened.items():
            t = time.perf_counter()
            enc.encode_prepared(x)
            times[key].append(1000 * (time.perf_counter() - t))
    ref_key = "onnxruntime fp32" if "onnxruntime fp32" in opened else next(iter(opened))
    ref = opened[ref_key].encode_prepared(x)[0]
    prof = profile_model(path, x, threads, runs=2)
    macs = prof.macs
    rows = []
    for key, enc in opened.items():
        ms = float(np.median(times[key]))
        vec = enc.encode_prepared(x)[0]
        engine, precision = key.split()
        rows.append(
            {
                "model": label, "engine": engine, "precision": precision, "file_precision": card.precision,
                "input": f"{h}x{w}", "p50_ms": ms, "min_ms": float(np.min(times[key])), "first_call_ms": first[key],
                "runs": len(times[key]), "cosine_to_ort_fp32": float(vec @ ref),
                "max_diff_to_ort_fp32": float(np.abs(vec - ref).max()),
                # an fp32 peak says nothing about bf16 or int8 compute: GFLOP/s and shares for fp32 only
                "gflops_per_s": 2.0 * macs / (ms * 1e6) if macs and card.precision == "fp32" and precision == "fp32" else None,
                "gate": gate[key],
            }
        )  # fmt: skip
    base = next((r["p50_ms"] for r in rows if r["engine"] == "onnxruntime" and r["precision"] == "fp32"), None)
    for r in rows:
        r["speedup_vs_ort_fp32"] = base / r["p50_ms"] if base else None
        r["peak_rss_mb"] = peak_rss(path, r["engine"], r["precision"], h, w, threads)
    return {"model": label, "path": str(path), "backbone": card.backbone, "attention": card.attention, "macs": macs,
            "rows": rows, "refused": refused}  # fmt: skip


def write_markdown(result: dict, out: Path) -> None:
    m = result["machine"]
    peak = result["peak_start"]
    lines = [
        "# Engines x precisions (one interleaved run)",
        "",
        f"Machine: {m.get('cpu_model', '?')}, {result['threads']} threads, load average at start {result['load_start']}, "
        f"at end {result['load_end']}. **The machine was shared with other jobs** (load average far above its 2 "
        "cores): absolute times are inflated and noisy; ratios within a model's block were measured interleaved.",
        "",
        f"Truthful fp32 peak: measured **{result['peak_gflops']:.0f} GFLOP/s** (best of onnxruntime MatMul, OpenVINO MatMul, "
        f"NumPy BLAS, at {', '.join(str(s) for s in result['peak_sizes'])}^3, start and end of the run; best: {peak['measured_by']}); "
        f"theoretical **{peak['theoretical_gflops'] or float('nan'):.0f} GFLOP/s** = {peak['cores']} cores x "
        f"{peak['flops_per_cycle']} FLOP/cycle ({peak['units']}) x {peak['clock_ghz']:.2f} GHz ({peak['clock_source']}).",
        "",
        "| model | input | engine | precision | p50 ms | vs ort fp32 | cosine to ort fp32 | first call ms | peak RSS MB | GFLOP/s | % measured peak | % theoretical | paper (GPU) |",
        "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for block in result["models"]:
        for r in block["rows"]:
            g = r["gflops_per_s"]
            pm = f"{r['pct_measured_peak']:.0f} %" if r.get("pct_measured_peak") else ""
            pt = f"{r['pct_theoretical_peak']:.0f} %" if r.get("pct_theoretical_peak") else ""
            paper = (
                f"{PAPER_MS[block['attention']]:.0f} ms"
                if block["backbone"] == "resnet101-caffe" and block["attention"] in PAPER_MS
                else ""
            )
            lines.append(
                f"| {block['model']} | {r['input']} | {r['engine']} | {r['precision']}{' (int8 file)' if r['file_precision'] == 'int8' else ''} | "
                f"{r['p50_ms']:.1f} | {r['speedup_vs_ort_fp32']:.2f}x | {r['cosine_to_ort_fp32']:.6f} | {r['first_call_ms']:.0f} | "
                f"{r['peak_rss_mb'] or float('nan'):.0f} | {g:.0f} | {pm} | {pt} | {paper} |"
                if g
                else f"| {block['model']} | {r['input']} | {r['engine']} | {r['precision']}{' (int8 file)' if r['file_precision'] == 'int8' else ''} | "
                f"{r['p50_ms']:.1f} | {r['speedup_vs_ort_fp32']:.2f}x | {r['cosine_to_ort_fp32']:.6f} | {r['first_call_ms']:.0f} | "
                f"{r['peak_rss_mb'] or float('nan'):.0f} | | | | {paper} |"
            )
        for key, why in block["refused"].items():
            lines.append(f"| {block['model']} | | {key} | refused | | | | | | | | | |")
    lines += ["", "Refused (gate reasons) and notes:", ""]
    for block in result["models"]:
        for key, why in block["refused"].items():
            lines.append(f"- {block['model']}, {key}: {why}")
    for n in result["notes"]:
        lines.append(f"- {n}")
    lines += ["", f"Command: `{result['command']}`", ""]
    out.with_suffix(".md").write_text("\n".join(lines))


def regenerate(json_path: Path) -> None:
    """Rewrite the Markdown of a recorded JSON (fp32 rows only carry GFLOP/s and peak shares)."""
    result = json.loads(json_path.read_text())
    result["notes"] = [n for n in result["notes"] if " bf16: " not in n]
    for block in result["models"]:
        for r in block["rows"]:
            if r["precision"] != "fp32":
                r["gflops_per_s"] = r["pct_measured_peak"] = r["pct_theoretical_peak"] = None
    json_path.write_text(json.dumps(result, indent=1, default=str))
    write_markdown(result, json_path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", default=[], help="PATH:HxW (fp32 file)")
    ap.add_argument(
        "--int8", action="append", default=[], help="PATH:HxW (an INT8 file: onnxruntime and openvino fp32 engines)"
    )
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--peak-sizes", default="2048,3072")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/engines"))
    args = ap.parse_args()
    sizes = tuple(int(s) for s in args.peak_sizes.split(","))
    load_start = load_average()
    peak_start = machine_peak(args.threads, sizes=sizes, runs=5)
    models = []
    for spec in args.model:
        path, h, w = parse_spec(spec)
        models.append(bench_model(path, h, w, args.rounds, args.threads, VARIANTS, path.stem))
    for spec in args.int8:
        path, h, w = parse_spec(spec)
        models.append(
            bench_model(
                path, h, w, args.rounds, args.threads, (("onnxruntime", "fp32"), ("openvino", "fp32")), path.stem
            )
        )
    peak_end = machine_peak(args.threads, sizes=sizes, runs=5)
    measured = max(peak_start.measured_gflops, peak_end.measured_gflops)
    theoretical = max(p.theoretical_gflops or 0 for p in (peak_start, peak_end)) or None
    notes = list(peak_start.notes) + list(peak_end.notes)
    for block in models:
        for r in block["rows"]:
            r["pct_measured_peak"], bad = share(r["gflops_per_s"], measured)
            r["pct_theoretical_peak"], bad2 = share(r["gflops_per_s"], theoretical)
            notes += [f"{block['model']} {r['engine']} {r['precision']}: {b}" for b in (bad, bad2) if b]
    result = {
        "command": " ".join(sys.argv), "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine_info(args.threads), "python": platform.python_version(), "threads": args.threads,
        "load_start": load_start, "load_end": load_average(), "peak_sizes": sizes,
        "peak_start": peak_start.to_dict(), "peak_end": peak_end.to_dict(),
        "peak_gflops": measured, "theoretical_gflops": theoretical, "models": models, "notes": notes,
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=1, default=str))
    write_markdown(result, args.out)
    print(args.out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
