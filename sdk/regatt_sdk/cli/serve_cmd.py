"""``regatt serve MODEL [--store STORE | --db URL]``: the encoder and a search index over HTTP
(``pip install 'regatt[serve]'``; ``--db`` also needs ``regatt[postgres]``)."""

from __future__ import annotations

from pathlib import Path

import typer

from ..errors import RegattError
from ..imageio import DEFAULT_MAX_PIXELS, SERVE_MAX_DECODED_BYTES
from .engine_opts import (
    device_option,
    encoder_options,
    engine_option,
    max_side_option,
    memory_option,
    precision_option,
    threads_option,
)


def serve(
    model: Path = typer.Argument(..., help="Exported .onnx model."),
    store: Path = typer.Option(None, "--store", help="Feature store to search (its FAISS index when it has one)."),
    db: str = typer.Option(
        None,
        "--db",
        metavar="URL",
        help="PostgreSQL URL of a table loaded by 'regatt index ... --db URL' (needs pip install 'regatt[postgres]').",
    ),  # fmt: skip
    table: str = typer.Option("regatt", "--table", help="Table name in the --db database."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: int = typer.Option(8080, "--port", min=0, max=65535, help="Port to listen on."),
    device: str = device_option(),
    engine: str = engine_option(),
    precision: str = precision_option(),
    max_side: int = max_side_option(),
    threads: int = threads_option(),
    memory: str = memory_option("arena"),
    max_batch: int = typer.Option(8, "--max-batch", min=1, help="Most same-size images run as one batch."),
    window_ms: float = typer.Option(
        5.0, "--window-ms", min=0, help="How long the first image of a batch waits for others."
    ),
    max_queue: int = typer.Option(
        64, "--max-queue", min=1, help="Images waiting or running; beyond, 503 + Retry-After."
    ),
    timeout: float = typer.Option(
        30.0, "--timeout", min=0.001, help="Seconds a request may wait for its descriptor (then 503)."
    ),
    max_bytes: int = typer.Option(32 * 2**20, "--max-bytes", min=1, help="Largest upload in bytes (beyond, 413)."),
    max_pixels: int = typer.Option(
        DEFAULT_MAX_PIXELS, "--max-pixels", min=1, help="Refuse images above this many pixels (422)."
    ),
    max_decoded_bytes: int = typer.Option(
        SERVE_MAX_DECODED_BYTES,
        "--max-decoded-bytes",
        min=1,
        help="Refuse images whose decoded pixels would take more bytes than this, read from the header "
        "before decoding (422).",
    ),
    body_timeout: float = typer.Option(
        10.0,
        "--body-timeout",
        min=0.001,
        help="Seconds a client may leave between two pieces of its request body (then 408, connection closed).",
    ),
    workers: int = typer.Option(2, "--workers", min=1, help="Decoding threads."),
    dba: int = typer.Option(
        0, "--dba", min=0, help="Database-side augmentation over K neighbours, applied once at start (0: off)."
    ),
    ef_search: int = typer.Option(
        None, "--ef-search", min=1, help="HNSW candidates per query with --db (default 100)."
    ),
    db_pool: int = typer.Option(
        4, "--db-pool", min=1, help="Connections to the --db database, opened at start (as many searches at once)."
    ),
    ann: bool = typer.Option(True, "--ann/--no-ann", help="Use the store's FAISS ANN index when it has one."),
    warmup: bool = typer.Option(
        True,
        "--warmup/--no-warmup",
        help="Before ready, run one batch of --max-batch square images at the prepared side, so memory "
        "reaches its size for the largest batch at start instead of during the load.",
    ),
    images: Path = typer.Option(
        None,
        "--images",
        help="Folder the store's names are relative to; the page's thumbnails come only "
        "from files inside it (default: the folder common to the names).",
    ),  # fmt: skip
    dedup: Path = typer.Option(
        None, "--dedup", help="A 'regatt dedup' output folder (groups.json) to show read-only on the page."
    ),
    watch: bool = typer.Option(
        True,
        "--watch/--no-watch",
        help="Notice (at most once a second, on a request) when the --store changes (regatt sync, encode "
        "--resume, removals, compact) and reload it in the background; POST /v1/reload reloads either way.",
    ),
    log_level: str = typer.Option("info", "--log-level", help="uvicorn log level."),
) -> None:
    """Serve POST /v1/encode and /v1/search (micro-batched), /healthz, /readyz, /metrics, /docs,
    and the search page at / (thumbnails, duplicates). A --store that changes is reloaded (--watch)."""
    if not model.is_file():
        raise RegattError(f"{model}: model file not found")
    if store is not None and db is not None:
        raise RegattError("give --store or --db, not both")
    if dedup is not None and not (dedup / "groups.json").is_file():
        raise RegattError(f"{dedup}: no groups.json: give a 'regatt dedup ... -o OUT' output folder")
    from ..optional import require

    require("fastapi", extra="serve", what="regatt serve")
    require("uvicorn", extra="serve", what="regatt serve")
    from ..serve.app import ServeConfig, run

    options = encoder_options(
        device=device, engine=engine, precision=precision, memory=memory, threads=threads, max_side=max_side
    )
    config = ServeConfig(
        model=model, store=store, db=db, table=table, options=options,
        max_batch=max_batch, window_ms=window_ms, max_queue=max_queue, timeout_s=timeout,
        max_bytes=max_bytes, max_pixels=max_pixels, max_decoded_bytes=max_decoded_bytes,
        body_timeout_s=body_timeout, decode_workers=workers, dba=dba, ann=ann,
        ef_search=ef_search, db_pool=db_pool, warmup=warmup, images=images, dedup=dedup, watch=watch,
    )  # fmt: skip
    run(config, host, port, log_level=log_level)


def register(app: typer.Typer) -> None:
    """Add the ``serve`` command to the ``regatt`` app."""
    app.command("serve")(serve)
