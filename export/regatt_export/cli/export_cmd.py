"""``regatt export``: build an encoder in PyTorch and write one checked ONNX file."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from regatt_sdk.errors import RegattError
from regatt_sdk.scales import check_aggregation, format_scales, parse_scales

from .backbone_opts import levels_option
from .lazy import export_side


def register(app: typer.Typer) -> None:
    app.command("export")(export)


def export(
    output: Path = typer.Option(Path("regatt.onnx"), "-o", "--output", help="Where to write the .onnx file."),
    backbone: str = typer.Option("efficientnet-lite0", "--backbone", help="Backbone from the registry (see --list)."),
    official: Optional[Path] = typer.Option(
        None, "--official", help="The authors' release directory (weights.tar unpacked)."
    ),
    weights: Optional[str] = typer.Option(
        None, "--weights", help="Backbone state-dict file, or 'random' (timing only)."
    ),
    attention: Optional[str] = typer.Option(
        None,
        "--attention",
        help="context | regional | none (default: context with --official, --attention-weights, and for the built-in default, which ships retrieval-trained context attention; none otherwise).",
    ),
    attention_weights: Optional[Path] = typer.Option(
        None, "--attention-weights", help="File written by  regatt train."
    ),
    whitening: Optional[Path] = typer.Option(None, "--whitening", help="File written by  regatt whiten."),
    levels: int = levels_option(),
    max_side: Optional[int] = typer.Option(
        None,
        "--max-side",
        "-S",
        help="Default longest side S stored in the card (512 for the built-in default, else 1024 as in the paper).",
    ),
    pooling: str = typer.Option(
        "roi",
        "--pooling",
        help="Regional max: roi (ONNX MaxRoiPool, fastest on CPU) | table (plain ops, runs on every provider: use for CUDA/TensorRT).",
    ),
    input_dtype: str = typer.Option("uint8", "--input-dtype", help="uint8 | float32 graph input."),
    scales: Optional[str] = typer.Option(
        None,
        "--scales",
        help="Describe each image at these multiples of S inside the graph, e.g. 1,1.5 or 1/sqrt2,1,sqrt2; with a scale > 1 photos are prepared at round(max * S) and the graph resizes down to each scale (default: the built-in default's scales, 1 for other models).",
    ),
    scale_aggregation: str = typer.Option(
        "sum",
        "--scale-aggregation",
        help="sum (per-scale descriptors summed, then L2) | regions (the regions of all scales in one attention-weighted mean).",
    ),
    explain: bool = typer.Option(False, "--explain", help="Also output regions and attention weights."),
    no_default_assets: bool = typer.Option(
        False, "--no-default-assets", help="Ignore the packaged learned files of the default model."
    ),
    atol: float = typer.Option(1e-5, "--atol", help="Largest |ONNX - PyTorch| accepted."),
    seed: int = typer.Option(0, "--seed", help="Seed for anything randomly initialised."),
    list_backbones: bool = typer.Option(False, "--list", help="List the registered backbones and exit."),
    int8: bool = typer.Option(
        False, "--int8", help="Write a static INT8 (QDQ, per-channel) backbone; needs --calibration."
    ),
    calibration: Optional[Path] = typer.Option(None, "--calibration", help="Folder of photos for INT8 calibration."),
    calibration_method: str = typer.Option("minmax", "--calibration-method", help="minmax | entropy | percentile"),
    calibration_count: int = typer.Option(
        64, "--calibration-count", help="Calibration photos used (spread over the folder)."
    ),
    calibration_side: Optional[int] = typer.Option(
        None, "--calibration-side", help="Longest side of calibration photos (default: --max-side)."
    ),
    int8_first_conv: Optional[bool] = typer.Option(
        None,
        "--int8-first-conv/--fp32-first-conv",
        help="Quantize the stem convolution or keep it fp32 (default: the backbone's choice; ResNets quantize it, EfficientNet keeps it).",
    ),
    int8_keep_fp32: Optional[list[str]] = typer.Option(
        None,
        "--int8-keep-fp32",
        help="Keep backbone nodes whose ONNX name contains this fp32 (repeatable; default: the backbone's sensitive layers, e.g. /blocks.0/ for EfficientNet; '' for none).",
    ),
    fp16: bool = typer.Option(False, "--fp16", help="Write an fp16 backbone (for GPUs; no gain on CPU)."),
    parity_images: Optional[Path] = typer.Option(
        None, "--parity-images", help="Photos (not used for calibration) for the precision parity gate."
    ),
    min_cosine: Optional[float] = typer.Option(
        None, "--min-cosine", help="Worst descriptor cosine to fp32 accepted (default 0.90 int8, 0.999 fp16)."
    ),
) -> None:
    """Export an encoder (the built-in default with no options) to one self-contained ONNX file.

    The file is written only after onnxruntime matched PyTorch at sizes it was not traced at.
    """
    build = export_side("build", "regatt export")
    onnx_export = export_side("onnx_export", "regatt export")
    if list_backbones:
        from regatt_export.backbones import BACKBONES

        for name, spec in BACKBONES.items():
            typer.echo(f"{name:<20} {spec.channels:>5}-d  {spec.description}")
        return
    if attention is not None and attention not in ("context", "regional", "none"):
        raise RegattError(f"--attention {attention!r}: use context, regional or none")
    if int8 and fp16:
        raise RegattError("--int8 and --fp16 are exclusive: pick one")
    if int8 and calibration is None:
        raise RegattError("--int8 needs --calibration DIR (a folder of photos like the ones you will encode)")
    if not int8 and calibration is not None:
        raise RegattError("--calibration is only used with --int8")
    cfg = build.EncoderConfig(
        backbone=backbone,
        weights=weights,
        official=str(official) if official else None,
        attention=attention,
        attention_weights=str(attention_weights) if attention_weights else None,
        whitening=str(whitening) if whitening else None,
        levels=levels,
        pooling=pooling,
        max_side=max_side,
        seed=seed,
        use_default_assets=not no_default_assets,
        scales=_scales_option(scales, max_side),
        scale_aggregation=check_aggregation(scale_aggregation),
    )
    try:
        encoder, card = build.build_encoder(cfg)
    except (ValueError, RuntimeError) as exc:
        raise RegattError(str(exc)) from None
    multi = f", scales {format_scales(card.scales)} ({card.scale_aggregation})" if card.scales != (1.0,) else ""
    if card.input_side is not None:
        multi += f", photos prepared at {card.input_side} px for S={card.max_side}"
    typer.echo(
        f"exporting {card.backbone} ({card.attention} attention, whitening: {card.whitening}, L={levels}{multi}) ..."
    )
    fp32_path = output if not (int8 or fp16) else output.with_name(output.name + ".fp32.tmp")
    try:
        try:
            card, rows = onnx_export.export_onnx(
                encoder, card, fp32_path, input_dtype=input_dtype, explain=explain, atol=atol
            )
        except onnx_export.ParityError as exc:
            raise RegattError(f"{output} not written: {exc}") from None
        typer.echo(onnx_export.format_parity(rows))
        if int8 or fp16:
            card = _reduced_precision(
                fp32_path,
                output,
                int8,
                calibration,
                calibration_method,
                calibration_count,
                calibration_side,
                parity_images,
                min_cosine,
                int8_first_conv,
                int8_keep_fp32,
            )
    finally:
        if fp32_path != output and fp32_path.exists():
            fp32_path.unlink()
    size = output.stat().st_size / 1e6
    typer.echo(
        f"wrote {output} ({size:.1f} MB, {card.precision}, {card.dim}-d descriptors, checked at {len(rows)} sizes)"
    )


def _scales_option(text: Optional[str], max_side: Optional[int]) -> Optional[tuple[float, ...]]:
    """``--scales`` checked early (at ``--max-side``, or the smallest S any model defaults to)."""
    if text is None:
        return None
    return parse_scales(text, max_side or 512, "--scales")


def _reduced_precision(
    fp32_path: Path,
    output: Path,
    int8: bool,
    calibration: Optional[Path],
    method: str,
    count: int,
    side: Optional[int],
    parity_images: Optional[Path],
    min_cosine: Optional[float],
    int8_first_conv: Optional[bool] = None,
    int8_keep_fp32: Optional[list[str]] = None,
):
    """Turn the checked fp32 file into the INT8 or fp16 variant at ``output`` (parity-gated)."""
    import logging

    onnx_export = export_side("onnx_export", "regatt export")
    quantize = export_side("quantize", "regatt export")
    logging.getLogger().setLevel(logging.ERROR)  # onnxruntime.quantization logs advice at WARNING
    try:
        if int8:
            options = quantize.Int8Options(
                method=method,
                side=side,
                count=count,
                parity_dir=str(parity_images) if parity_images else None,
                min_cosine=quantize.DEFAULT_MIN_COSINE_INT8 if min_cosine is None else min_cosine,
                exclude_first_conv=None if int8_first_conv is None else not int8_first_conv,
                keep_fp32=None if not int8_keep_fp32 else tuple(k for k in int8_keep_fp32 if k),
            )
            typer.echo(f"quantizing to INT8 ({method} calibration on {calibration}) ...")
            card, parity = quantize.quantize_int8(fp32_path, output, calibration, options)
        else:
            fp16 = export_side("fp16", "regatt export")
            typer.echo("converting the backbone to fp16 ...")
            card, parity = fp16.convert_fp16(
                fp32_path,
                output,
                parity_dir=parity_images,
                min_cosine=fp16.DEFAULT_MIN_COSINE_FP16 if min_cosine is None else min_cosine,
            )
    except onnx_export.ParityError as exc:
        raise RegattError(f"{output} not written: {exc}") from None
    except (quantize.CalibrationError, ValueError) as exc:
        raise RegattError(f"{output} not written: {exc}") from None
    if parity is None:
        typer.echo("parity gate skipped: no onnxruntime provider on this machine runs fp16 kernels (check it on a GPU)")
    else:
        typer.echo(parity.summary())
    return card
