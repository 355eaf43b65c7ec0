"""Speed and retrieval quality of each precision side by side (CPU), in one run.

For each model (the default efficientnet-lite0 with its ImageNet weights, and the ResNet-101
Caffe preset with random weights, which is for timing only) this exports the fp32 graph at
``--side``, quantizes it to INT8 with photos from ``--calibration``, times the full encoder
(fp32 and int8 alternately, same process, same threads) on a fixed-size input, and, for models
with real weights, measures retrieval mAP on the landmark check built from ``--landmarks``
(one sub-folder per landmark; every photo is a query, the photos of its landmark are positives,
the query is left out of its own ranking). Calibration and evaluation photos are disjoint.

Writes ``precision.json`` and ``precision.md`` under ``--out``.

    .venv/bin/python benchmarks/precision_report.py --side 512
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

#: The default model's packaged whitening was learned on ImageNet-sample photos only, so the
#: Paris landmark check is held out for every learned part (and the INT8 calibration photos,
#: also ImageNet-sample ones, never meet the evaluation photos either).
MODELS = {
    "efficientnet-lite0 (the default model)": {
        "backbone": "efficientnet-lite0",
        "weights": None,
        "quality": True,
        "assets": True,
    },
    "resnet101-caffe (random weights)": {"backbone": "resnet101-caffe", "weights": "random", "quality": False},
}


def landmark_set(root: Path) -> tuple[list[Path], list[str]]:
    """Photos and their landmark label (the sub-folder name): ``regatt bench --quality``'s set."""
    from regatt_sdk.bench.quality import landmark_set as photos_by_landmark

    return photos_by_landmark(root)


def landmark_map(vectors: np.ndarray, labels: list[str]) -> float:
    """mAP (percent) with every photo as a query, its own removed from the ranking."""
    from regatt_sdk.bench.quality import landmark_map as mean_ap

    return mean_ap(vectors, labels)


def time_models(paths: dict[str, Path], height: int, width: int, threads: int, repeats: int) -> dict[str, float]:
    """Median seconds per image for each model, runs interleaved so load changes hit all alike."""
    import onnxruntime as ort

    from regatt_sdk.card import golden_image
    from regatt_sdk.engines.ort import create_session

    sessions = {}
    for name, path in paths.items():
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads = threads
        opts.log_severity_level = 3
        # interleaved runs: a session's idle threads must not spin on the cores the next one needs
        # (with spinning, whichever model ran second was 20-60 % slower on this 2-vCPU machine)
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        sessions[name] = create_session(path, options=opts, providers=["CPUExecutionProvider"])
    image = golden_image(height, width, 3)[None]
    for s in sessions.values():
        s.run(None, {"image": image})
    times: dict[str, list[float]] = {n: [] for n in sessions}
    for _ in range(repeats):
        for name, s in sessions.items():
            t0 = time.perf_counter()
            s.run(None, {"image": image})
            times[name].append(time.perf_counter() - t0)
    return {n: float(np.median(t)) for n, t in times.items()}


def encode_all(path: Path, files: list[Path], side: int, threads: int) -> np.ndarray:
    from regatt_sdk.encoder import Encoder

    return Encoder(path, device="cpu", max_side=side, threads=threads).encode(files, batch_size=1)


