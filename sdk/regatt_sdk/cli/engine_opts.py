"""The options shared by the commands that encode: ``--device``, ``--engine``, ``--precision``,
``--max-side``, ``--memory`` and the index ``--backend``; ``regatt bench`` takes ``--engine`` and
``--precision`` repeated (engines x precisions side by side)."""

from __future__ import annotations

import typer

from ..engines.device import HELP as DEVICE_HELP

ENGINE_HELP = (
    "Inference engine: onnxruntime, openvino (pip install 'regatt[openvino]') or auto (the fastest "
    "engine that passes its gate here, probed once per model and machine). Default: the device's engine."
)
PRECISION_HELP = "Compute precision: fp32, or bf16 (openvino on CPUs with BF16; gated by descriptor cosine)."
MEMORY_HELP = (
    "onnxruntime memory plan: arena (the CPU arena without per-shape memory patterns: RSS settles "
    "whatever the image sizes, same speed), pattern (onnxruntime's default: a memory pattern per "
    "input shape, the arena grows with each new larger shape) or lean (no arena: least memory, "
    "about 30 % slower)."
)


def device_option():
    return typer.Option("auto", "--device", help=DEVICE_HELP + ".")


def max_side_option():
    return typer.Option(None, "--max-side", min=1, help="Resize the longest side to this.")


def backend_option():
    return typer.Option("exact", "--backend", help="exact (numpy) or faiss.")


def engine_option():
    return typer.Option(None, "--engine", help=ENGINE_HELP)


def precision_option():
    return typer.Option("fp32", "--precision", help=PRECISION_HELP)


def engines_option():
    return typer.Option(
        None,
        "--engine",
        help="Also time these engines side by side on each model in one interleaved run (repeatable): "
        "onnxruntime, openvino. Each engine/precision passes its gate first; a refused one is listed with the reason.",
    )


def precisions_option():
    return typer.Option(
        None,
        "--precision",
        help="Precisions for --engine (repeatable): fp32, bf16 (openvino on CPUs with BF16), int8 (an INT8 file as "
        "it is). Default: each engine's own (onnxruntime fp32; openvino fp32 and bf16; INT8 files as they are).",
    )


def memory_option(default: str):
    return typer.Option(default, "--memory", help=MEMORY_HELP + f" Default: {default}.")


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
