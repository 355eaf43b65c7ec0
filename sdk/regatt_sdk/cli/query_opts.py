"""The query-side options that ``regatt search`` and ``regatt eval`` share: ``--query-scales``,
``--qe`` and ``--show`` (each command words its help for what it does with them); the encoder
they and :mod:`.engine_opts` configure opens through :func:`.engine_opts.open_encoder`."""

from __future__ import annotations

import typer

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
