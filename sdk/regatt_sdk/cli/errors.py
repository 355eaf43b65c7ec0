"""Turns the runtime's exceptions into one clear line on stderr and an exit code."""

from __future__ import annotations

import sys

import typer

from ..errors import RegattError
from ..names import display


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print ``error: message`` on stderr and return the Exit to raise."""
    typer.secho(f"error: {display(message)}", err=True, fg=typer.colors.RED)
    return typer.Exit(code)


def run_cli(app: typer.Typer, args: list[str]) -> None:
    try:
        app(args=args, prog_name="regatt", standalone_mode=True)
    except RegattError as exc:  # one line, valid UTF-8, whatever file names the message holds
        typer.secho(f"error: {display(str(exc))}", err=True, fg=typer.colors.RED)
        sys.exit(2)
    except (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError) as exc:
        typer.secho(f"error: {display(str(exc))}", err=True, fg=typer.colors.RED)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.secho("interrupted", err=True)
        sys.exit(130)
