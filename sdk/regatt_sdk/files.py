"""Files: one staged (atomic) write, used by every writer of models, indexes and reports; one
manifest (JSON) reader; image suffixes and folder listings."""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Callable, Iterator


def fsync_dir(path: str | os.PathLike) -> None:
    """Flush a directory entry (a rename inside it) to disk, where the platform allows."""
    try:
        fd = os.open(os.fspath(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def staged_file(out_path: str | os.PathLike, suffix: str = "") -> Iterator[str]:
    """A temporary path beside ``out_path`` (same filesystem, so ``os.replace`` into place is
    atomic); whatever is left there when the block ends (an error, a refused gate) is removed."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=suffix, prefix=f"{out_path.name}.tmp", dir=out_path.parent)
    os.close(fd)
    try:
        yield tmp
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def new_file_mode() -> int:
    """``0o666`` less this process's umask (read without changing it where Linux allows)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return 0o666 & ~old


@contextmanager
def atomic_write(
    out_path: str | os.PathLike, mode: str = "wb", *, fsync: bool = False, encoding: str | None = None
) -> Iterator[IO]:
    """Write ``out_path`` through a staged file that replaces it only when the block succeeds
    (readers see the old file or the new one, never half of one). ``fsync``: flush the data and
    the directory entry to disk too (for files that record commits)."""
    out_path = Path(out_path)
    if "b" not in mode and encoding is None:
        encoding = "utf-8"
    with staged_file(out_path) as tmp:
        os.chmod(tmp, new_file_mode())  # as open() would create it, not mkstemp's 0600
        with open(tmp, mode, encoding=encoding) as fh:
            yield fh
            fh.flush()
            if fsync:
                os.fsync(fh.fileno())
        os.replace(tmp, out_path)
        if fsync:
            fsync_dir(out_path.parent)


def write_text_atomic(out_path: str | os.PathLike, text: str, *, fsync: bool = False) -> Path:
    """``out_path`` replaced atomically by ``text`` (UTF-8); returns the path."""
    with atomic_write(out_path, "w", fsync=fsync) as fh:
        fh.write(text)
    return Path(out_path)


def read_json(
    path: str | os.PathLike,
    error: Callable[[str], Exception],
    *,
    missing: str,
    unreadable: Callable[[Exception], str],
) -> object:
    """The JSON value in the UTF-8 file ``path``: the one reader of the manifests (feature store,
    dedup moves). A missing file raises ``error(missing)``; one that cannot be read or is not JSON
    raises ``error(unreadable(exc))``; both without the underlying traceback."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise error(missing) from None
    except (OSError, ValueError) as exc:
        raise error(unreadable(exc)) from None


# -- image files -------------------------------------------------------------------------------
def image_suffixes() -> frozenset[str]:
    """File suffixes (lower case, with the dot) of every format :mod:`regatt_sdk.imageio` reads:
    the one list that folder listings, datasets, calibration and training use."""
    from .imageio import IMAGE_EXTENSIONS

    return frozenset(f".{e}" for e in IMAGE_EXTENSIONS)


def is_image_name(name: str | os.PathLike) -> bool:
    """True when the file name ends in one of :func:`image_suffixes` (any case)."""
    return Path(name).suffix.lower() in image_suffixes()


def list_images(folder: str | os.PathLike, *, recursive: bool = True) -> list[Path]:
    """Image files (by suffix) under ``folder``, sorted by path; sub-folders too when
    ``recursive``. (Streaming, symlink-loop-safe walks for encoding: :mod:`regatt_sdk.sources`.)"""
    root = Path(folder)
    suffixes = image_suffixes()
    found = root.rglob("*") if recursive else root.iterdir()
    return sorted(p for p in found if p.suffix.lower() in suffixes and p.is_file())
