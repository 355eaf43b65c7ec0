"""``regatt encode MODEL SRC... -o STORE``: encode images into a feature store.

Exit status: 0 when every image was encoded, 1 when some files failed (each one is listed with
its reason in ``STORE/failures.jsonl``), 2 for usage errors (missing model or sources, a store
that exists without ``--resume``, a store made with another model).
"""

from __future__ import annotations

from pathlib import Path

import typer

from ..engines.device import parse_device
from ..imageio import DEFAULT_MAX_PIXELS, DEFAULT_MIN_SIDE
from ..names import display
from ..sources import check_specs, parse_extensions
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

#: failures printed on stderr after a run; the full list is in the store's failures.jsonl
SHOWN_FAILURES = 10


def encode(
    model: Path = typer.Argument(..., help="Exported .onnx model (with a regatt model card)."),
    sources: list[str] = typer.Argument(
        None,
        help="Image files, folders (recursive), @LIST files (one path per line), or - (stdin).",
        show_default=False,
    ),
    output: Path = typer.Option(..., "--output", "-o", help="Feature store directory."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted store: skip images already in it."),
    ext: str = typer.Option(None, "--ext", help="Extensions to take from folders, e.g. jpg,png (default: all known)."),
    list_files: list[Path] = typer.Option(None, "--list", help="Text file of image paths, one per line (repeatable)."),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="Images per inference batch."),
    workers: int = typer.Option(2, "--workers", min=1, help="Decoding threads."),
    max_pixels: int = typer.Option(
        DEFAULT_MAX_PIXELS, "--max-pixels", min=1, help="Refuse images above this many pixels."
    ),
    min_side: int = typer.Option(
        DEFAULT_MIN_SIDE, "--min-side", min=1, help="Refuse images with a shorter side below this."
    ),
    upscale_small: bool = typer.Option(
        False, "--upscale-small", help="Upscale images below --min-side instead of refusing them."
    ),
    max_side: int = max_side_option(),
    device: str = device_option(),
    engine: str = engine_option(),
    precision: str = precision_option(),
    memory: str = memory_option("pattern"),
    threads: int = threads_option(),
    chunk_rows: int = typer.Option(256, "--chunk-rows", min=1, help="Rows per store commit."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress."),
    ray: str = typer.Option(
        None,
        "--ray",
        metavar="ADDRESS",
        help="Encode on a Ray cluster: local (start one here), auto (the running one) or "
        "ray://HOST:PORT. Needs pip install 'regatt[ray]'.",
    ),  # fmt: skip
    ray_actors: int = typer.Option(
        None, "--ray-actors", min=1, help="Encoder actors with --ray (default: one per GPU or CPU)."
    ),
    faiss: bool = typer.Option(
        False,
        "--faiss",
        help="Then build a FAISS ANN index next to the store (STORE.ann.faiss); "
        "with --resume and no sources, only build it.",
    ),  # fmt: skip
    faiss_kind: str = typer.Option("auto", "--faiss-kind", help="auto (by size), flat, hnsw or ivfpq, for --faiss."),
    db: str = typer.Option(
        None,
        "--db",
        metavar="URL",
        help="Then copy the store into PostgreSQL + pgvector (postgresql://...): "
        "only the rows the table lacks, then an HNSW index; with --resume and no sources, only copy. "
        "Needs pip install 'regatt[postgres]'.",
    ),  # fmt: skip
    table: str = typer.Option("regatt", "--table", help="Table name for --db."),
    local: bool = typer.Option(
        None,
        "--local/--no-local",
        help="Also keep local features (keypoints + compact descriptors, ~40 KB per image) for "
        "'regatt search --rerank K'; with --resume, rows stored without them get them (their images "
        "are read again from the sources). Default: as the store does.",
        show_default=False,
    ),  # fmt: skip
) -> None:
    """Encode images into a feature store (crash-safe; resumable with --resume)."""
    sources = list(sources or [])
    list_files = list(list_files or [])
    if faiss:
        from ..ann import check_kind

        check_kind(faiss_kind)
    if (faiss or db) and resume and not sources and not list_files:
        if faiss:
            from ..ann import build_store_index, describe

            typer.echo(describe(build_store_index(output, faiss_kind), output))
        if db:
            _to_db(output, db, table)
        raise typer.Exit(0)
    if not sources and not list_files:
        raise fail("give at least one image, folder, @LIST or - (stdin), or --list FILE")
    if not model.is_file():
        raise fail(f"{model}: model file not found")
    if sources.count("-") > 1:
        raise fail("stdin (-) can be named only once")
    parse_extensions(ext)  # validate early
    check_specs(sources, list_files)
    dev = parse_device(device)  # validate early
    options = encoder_options(
        device=device, engine=engine, precision=precision, memory=memory, threads=threads, max_side=max_side
    )

    from ..compose import encoder_for_store
    from ..pipeline import encode_to_store

    if ray is not None and local:
        raise fail("--local is not supported with --ray yet: encode local features without --ray")
    if ray is not None:
        from ..distributed import encode_with_ray

        report = encode_with_ray(
            model, sources, output, address=ray, num_actors=ray_actors, batch_size=batch_size,
            use_gpu=None if dev.kind == "auto" else dev.gpu, resume=resume,
            options=options, decode_threads=workers, progress=progress,
            max_pixels=max_pixels, min_side=min_side, upscale_small=upscale_small,
            extensions=ext, list_files=list_files,
        )  # fmt: skip
    else:
        encoder = open_encoder(model, options)
        report = encode_to_store(
            encoder_for_store(encoder, output) if resume else encoder,
            sources,
            output,
            resume=resume,
            batch_size=batch_size,
            workers=workers,
            progress=progress,
            max_pixels=max_pixels,
            chunk_rows=chunk_rows,
            min_side=min_side,
            upscale_small=upscale_small,
            extensions=ext,
            list_files=list_files,
            local=local,
        )
    for failure in report.failures[:SHOWN_FAILURES]:
        typer.echo(f"failed: {display(failure.name)}: {display(failure.reason)}", err=True)
    if report.failed > SHOWN_FAILURES:
        typer.echo(f"... and {report.failed - SHOWN_FAILURES} more failures", err=True)
    typer.echo(report.summary())
    if faiss:
        from ..ann import build_store_index, describe

        typer.echo(describe(build_store_index(output, faiss_kind), output))
    if db:
        _to_db(output, db, table)
    raise typer.Exit(report.exit_code)


def _to_db(store: Path, url: str, table: str) -> None:
    """Copy ``store`` into ``table`` at ``url`` (idempotent) and say what was done."""
    from ..index.pgvector import load_store, redact

    r = load_store(store, url, table=table)
    hnsw = f", HNSW index built in {r['hnsw_s']:.1f} s" if r["hnsw_s"] else ""
    typer.echo(f"database {redact(url)} table {table}: {r['added']} rows added, {r['rows']} in all{hnsw}")


def register(app: typer.Typer) -> None:
    """Add the ``encode`` command to the ``regatt`` app."""
    app.command("encode")(encode)
