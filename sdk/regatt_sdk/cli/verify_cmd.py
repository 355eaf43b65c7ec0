"""``regatt verify STORE [--repair]``: check every committed byte of a feature store.

Exit status: 0 when the store checks (or ``--repair`` made it check), 1 when it is damaged (the
damaged rows are named), 2 for usage errors.
"""

from __future__ import annotations

from pathlib import Path

import typer


def verify(
    store: Path = typer.Argument(..., help="Feature store directory."),
    repair: bool = typer.Option(
        False,
        "--repair",
        help="Cut the store back to its last good chunk (and any data past what its manifest commits); "
        "every cut byte and the old manifest are copied to STORE/repair-<time>/ first.",
    ),
) -> None:
    """Check a feature store: sizes, the checksum of every commit, names, finite vectors."""
    from ..integrity import repair as repair_store
    from ..integrity import verify as verify_store
    from ..store import StoreError

    try:
        report = verify_store(store)
    except StoreError as exc:
        if not (store / "manifest.json").exists():
            raise
        typer.echo(f"damaged: {exc}")
        raise typer.Exit(1) from None
    for line in report.lines():
        typer.echo(line)
    if report.ok:
        return
    if not repair:
        typer.echo(f"to cut it back to the last good chunk (a copy is kept): regatt verify --repair {store}")
        raise typer.Exit(1)
    done = repair_store(store)
    cut = ", ".join(f"{name} {nbytes} bytes" for name, nbytes in sorted(done.files.items()))
    typer.echo(
        f"repaired: kept {done.kept} rows, cut {done.cut} committed rows ({cut}); the cut bytes and the old "
        f"manifest are in {done.copy}; encode the images that are not in the store again with regatt encode ... --resume"
    )
    if not verify_store(store).ok:
        typer.echo("still damaged after the repair", err=True)
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add the ``verify`` command to the ``regatt`` app."""
    app.command("verify")(verify)
