"""``regatt explain IMAGE --model M -o OUT.png``: the image's R-MAC regions ranked by attention.

Left panel: the ``--top`` heaviest regions, outlined in a colormap by weight, labelled with their
rank and share of the total weight. Right panel: the summed weights of the regions covering each
pixel, over the photo. The model must be exported with ``regatt export --explain``. The regions
and weights are also printed (rank, share, weight, box in the resized image's pixels).
``--box`` outlines an object box and prints the share of the attention weight on the regions
mostly (>= half their area) inside it, against the share uniform weights would give.
"""

from __future__ import annotations

from pathlib import Path

import typer

from ..compose import parse_roi
from ..errors import RegattError
from .engine_opts import (
    device_option,
    encoder_options,
    engine_option,
    max_side_option,
    memory_option,
    open_encoder,
    precision_option,
    threads_option,
)


def explain_cmd(
    image: Path = typer.Argument(..., help="Image to explain."),
    model: Path = typer.Option(
        None,
        "--model",
        "-m",
        envvar="REGATT_MODEL",
        help="Model exported with 'regatt export --explain' (default: $REGATT_MODEL).",
    ),  # fmt: skip
    output: Path = typer.Option(..., "--output", "-o", help="PNG to write."),
    roi: str = typer.Option(None, "--roi", help="Crop to x1,y1,x2,y2 (original pixels) first."),
    object_box: str = typer.Option(
        None,
        "--box",
        help="Object box x1,y1,x2,y2 (original pixels): print the attention share inside it vs uniform.",
    ),  # fmt: skip
    top: int = typer.Option(8, "--top", "-k", min=0, help="Regions drawn on the left panel."),
    size: int = typer.Option(400, "--size", min=64, help="Longer side of each panel, pixels."),
    max_side: int = max_side_option(),
    device: str = device_option(),
    engine: str = engine_option(),
    precision: str = precision_option(),
    memory: str = memory_option("pattern"),
    threads: int = threads_option(),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Do not print the region list."),
) -> None:
    """Draw an image's regions coloured and ranked by their attention weights."""
    box = parse_roi(roi)
    obj = parse_roi(object_box, "--box")
    options = encoder_options(
        device=device, engine=engine, precision=precision, memory=memory, threads=threads, max_side=max_side
    )
    if obj is not None and box is not None:
        raise RegattError("--box is in the original photo's pixels: give it without --roi")
    if model is None:
        raise RegattError("give the model with --model M (or set REGATT_MODEL)")
    if not model.is_file():
        raise RegattError(f"{model}: model file not found")
    if not image.is_file():
        raise RegattError(f"{image}: image not found")

    from ..explain import box_share, explain, explanation_figure
    from ..grid import write_png

    encoder = open_encoder(model, options)
    expl = explain(encoder, image, roi=box)
    scaled = None
    if obj is not None:
        from ..imageio import read_image

        ratio = max(expl.image.shape[:2]) / max(read_image(image).shape[:2])
        scaled = tuple(v * ratio for v in obj)
    figure = explanation_figure(expl, top=top, size=size, title="/".join(image.parts[-2:]), box=scaled)
    out = write_png(output, figure)
    if not quiet:
        shares = expl.shares()
        h, w = expl.image.shape[:2]
        typer.echo(f"{expl.weights.size} regions on the {w}x{h} resized image, by weight:")
        for rank, r in enumerate(expl.order(), start=1):
            x1, y1, x2, y2 = (int(round(v)) for v in expl.boxes[r])
            typer.echo(f"{rank:4d}  {100 * shares[r]:5.1f}%  {expl.weights[r]:.5f}  "
                       f"{x1},{y1},{x2},{y2}")  # fmt: skip
    if scaled is not None:
        share, uniform = box_share(expl.boxes, expl.weights, scaled)
        ratio_text = f", {share / uniform:.2f}x" if uniform > 0 else ""
        typer.echo(f"box {object_box}: {100 * share:.1f}% of the attention weight on the regions inside "
                   f"(uniform weights: {100 * uniform:.1f}%{ratio_text})")  # fmt: skip
    typer.echo(f"wrote {out}", err=True)


def register(app: typer.Typer) -> None:
    """Add ``explain`` to the app."""
    app.command("explain")(explain_cmd)