def run(args: argparse.Namespace, save=None) -> dict:
    from regatt_export.build import EncoderConfig, build_encoder
    from regatt_export.onnx_export import export_onnx
    from regatt_export.quantize import Int8Options, quantize_int8

    files, labels = landmark_set(Path(args.landmarks))
    GEMM.update(gemm_ratio(args.threads))
    print(
        f"GEMM: fp32 {GEMM['fp32_gflops']:.0f} GFLOP/s, int8 {GEMM['int8_gops']:.0f} GOP/s -> int8/fp32 {GEMM['ratio']:.2f}x",
        flush=True,
    )
    work = Path(tempfile.mkdtemp(prefix="regatt-precision-"))
    rows = []
    for label, spec in MODELS.items():
        if args.models and not any(m in label for m in args.models):
            continue
        print(f"== {label}: export fp32 at S={args.side}", flush=True)
        encoder, card = build_encoder(
            EncoderConfig(
                backbone=spec["backbone"],
                weights=spec["weights"],
                max_side=args.side,
                use_default_assets=spec.get("assets", True),
            )
        )
        fp32 = work / f"{spec['backbone']}.onnx"
        export_onnx(encoder, card, fp32)
        del encoder
        int8 = work / f"{spec['backbone']}.int8.onnx"
        t0 = time.perf_counter()
        options = Int8Options(
            method=args.method, side=args.calibration_side, count=args.count, min_cosine=args.min_cosine
        )
        card8, parity = quantize_int8(fp32, int8, args.calibration, options)
        quant_s = time.perf_counter() - t0
        print(f"   {parity.summary()}  ({quant_s:.0f} s)", flush=True)
        h, w = args.time_size
        speed = time_models({"fp32": fp32, "int8": int8}, h, w, args.threads, args.repeats)
        print(f"   {h}x{w}: fp32 {speed['fp32'] * 1e3:.1f} ms, int8 {speed['int8'] * 1e3:.1f} ms", flush=True)
        quality = None
        if spec["quality"]:
            maps = {}
            for name, path in (("fp32", fp32), ("int8", int8)):
                maps[name] = landmark_map(encode_all(path, files, args.side, args.threads), labels)
                print(f"   mAP {name}: {maps[name]:.2f}", flush=True)
            quality = maps
        rows.append(
            {
                "model": label,
                "backbone": spec["backbone"],
                "time_size": [h, w],
                "seconds": speed,
                "speedup_int8": speed["fp32"] / speed["int8"],
                "map": quality,
                "map_drop_int8": (quality["fp32"] - quality["int8"]) if quality else None,
                "parity_int8": parity.to_dict(),
                "calibration": card8.provenance["calibration"],
                "quantization": card8.provenance["quantization"],
                "quantize_seconds": quant_s,
            }
        )
        if save is not None:
            save(_report(args, files, labels, rows))
    return _report(args, files, labels, rows)


