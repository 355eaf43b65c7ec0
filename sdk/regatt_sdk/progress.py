"""Progress display for long runs, on stderr (rich), off when not wanted.

The one progress bar of the runtime (the encoder's batches, ``regatt bench``). Two displays are
deliberately not this class: ``pipeline._Progress`` (``regatt encode``/``index``) writes a plain
text line, rewritten on a terminal and one every 30 s in a log, with the rate and failure count;
``regatt train``/``whiten`` (``regatt_export.cli.train_cmd._Bar``) keep one row per phase and
print their log lines through the bar's console, on stdout.
"""

from __future__ import annotations

from typing import Sequence


class Progress:
    """A transient rich progress bar: ``Progress(total, label)``, ``.advance(n)``, ``.update()``,
    ``.close()``.

    ``total`` None: not known yet (set it with ``update(total=...)``). ``columns``: rich
    progress columns to show instead of rich's default ones. Also a context manager (closed on
    exit)."""

    def __init__(self, total: int | None, label: str = "working", *, columns: Sequence = ()):
        from rich.console import Console
        from rich.progress import Progress as RichProgress

        self._p = RichProgress(*columns, console=Console(stderr=True), transient=True)
        self._p.start()
        self._task = self._p.add_task(label, total=total)

    def advance(self, n: int = 1) -> None:
        self._p.advance(self._task, n)

    def update(
        self,
        *,
        completed: int | None = None,
        total: int | None = None,
        label: str | None = None,
        advance: int | None = None,
    ) -> None:
        """Set what is given (None: unchanged); ``advance`` adds to the completed count."""
        self._p.update(self._task, completed=completed, total=total, description=label, advance=advance)

    def close(self) -> None:
        self._p.stop()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
