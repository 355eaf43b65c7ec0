"""``regatt export``: build an encoder in PyTorch and write one checked ONNX file."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..errors import RegattError
from .lazy import export_side


def register(app: typer.Typer) -> None:
    app.command("export")(export)


def export(
    output: Path = typer.Option(Path("regatt.onnx"), "-o", "--output", help="Where to write the .onnx file."),
    backbone: str = typer.Option("efficientnet-lite0", "--backbone", help="Backbone from the registry (see --list)."),
    official: Optional[Path] = typer.Option(None, "--official", help="The authors' release directory (weights.tar unpacked)."),
    weights: Optional[str] = typer.Option(None, "--weights", help="Backbone state-dict file, or 'random' (timing only)."),
    attention: str = typer.Option("context", "--attention", help="context | regional | none"),
    attention_weights: Optional[Path] = typer.Option(None, "--attention-weights", help="File written by  regatt train."),
    whitening: Optional[Path] = typer.Option(None, "--whitening", help="File written by  regatt whiten."),
    levels: int = typer.Option(5, "--levels", "-L", help="R-MAC levels."),
    max_side: int = typer.Option(1024, "--max-side", "-S", help="Default longest side S stored in the card."),
    input_dtype: str = typer.Option("uint8", "--input-dtype", help="uint8 | float32 graph input."),
    explain: bool = typer.Option(False, "--explain", help="Also output regions and attention weights."),
    no_default_assets: bool = typer.Option(False, "--no-default-assets", help="Ignore the packaged learned files of the default model."),
    atol: float = typer.Option(1e-5, "--atol", help="Largest |ONNX - PyTorch| accepted."),
    seed: int = typer.Option(0, "--seed", help="Seed for anything randomly initialised."),
    list_backbones: bool = typer.Option(False, "--list", help="List the registered backbones and exit."),
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
    if attention not in ("context", "regional", "none"):
        raise RegattError(f"--attention {attention!r}: use context, regional or none")
    cfg = build.EncoderConfig(
        backbone=backbone,
        weights=weights,
        official=str(official) if official else None,
        attention=attention,
        attention_weights=str(attention_weights) if attention_weights else None,
        whitening=str(whitening) if whitening else None,
        levels=levels,
        max_side=max_side,
        seed=seed,
        use_default_assets=not no_default_assets,
    )
    try:
        encoder, card = build.build_encoder(cfg)
    except (ValueError, RuntimeError) as exc:
        raise RegattError(str(exc)) from None
    typer.echo(f"exporting {card.backbone} ({card.attention} attention, whitening: {card.whitening}, L={levels}) ...")
    try:
        card, rows = onnx_export.export_onnx(encoder, card, output, input_dtype=input_dtype, explain=explain, atol=atol)
    except onnx_export.ParityError as exc:
        raise RegattError(f"{output} not written: {exc}") from None
    typer.echo(onnx_export.format_parity(rows))
    size = output.stat().st_size / 1e6
    typer.echo(f"wrote {output} ({size:.1f} MB, {card.dim}-d descriptors, checked at {len(rows)} sizes)")
