"""``regatt sync MODEL SOURCES... -o STORE`` (keep a store in step with folders that change) and
``regatt compact STORE`` (rewrite it without its removed rows).

Exit status of ``sync``: 0 when every new or changed photo was stored, 1 when some failed (listed,
and in ``STORE/failures.jsonl``), 2 for usage errors (another model's store, a missing source,
a source that disappeared during the run: then nothing was removed).
"""

from __future__ import annotations

from pathlib import Path

import typer

from ..names import display
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
from .errors import fail

SHOWN_FAILURES = 10


def sync(
    model: Path = typer.Argument(..., help="Exported .onnx model (the one that made the store)."),
    sources: list[str] = typer.Argument(
        None, help="Image folders (recursive), files, or @LIST files (one path per line).", show_default=False
    ),
    output: Path = typer.Option(..., "--output", "-o", help="Feature store directory (made if missing)."),
    ext: str = typer.Option(None, "--ext", help="Extensions to take from folders, e.g. jpg,png (default: all known)."),
    list_files: list[Path] = typer.Option(None, "--list", help="Text file of image paths, one per line (repeatable)."),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="Images per inference batch."),
    workers: int = typer.Option(2, "--workers", min=1, help="Decoding threads."),
    chunk_rows: int = typer.Option(256, "--chunk-rows", min=1, help="Rows per store commit."),
    local: bool = typer.Option(
        None, "--local/--no-local", help="Keep local features (default: as the store does).", show_default=False
    ),
    max_side: int = max_side_option(),
    device: str = device_option(),
    engine: str = engine_option(),
    precision: str = precision_option(),
    memory: str = memory_option("pattern"),
    threads: int = threads_option(),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress while encoding."),
    faiss: bool = typer.Option(
        False,
        "--faiss",
        help="Then bring the store's FAISS ANN index in step (the new rows added to it; built if none).",
    ),
    db: str = typer.Option(
        None,
        "--db",
        metavar="URL",
        help="Then bring the pgvector table in step (removed rows deleted, new rows copied).",
    ),  # fmt: skip
    table: str = typer.Option("regatt", "--table", help="Table name for --db."),
) -> None:
    """Bring a store in step with its folders: encode new and changed photos, remove deleted ones."""
    sources = list(sources or [])
    if not sources and not list_files:
        raise fail("give at least one folder, file or @LIST to sync")
    if not model.is_file():
        raise fail(f"{model}: model file not found")
    options = encoder_options(
        device=device, engine=engine, precision=precision, memory=memory, threads=threads, max_side=max_side
    )
    from ..compose import encoder_for_store
    from ..sync import sync as run_sync

    if (output / "manifest.json").exists():
        from ..card import read_card
        from ..compose import check_compatible, open_store

        st = open_store(output, allow_empty=True)
        check_compatible(read_card(model), st.card_hash, st.dim, f"feature store {output}", model)
    encoder = open_encoder(model, options)
    report = run_sync(
        encoder_for_store(encoder, output), sources, output, extensions=ext, list_files=list_files or (),
        local=local, progress=progress, chunk_rows=chunk_rows, batch_size=batch_size, workers=workers,
    )  # fmt: skip
    for failure in report.failures[:SHOWN_FAILURES]:
        typer.echo(f"failed: {display(failure.name)}: {display(failure.reason)}", err=True)
    if report.failed > SHOWN_FAILURES:
        typer.echo(f"... and {report.failed - SHOWN_FAILURES} more failures", err=True)
    typer.echo(report.summary())
    if faiss:
        from ..ann import describe, update_store_index

        ann, done = update_store_index(output)
        typer.echo(f"{describe(ann, output)} ({done})" if done != "up to date" else f"ANN index: {done}")
    if report.rows and (report.rows - report.live) / report.rows > 0.25:
        typer.echo(f"note: {report.rows - report.live} of {report.rows} stored rows are removed: "
                   f"regatt compact {output} rewrites the store without them", err=True)  # fmt: skip
    if db:
        from ..index.pgvector import load_store, redact

        r = load_store(output, db, table=table)
        typer.echo(
            f"database {redact(db)} table {table}: {r['deleted']} rows deleted, {r['added']} added, {r['rows']} in all"
        )
    raise typer.Exit(1 if report.failed else 0)


def compact(store: Path = typer.Argument(..., help="Feature store directory.")) -> None:
    """Rewrite a store without its removed rows (atomic; its ANN index is removed: rebuild it)."""
    from ..compact import compact as run_compact

    typer.echo(run_compact(store).summary())


def register(app: typer.Typer) -> None:
    """Add the ``sync`` and ``compact`` commands to the ``regatt`` app."""
    app.command("sync")(sync)
    app.command("compact")(compact)