def int8_simd() -> str:
    """The CPU's integer dot-product support, which bounds INT8 speed-ups (VNNI: ~3x, AVX2: less)."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split("flags", 2)[1].split("\n", 1)[0].split())
    except (OSError, IndexError):
        return "unknown"
    for flag, name in (
        ("amx_int8", "AMX-INT8"),
        ("avx512_vnni", "AVX-512 VNNI"),
        ("avx_vnni", "AVX-VNNI"),
        ("avx2", "AVX2 (no VNNI)"),
    ):
        if flag in flags:
            return name
    return "no AVX2"


def gemm_ratio(threads: int, rounds: int = 3) -> dict:
    """fp32 and uint8 x int8 GEMM throughput (onnxruntime, 2048-cube), alternated ``rounds`` times:
    their ratio bounds what any INT8 graph can gain over fp32 on this CPU."""
    from regatt_sdk.bench.gemm import ort_gemm, ort_gemm_int8

    f32, i8 = [], []
    for _ in range(rounds):
        f32.append(ort_gemm(2048, threads, runs=5).gflops_per_s)
        i8.append(ort_gemm_int8(2048, threads, runs=5).gflops_per_s)
    a, b = float(np.median(f32)), float(np.median(i8))
    return {"fp32_gflops": a, "int8_gops": b, "ratio": b / a}


GEMM: dict = {}


def _report(args: argparse.Namespace, files: list[Path], labels: list[str], rows: list[dict]) -> dict:
    import onnxruntime

    return {
        "gemm": GEMM,
        "side": args.side,
        "threads": args.threads,
        "landmarks": {"folder": str(Path(args.landmarks).resolve()), "images": len(files), "groups": len(set(labels))},
        "calibration_folder": str(Path(args.calibration).resolve()),
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "onnxruntime": onnxruntime.__version__,
            "int8_simd": int8_simd(),
        },
        "rows": rows,
    }


def markdown(report: dict) -> str:
    lines = [
        "# Precision report (CPU)",
        "",
        f"S = {report['side']} (longest side), {report['threads']} threads, onnxruntime "
        f"{report['machine']['onnxruntime']}. Landmark check: {report['landmarks']['images']} photos in "
        f"{report['landmarks']['groups']} landmarks, every photo a query (excluded from its own ranking). "
        f"INT8 calibrated on {report['calibration_folder']} (disjoint from the landmark photos).",
        "",
        "| model | size | fp32 ms | int8 ms | int8 speed-up | mAP fp32 | mAP int8 | drop | parity cos min / mean |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in report["rows"]:
        m = r["map"]
        p = r["parity_int8"]
        lines.append(
            f"| {r['model']} | {r['time_size'][0]}x{r['time_size'][1]} | {r['seconds']['fp32'] * 1e3:.1f} | "
            f"{r['seconds']['int8'] * 1e3:.1f} | {r['speedup_int8']:.2f}x | "
            + (f"{m['fp32']:.2f} | {m['int8']:.2f} | {r['map_drop_int8']:.2f} | " if m else "n/a | n/a | n/a | ")
            + f"{p['min_cosine']:.4f} / {p['mean_cosine']:.4f} |"
        )
    lines += [
        "",
        "Random-weight rows are for speed only (quantization quality is meaningless without trained weights).",
        "fp16 is not listed: it gives no speed-up on this CPU (see SPEC section 6); it is for GPUs.",
        f"INT8 instructions of this CPU: {report['machine'].get('int8_simd', 'unknown')}. The ~3x of SPEC section 6 was measured "
        "on a CPU with AVX-512 VNNI; without VNNI the int8 convolutions gain far less, and EfficientNet's "
        "depthwise convolutions hardly at all.",
    ]
    gemm = report.get("gemm") or {}
    if gemm:
        lines += [
            "",
            f"GEMM ceiling measured in the same run (onnxruntime, 2048-cube, {report['threads']} threads): fp32 MatMul "
            f"{gemm['fp32_gflops']:.0f} GFLOP/s, uint8 x int8 MatMulInteger {gemm['int8_gops']:.0f} GOP/s: "
            f"**int8/fp32 = {gemm['ratio']:.2f}x**. That bounds the convolutions, which are most of the time, on this "
            "CPU (memory-bound uint8 ops gain somewhat more); a 2.5x target needs integer dot-product instructions (VNNI).",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    here = Path(__file__).resolve().parent
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--side", type=int, default=512, help="longest side S for evaluation and export")
    ap.add_argument("--calibration", default="/work/shared/data/imagenet-sample")
    ap.add_argument("--calibration-side", type=int, default=None)
    ap.add_argument("--count", type=int, default=64, help="calibration photos")
    ap.add_argument("--method", default="minmax", choices=["minmax", "entropy", "percentile"])
    ap.add_argument("--min-cosine", type=float, default=-1.0, help="gate used while quantizing (report only: off)")
    ap.add_argument("--landmarks", default="/work/shared/data/paris6k-subset")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--time-size", type=int, nargs=2, default=[384, 512], metavar=("H", "W"))
    ap.add_argument("--models", nargs="*", default=None, help="substrings of model labels to run")
    ap.add_argument("--out", type=Path, default=here / "results")
    args = ap.parse_args()
    logging.disable(logging.WARNING)
    args.out.mkdir(parents=True, exist_ok=True)

    def save(report: dict) -> None:  # after every model, so a long run leaves partial results
        (args.out / "precision.json").write_text(json.dumps(report, indent=2) + "\n")
        (args.out / "precision.md").write_text(markdown(report))

    report = run(args, save)
    save(report)
    print(markdown(report))


if __name__ == "__main__":
    main()
