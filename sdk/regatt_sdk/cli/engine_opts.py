"""The ``--engine`` and ``--precision`` options shared by the commands that encode."""

from __future__ import annotations

import typer

ENGINE_HELP = (
    "Inference engine: onnxruntime, openvino (pip install 'regatt[openvino]') or auto (the fastest "
    "engine that passes its gate here, probed once per model and machine). Default: the device's engine."
)
PRECISION_HELP = "Compute precision: fp32, or bf16 (openvino on CPUs with BF16; gated by descriptor cosine)."


def engine_option():
    return typer.Option(None, "--engine", help=ENGINE_HELP)


def precision_option():
    return typer.Option("fp32", "--precision", help=PRECISION_HELP)


def engine_kwargs(engine: str | None, precision: str) -> dict:
    """The ``Encoder`` keywords for the options given (none when left at their defaults)."""
    kwargs: dict = {}
    if engine is not None:
        kwargs["engine"] = engine
    if precision != "fp32":
        kwargs["precision"] = precision
    return kwargs


def say_choice(encoder) -> None:
    """One line on stderr: which engine runs and why (when ``--engine`` was given)."""
    if getattr(encoder, "choice", None) is not None and getattr(encoder, "engine_asked", None) is not None:
        typer.echo(f"engine: {encoder.choice.reason}", err=True)
