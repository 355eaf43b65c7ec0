"""The one option group of the commands that encode: ``--device``, ``--engine``, ``--precision``,
``--memory``, ``--threads`` and ``--max-side`` (each defined once here), turned into a
:class:`~regatt_sdk.compose.EncoderOptions` by :func:`encoder_options`; and the index
``--backend``. ``regatt bench`` takes ``--engine`` and ``--precision`` repeated (engines x
precisions side by side).

A command declares the group as parameters::

    device: str = device_option(), engine: str = engine_option(), precision: str = precision_option(),
    memory: str = memory_option("pattern"), threads: int = threads_option(), max_side: int = max_side_option(),

and opens its encoder with :func:`open_encoder` ``(model, encoder_options(...))``."""

from __future__ import annotations

import typer

from ..compose import MIN_MAX_SIDE, EncoderOptions
from ..engines.device import HELP as DEVICE_HELP

ENGINE_HELP = (
    "Inference engine: onnxruntime, openvino (pip install 'regatt[openvino]') or auto (the fastest "
    "engine that passes its gate here, probed once per model and machine). Default: the device's engine."
)
PRECISION_HELP = (
    "Compute precision: fp32, bf16 (openvino on CPUs with BF16) or auto (the fastest engine x precision that "
    "passes the retrieval gate here, probed once per model and machine; fp32 on CPUs without AVX512-BF16/AMX)."
)
MEMORY_HELP = (
    "onnxruntime memory plan: arena (the CPU arena without per-shape memory patterns: RSS settles "
    "whatever the image sizes, same speed), pattern (onnxruntime's default: a memory pattern per "
    "input shape, the arena grows with each new larger shape) or lean (no arena: least memory, "
    "about 30 % slower)."
)


def device_option():
    return typer.Option("auto", "--device", help=DEVICE_HELP + ".")


def max_side_option():
    return typer.Option(
        None,
        "--max-side",
        min=MIN_MAX_SIDE,
        help="Prepare images at this longest side S (default: the model card's).",
    )


def threads_option():
    return typer.Option(None, "--threads", min=1, help="Inference threads (CPU; default: the engine's).")


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


def encoder_options(
    *,
    device: str = "auto",
    engine: str | None = None,
    precision: str = "fp32",
    memory: str = "pattern",
    threads: int | None = None,
    max_side: int | None = None,
    query_scales: str | None = None,
) -> EncoderOptions:
    """The :class:`~regatt_sdk.compose.EncoderOptions` of the group's values (checked)."""
    return EncoderOptions(
        device=device,
        engine=engine,
        precision=precision,
        memory=memory,
        threads=threads,
        max_side=max_side,
        query_scales=query_scales,
    )


def open_encoder(model, options: EncoderOptions):
    """:func:`regatt_sdk.compose.open_encoder`, then one line on stderr saying which engine runs
    and why when ``--engine`` or ``--precision`` was given."""
    from ..compose import open_encoder as compose_open

    encoder = compose_open(model, options)
    say_choice(encoder)
    return encoder


def say_choice(encoder) -> None:
    """One line on stderr: which engine runs and why (when ``--engine`` or ``--precision`` other
    than fp32 was given)."""
    asked = encoder.engine_asked is not None or getattr(encoder, "precision_asked", "fp32") != "fp32"
    if encoder.choice is not None and asked:
        typer.echo(f"engine: {encoder.choice.reason}", err=True)
