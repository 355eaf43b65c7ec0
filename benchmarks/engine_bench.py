"""Engines x precisions on the same .onnx files, in one interleaved run, beside the machine's
truthful fp32 peak (``regatt_sdk.bench.peak``).

    python benchmarks/engine_bench.py --model default.onnx:384x512 --model paper.onnx:768x1024 \
        [--int8 default-int8.onnx:384x512] --rounds 8 --out benchmarks/results/engines

For each model, ``regatt_sdk.bench.matrix.bench_model`` (the code ``regatt bench --engine``
runs too): every engine/precision opened through ``Encoder(engine=..., precision=...)``, so it
passes its gate first (a refused one is listed with the reason, never timed); then rounds of one
run each, in turn (A, B, C, A, B, C, ...), median ms per image; descriptor cosine to
onnxruntime on the bench image; peak RSS of a fresh process per engine (open + 3 runs); the
model's GFLOP/s (MACs from onnxruntime's profile) as a share of the measured and the
theoretical peak. Writes JSON + Markdown.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

from regatt_sdk.bench.machine import load_average, machine_info
from regatt_sdk.bench.matrix import FP32_VARIANTS, INT8_VARIANTS, apply_peak, bench_model
from regatt_sdk.bench.peak import machine_peak

PAPER_MS = {"none": 95.0, "regional": 115.0, "context": 123.0}  # the paper's GPU times, 1024 px


def parse_spec(text: str) -> tuple[Path, int, int]:
    path, _, size = text.rpartition(":")
    h, _, w = size.partition("x")
    return Path(path), int(h), int(w)


def write_markdown(result: dict, out: Path) -> None:
    m = result["machine"]
    peak = result["peak_start"]
    lines = [
        "# Engines x precisions (one interleaved run)",
        "",
        f"Machine: {m.get('cpu_model', '?')}, {result['threads']} threads, load average at start {result['load_start']}, "
        f"at end {result['load_end']}. "
        + (
            "**The machine was shared with other jobs** (load average above its cores): absolute times are "
            "inflated and noisy; ratios within a model's block were measured interleaved."
            if max(result["load_start"][0], result["load_end"][0]) > (os.cpu_count() or 1)
            else "Quiet machine (load average below its cores); runs interleaved within each model's block."
        ),
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
        models.append(bench_model(path, h, w, args.rounds, args.threads, FP32_VARIANTS, path.stem, separate=False))
    for spec in args.int8:
        path, h, w = parse_spec(spec)
        models.append(bench_model(path, h, w, args.rounds, args.threads, INT8_VARIANTS, path.stem, separate=False))
    peak_end = machine_peak(args.threads, sizes=sizes, runs=5)
    measured = max(peak_start.measured_gflops, peak_end.measured_gflops)
    theoretical = max(p.theoretical_gflops or 0 for p in (peak_start, peak_end)) or None
    notes = list(peak_start.notes) + list(peak_end.notes) + apply_peak(models, measured, theoretical)
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
