"""Logging: one logger per package (``regatt_sdk``, ``regatt_export``; modules log to
``logging.getLogger(__name__)``), quiet by default (a ``NullHandler``: a library prints nothing
unless its user configures logging), turned on by the CLI's ``-v`` (INFO) / ``-vv`` (DEBUG)
through :func:`configure`."""

from __future__ import annotations

import logging
import sys
from typing import TextIO

#: the packages whose loggers :func:`configure` sets up
PACKAGES = ("regatt_sdk", "regatt_export")
FORMAT = "%(name)s: %(message)s"


def quiet(package: str) -> None:
    """Give ``package``'s logger a ``NullHandler`` (what a library does; called on import)."""
    logger = logging.getLogger(package)
    if not any(isinstance(h, logging.NullHandler) for h in logger.handlers):
        logger.addHandler(logging.NullHandler())


class _StderrHandler(logging.Handler):
    """Writes to the ``sys.stderr`` of the moment (or a fixed stream): a handler installed by
    one CLI call keeps working when stderr is replaced afterwards (tests capture it)."""

    def __init__(self, stream: TextIO | None):
        super().__init__()
        self._stream = stream
        self._regatt_cli = True

    def emit(self, record: logging.LogRecord) -> None:
        try:
            out = self._stream or sys.stderr
            out.write(self.format(record) + "\n")
            out.flush()
        except Exception:  # noqa: BLE001 - logging must never break the command
            self.handleError(record)


def configure(verbosity: int, stream: TextIO | None = None) -> None:
    """Show the packages' log records on ``stream`` (default stderr): warnings at 0, INFO at 1,
    DEBUG at 2 or more. Replaces the handler an earlier call installed."""
    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    for package in PACKAGES:
        logger = logging.getLogger(package)
        for h in [h for h in logger.handlers if getattr(h, "_regatt_cli", False)]:
            logger.removeHandler(h)
        handler = _StderrHandler(stream)
        handler.setFormatter(logging.Formatter(FORMAT))
        logger.addHandler(handler)
        logger.setLevel(level)
        logger.propagate = False
