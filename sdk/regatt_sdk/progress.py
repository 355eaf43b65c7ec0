"""Progress display for long runs, on stderr (rich), off when not wanted."""

from __future__ import annotations


class Progress:
    """A transient rich progress bar: ``Progress(total, label)``, ``.advance(n)``, ``.close()``.

    Also a context manager (closed on exit)."""

    def __init__(self, total: int | None, label: str = "working"):
        from rich.console import Console
        from rich.progress import Progress as RichProgress

        self._p = RichProgress(console=Console(stderr=True), transient=True)
        self._p.start()
        self._task = self._p.add_task(label, total=total)

    def advance(self, n: int = 1) -> None:
        self._p.advance(self._task, n)

    def update(self, *, completed: int | None = None, total: int | None = None, label: str | None = None) -> None:
        self._p.update(self._task, completed=completed, total=total, description=label)

    def close(self) -> None:
        self._p.stop()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
