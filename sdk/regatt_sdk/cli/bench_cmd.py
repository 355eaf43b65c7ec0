"""``regatt bench [MODEL.onnx]``: per-image latency measured the way the paper reports it.

Without a model: the paper's configuration (Caffe ResNet-101, S=1024, 1024x768 input) with
random weights, for the variants none / regional / context, on eager PyTorch, onnxruntime CPU
and (when available) CUDA / TensorRT. ``--engine onnxruntime --engine openvino`` (and
``--precision``) add engines x precisions side by side per model (``bench.matrix``, shared with
``benchmarks/engine_bench.py``). Writes ``bench.json``, ``bench.md`` and ``bench.png``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..errors import RegattError
from .engine_opts import engines_option, precisions_option


def register(app: typer.Typer) -> None:
    """Add the ``bench`` command to the ``regatt`` app."""
    app.command("bench")(bench)


def parse_size(text: str) -> tuple[int, int]:
    """``"768x1024"`` -> ``(768, 1024)`` (height, width)."""
    try:
        h, w = (int(p) for p in text.lower().split("x"))
    except ValueError:
        raise RegattError(f"--size {text!r}: expected HxW, e.g. 768x1024") from None
    if h < 16 or w < 16:
        raise RegattError(f"--size {text!r}: both sides must be at least 16 pixels")
    return h, w


def _csv(text: str | None) -> tuple[str, ...] | None:
    if text is None or text.strip() in ("", "auto", "all"):
        return None
    return tuple(p.strip() for p in text.split(",") if p.strip())


def bench(
    model: Optional[list[Path]] = typer.Argument(
        None,
        help="Exported .onnx models (e.g. fp32 and int8 of one config, timed side by side); default: build the paper's configuration.",
    ),
    backbone: str = typer.Option("resnet101-caffe", "--backbone", help="Backbone to build (ignored with MODEL)."),
    size: str = typer.Option("768x1024", "--size", help="Input HxW fed to the encoder (S = the longer side)."),
    variants: str = typer.Option(
        "none,regional,context", "--variants", help="Attention variants to build (ignored with MODEL)."
    ),
    engines: str = typer.Option(
        "auto", "--engines", help="auto, or a list of torch-eager, ort-cpu, ort-cuda, ort-trt."
    ),
    runs: int = typer.Option(5, "--runs", min=1, help="Timed runs per engine and variant."),
    warmup: int = typer.Option(1, "--warmup", min=0, help="Warm-up runs after the (separately timed) first call."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="CPU threads (default: all usable)."),
    levels: int = typer.Option(5, "--levels", "-L", min=1, help="R-MAC levels."),
    cache: Optional[Path] = typer.Option(
        None, "--cache", help="Keep/reuse the exported timing models in this directory."
    ),
    images: Optional[Path] = typer.Option(
        None, "--images", help="Also time real photos end to end (decode + resize + encode)."
    ),
    max_images: int = typer.Option(20, "--max-images", min=1, help="At most this many photos from --images."),
    gemm_size: int = typer.Option(2048, "--gemm-size", min=64, help="Matrix side of the fp32 GEMM probe."),
    profile_runs: int = typer.Option(2, "--profile-runs", min=1, help="Profiled runs (MACs, backbone/head split)."),
    quality: Optional[Path] = typer.Option(
        None,
        "--quality",
        help="Landmark folder (one sub-folder per landmark): adds each model's mAP (with MODEL files).",
    ),
    out: Optional[Path] = typer.Option(None, "--out", help="Write bench.json, bench.md and bench.png here."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Write every figure as JSON here."),
    engine: Optional[list[str]] = engines_option(),
    precision: Optional[list[str]] = precisions_option(),
    same_process: bool = typer.Option(
        False,
        "--same-process",
        help="Time --engine variants in this process (default: one fresh process per engine/precision and round, "
        "interleaved, as users run them; in one process onnxruntime's spinning workers slow the next engine).",
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress on stderr."),
) -> None:
    """Benchmark per-image latency (p50/p90), backbone vs head, GFLOP/s vs the machine's fp32 peak, beside the paper.

    With --engine (repeatable), each model also runs on those engines and precisions side by
    side, in one interleaved run, each gated first:  regatt bench fp32.onnx int8.onnx --engine
    onnxruntime --engine openvino
    """
    from ..bench.matrix import ENGINES as MATRIX_ENGINES
    from ..bench.matrix import PRECISIONS
    from ..bench.report import markdown, write_json, write_png
    from ..bench.runner import VARIANTS, BenchConfig, run_bench

    h, w = parse_size(size)
    wanted = _csv(variants) or VARIANTS
    bad = [v for v in wanted if v not in VARIANTS]
    if bad:
        raise RegattError(f"--variants {bad}: choose from {', '.join(VARIANTS)}")
    models = list(model or [])
    for m in models:
        if not m.is_file():
            raise RegattError(f"{m}: model file not found")
    if quality is not None and not models:
        raise RegattError("--quality needs MODEL files with real weights (the built-in timing models are random)")
    side_engines = tuple(dict.fromkeys(engine or ()))
    side_precisions = tuple(dict.fromkeys(precision)) if precision else None
    if side_precisions and not side_engines:
        raise RegattError("--precision chooses the precisions of --engine: give --engine onnxruntime/openvino too")
    bad = [e for e in side_engines if e not in MATRIX_ENGINES] + [
        p for p in side_precisions or () if p not in PRECISIONS
    ]
    if bad:
        raise RegattError(f"{bad}: --engine takes {', '.join(MATRIX_ENGINES)}; --precision {', '.join(PRECISIONS)}")
    cfg = BenchConfig(
        model=models[0] if models else None,
        compare=tuple(models[1:]),
        quality=quality,
        backbone=backbone,
        height=h,
        width=w,
        variants=wanted,
        engines=_csv(engines),
        runs=runs,
        warmup=warmup,
        threads=threads,
        levels=levels,
        cache=cache,
        images=images,
        max_images=max_images,
        gemm_size=gemm_size,
        profile_runs=profile_runs,
        engine_matrix=side_engines,
        matrix_precisions=side_precisions,
        matrix_separate=not same_process,
    )
    report = _run(cfg, run_bench, progress)
    text = markdown(report)
    typer.echo(text)
    if json_path is not None:
        write_json(report, json_path)
        typer.echo(f"wrote {json_path}")
    if out is not None:
        write_json(report, out / "bench.json")
        (out / "bench.md").write_text(text)
        drew = write_png(report, out / "bench.png")
        typer.echo(
            f"wrote {out}/bench.json, bench.md" + (", bench.png" if drew else " (no PNG: matplotlib is not installed)")
        )


def _run(cfg, run_bench, show: bool) -> dict:
    """Run with a rich progress bar on stderr (or silently)."""
    if not show:
        return run_bench(cfg, lambda _what: None)
    from rich.progress import BarColumn, TextColumn, TimeElapsedColumn

    from ..progress import Progress

    columns = (
        TextColumn("{task.description:<48}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
    )
    with Progress(None, "starting", columns=columns) as bar:

        def tick(what: str) -> None:
            bar.update(advance=1, label=what[:48])

        return run_bench(cfg, tick, lambda n: bar.update(total=n))
