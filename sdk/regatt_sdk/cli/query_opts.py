"""The query-side options that ``regatt search`` and ``regatt eval`` share: ``--query-scales``,
``--qe`` and ``--show`` (each command words its help for what it does with them), and the
encoder those options and :mod:`.engine_opts` configure."""

from __future__ import annotations

from pathlib import Path

import typer

from .engine_opts import engine_kwargs, say_choice

#: how every ``--query-scales`` help ends (the list's syntax and when to use it)
QUERY_SCALES_USE = "e.g. 1.5 or 1,1.5: larger than the database when objects are small in queries."


def query_scales_option(what: str):
    """``--query-scales`` (default: none, queries as the database); help ``"{what}, "`` +
    :data:`QUERY_SCALES_USE`."""
    return typer.Option(None, "--query-scales", help=f"{what}, {QUERY_SCALES_USE}")


def qe_option(default: int, what: str):
    """``--qe K`` (average query expansion over the top K, ``0``: off); help ``"{what} over the
    top K (0: off)."``."""
    return typer.Option(default, "--qe", min=0, help=f"{what} over the top K (0: off).")


def show_option(help: str):
    """``--show PATH``: where to write pictures of the results (default: none)."""
    return typer.Option(None, "--show", help=help)


def open_encoder(
    model: Path,
    *,
    device: str,
    max_side: int | None,
    engine: str | None,
    precision: str,
    query_scales: str | None,
):
    """The :class:`~regatt_sdk.encoder.Encoder` for these options (``query_scales`` passed only
    when given); says on stderr which engine runs when ``--engine`` was given."""
    from ..encoder import Encoder

    extra = {"query_scales": query_scales} if query_scales is not None else {}
    encoder = Encoder(model, device=device, max_side=max_side, **engine_kwargs(engine, precision), **extra)
    say_choice(encoder)
    return encoder
