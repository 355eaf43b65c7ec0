"""Entry point of the ``regatt`` command: builds the typer app from the command modules.

``regatt --version`` answers before any command module (or onnxruntime, or torch) is imported.
"""

from __future__ import annotations

import importlib
import sys

import typer

from .. import __version__

#: command modules under ``regatt_sdk.cli``; each defines ``register(app: typer.Typer)``. Commands
#: that need PyTorch (export, train, whiten) come from the export package through the
#: ``regatt.commands`` entry points (:mod:`regatt_sdk.plugins`).
COMMAND_MODULES: tuple[str, ...] = (
    "encode_cmd",
    "doctor_cmd",
    "search_cmd",
    "eval_cmd",
    "bench_cmd",
    "explain_cmd",
    "serve_cmd",
    "dedup_cmd",
    "verify_cmd",
    "changes_cmd",
)

app = typer.Typer(
    name="regatt",
    help="Regional-attention image retrieval: export, encode, search, evaluate, benchmark.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # help texts are plain text: with rich markup, "pip install 'regatt[ray]'" lost its "[ray]"
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"regatt {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
    verbose: int = typer.Option(
        0, "--verbose", "-v", count=True, help="Log what happens on stderr: -v steps, -vv details."
    ),
) -> None:
    """Regional-attention image retrieval."""
    from ..logs import configure

    configure(verbose)


def build() -> typer.Typer:
    from ..plugins import command_registrars

    for name in COMMAND_MODULES:
        importlib.import_module(f"{__package__}.{name}").register(app)
    for _, register in command_registrars():
        register(app)
    return app


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] in (["--version"], ["-V"]):
        typer.echo(f"regatt {__version__}")
        return
    from .errors import run_cli

    run_cli(build(), args)


if __name__ == "__main__":
    main()
