"""The precision gate table: every engine x precision x file through the SDK's gates (the
descriptor gate and the retrieval gate, ``regatt_sdk.engines.retrieval``), and for models with
real weights the held-out Paris mAP of each variant beside fp32 onnxruntime's (no timing here:
``precision_speed.py`` times the variants).

Each variant is opened as users open it (``open_encoder(EncoderOptions(engine=, precision=))``),
so a refused one is listed with the gate's reason. Paris: every photo of ``--landmarks`` a query
(its landmark's photos the positives, itself left out), at the card's S.

    .venv/bin/regatt export -o /tmp/rg24/default.onnx
    .venv/bin/regatt export --int8 --calibration ../shared/data/imagenet-sample -o /tmp/rg24/default-int8.onnx
    .venv/bin/python benchmarks/precision_gate.py --quality /tmp/rg24/default.onnx /tmp/rg24/default-int8.onnx \
        --gate-only /tmp/rg24/r101.onnx /tmp/rg24/r101-int8.onnx --out benchmarks/results/precision_gate
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

#: (engine, compute precision) per file precision
VARIANTS = {
    "fp32": (("onnxruntime", "fp32"), ("openvino", "fp32"), ("openvino", "bf16")),
    "int8": (("onnxruntime", "fp32"), ("openvino", "fp32"), ("openvino", "bf16")),
}


def label(file_precision: str, precision: str) -> str:
    if file_precision == "fp32":
        return precision
    return file_precision if precision == "fp32" else f"{file_precision} file, {precision} compute"


def gate_row(path: Path, engine: str, precision: str, threads: int | None) -> tuple[dict, object]:
    from regatt_sdk.card import read_card
    from regatt_sdk.compose import EncoderOptions, open_encoder
    from regatt_sdk.errors import RegattError

    card = read_card(path)
    row = {"file": path.name, "file_precision": card.precision, "engine": engine, "precision": precision,
           "variant": label(card.precision, precision)}  # fmt: skip
    t = time.perf_counter()
    try:
        enc = open_encoder(path, EncoderOptions(engine=engine, precision=precision, threads=threads))
    except RegattError as exc:
        row.update(passed=False, reason=str(exc))
        return row, None
    g, r = enc.choice.gates[0], enc.choice.retrieval[0]
    row.update(
        passed=True, open_and_gate_s=time.perf_counter() - t, gate_min_cosine=g.min_cosine, gate_max_diff=g.max_diff,
        top10_mean=r.top10_mean, top10_min=r.top10_min, copies_map=r.map_variant, copies_map_reference=r.map_reference,
        copies_map_delta=r.map_delta, reference=r.reference, reason=enc.choice.reason,
    )  # fmt: skip
    return row, enc


def main(argv: list[str] | None = None) -> int:
    from precision_report import landmark_map, landmark_set
    from regatt_sdk.bench.machine import machine_info

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quality", nargs="*", type=Path, default=[], help="files with real weights: gate + Paris mAP")
    ap.add_argument("--gate-only", nargs="*", type=Path, default=[], help="files (e.g. random weights): gates only")
    ap.add_argument("--landmarks", type=Path, default=HERE.parents[1] / "shared" / "data" / "paris6k-subset")
    ap.add_argument(
        "--test-landmarks", type=Path, default=None,
        help="landmarks-train root: also the mAP on its test landmarks (splits.landmark_split)",
    )  # fmt: skip
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "precision_gate")
    args = ap.parse_args(argv)
    files, labels = landmark_set(args.landmarks) if args.quality else ([], [])
    checks = {"paris": (files, labels)}
    if args.test_landmarks is not None and args.quality:
        from regatt_export.splits import landmark_split
        from regatt_sdk.files import list_images

        test_files, test_labels = [], []
        for name in landmark_split(args.test_landmarks)["test"]:
            for f in list_images(args.test_landmarks / name, recursive=False):
                test_files.append(f)
                test_labels.append(name)
        checks["test"] = (test_files, test_labels)
    rows = []
    reference_map: dict[str, float] = {}
    for path in [*args.quality, *args.gate_only]:
        from regatt_sdk.card import read_card

        card = read_card(path)
        for engine, precision in VARIANTS[card.precision]:
            row, enc = gate_row(path, engine, precision, args.threads)
            if enc is not None and path in args.quality:
                family = card.backbone + card.attention + card.whitening
                for check, (check_files, check_labels) in checks.items():
                    t = time.perf_counter()
                    row[f"{check}_map"] = landmark_map(enc.encode(check_files, batch_size=1), check_labels)
                    row[f"{check}_s"] = time.perf_counter() - t
                    if card.precision == "fp32" and (engine, precision) == ("onnxruntime", "fp32"):
                        reference_map[family + check] = row[f"{check}_map"]
                    if family + check in reference_map:
                        row[f"{check}_map_delta"] = row[f"{check}_map"] - reference_map[family + check]
            print(json.dumps({k: v for k, v in row.items() if k != "reason"}), flush=True)
            rows.append(row)
            del enc
    report = {"machine": machine_info(args.threads or 0), "landmarks": str(args.landmarks), "photos": len(files),
              "test_landmarks": str(args.test_landmarks) if "test" in checks else None,
              "test_photos": len(checks["test"][0]) if "test" in checks else 0, "rows": rows}  # fmt: skip
    report["command"] = " ".join(["python", *sys.argv])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    args.out.with_suffix(".md").write_text(markdown(report))
    print(f"wrote {args.out}.json and .md")
    return 0


def _f(v, fmt="{:.2f}"):
    return "–" if v is None else fmt.format(v)


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [
        "# Precision gate: every engine x precision x file",
        "",
        f"Made by `{report.get('command', 'benchmarks/precision_gate.py')}`.",
        "",
        f"Machine: {m['cpu_model']}, {m['usable_cpus']} usable CPUs; CPU flags of interest: {', '.join(m['simd'])}; "
        f"units by flag: {', '.join(f'{k} {v}' for k, v in m['units'].items())}; onnxruntime {m['onnxruntime']}.",
        "",
        "Descriptor gate: the card's golden vector and 5 untraced sizes against onnxruntime CPU on the same file "
        "(fp32: max |diff| <= 1e-5; bf16 and INT8 on another engine: cosine >= 0.99). Retrieval gate "
        "(`regatt_sdk.engines.retrieval`): 8 shipped photos x (original + crop, scale, JPEG, colour), every image a "
        "query; top-10 agreement with fp32 onnxruntime on the fp32 file (>= 0.85) and the copies' mAP at most "
        "1 point below it. Paris: "
        f"{report['photos']} photos of {report['landmarks']}, every photo a query, at the card's S; "
        "delta = the variant's mAP minus fp32 onnxruntime's on the fp32 file."
        + (
            f" Test landmarks: the {report['test_photos']} photos of the test landmarks of {report['test_landmarks']} "
            "(`splits.landmark_split`, never learned on), the same rule."
            if report.get("test_photos")
            else ""
        ),
        "",
        "| file | engine | variant | gate | descriptor cosine (min) | top-10 agreement (worst) | copies mAP (delta) "
        "| Paris mAP | Paris delta | test landmarks mAP | test delta |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["rows"]:
        if not r["passed"]:
            lines.append(f"| {r['file']} | {r['engine']} | {r['variant']} | **refused** | | | | | | | |")
            continue
        lines.append(
            f"| {r['file']} | {r['engine']} | {r['variant']} | passed | {_f(r['gate_min_cosine'], '{:.6f}')} "
            f"| {_f(r['top10_mean'], '{:.3f}')} ({_f(r['top10_min'], '{:.1f}')}) "
            f"| {_f(r['copies_map'])} ({_f(r['copies_map_delta'], '{:+.2f}')}) | {_f(r.get('paris_map'))} "
            f"| {_f(r.get('paris_map_delta'), '{:+.2f}')} | {_f(r.get('test_map'))} "
            f"| {_f(r.get('test_map_delta'), '{:+.2f}')} |"
        )
    refused = [r for r in report["rows"] if not r["passed"]]
    if refused:
        lines += ["", "Refused:", ""] + [f"- {r['file']} {r['engine']} {r['variant']}: {r['reason']}" for r in refused]
    lines += ["", "Random-weight files (timing only) have gate figures but no Paris mAP."]
    if report.get("files"):
        lines += ["", "Files:", ""] + [f"- `{k}`: `{v}`" for k, v in report["files"].items()]
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
