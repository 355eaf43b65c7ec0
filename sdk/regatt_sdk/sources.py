"""Expanding what the user names (files, folders, list files, stdin) into image paths.

A *spec* is one command-line source:

* a folder: walked recursively in sorted name order (deterministic), keeping entries whose
  extension is in ``extensions``. An entry with an image extension is yielded whatever it is (a
  directory, FIFO or broken link named ``x.jpg`` is then refused, with a reason, by the
  decoder); other sub-directories are descended into. Hidden entries (name starting with ``.``)
  are skipped unless ``include_hidden``. Symlinked directories are followed, but a link back to
  a directory being walked (a loop) is reported and not entered, and a directory reached twice
  through links is walked once.
* ``@FILE`` (or ``list_files``): a text file with one image path per line (UTF-8, blank lines
  skipped; relative paths are relative to the working directory). Entries are not expanded
  and not filtered by extension.
* ``-``: the same, read from standard input.
* anything else: one image file, used whatever its extension.

Each image is yielded once (by normalized path), in the order the specs name them.
"""

from __future__ import annotations

import io
import os
import stat
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from .errors import RegattError
from .imageio import IMAGE_EXTENSIONS


class SourceError(RegattError):
    """A source named on the command line does not exist or cannot be read."""


@dataclass(frozen=True)
class SourceItem:
    """One input: ``name`` (normalized path, the store's row name) and the ``path`` to read.

    ``error`` is set instead when the source itself failed (an unreadable directory, a symlink
    loop); such items are recorded as failures, never decoded.
    """

    name: str
    path: str
    error: str | None = None


def parse_extensions(text: str | Iterable[str] | None) -> frozenset[str]:
    """``"jpg,.PNG"`` or ``["jpg", "png"]`` → ``{"jpg", "png"}``; None → the default set."""
    if text is None:
        return frozenset(IMAGE_EXTENSIONS)
    parts = text.split(",") if isinstance(text, str) else list(text)
    exts = frozenset(p.strip().lower().lstrip(".") for p in parts if p.strip().strip("."))
    if not exts:
        raise SourceError(f"no extensions in {text!r}")
    return exts


def check_specs(specs: Iterable[str | os.PathLike], list_files: Iterable[str | os.PathLike] = ()) -> None:
    """Fail fast (:class:`SourceError`) when a named file, folder or list file is missing."""
    for spec in specs:
        s = os.fspath(spec)
        if s == "-":
            continue
        target = s[1:] if s.startswith("@") else s
        if not os.path.lexists(target):
            raise SourceError(f"{target}: no such file or directory")
        if s.startswith("@") and not os.path.isfile(target):
            raise SourceError(f"{target}: list file is not a regular file")
    for lf in list_files:
        if not os.path.isfile(lf):
            raise SourceError(f"{os.fspath(lf)}: list file not found")


def _matches(name: str, exts: frozenset[str]) -> bool:
    dot = name.rfind(".")
    return dot > 0 and name[dot + 1 :].lower() in exts


def walk_folder(root: str, extensions: frozenset[str], *, include_hidden: bool = False) -> Iterator[SourceItem]:
    """Image candidates under ``root`` in sorted order, depth first (see module docstring)."""
    try:
        st = os.stat(root)
    except OSError as exc:
        yield SourceItem(os.path.normpath(root), root, f"cannot open folder: {exc.strerror}")
        return
    visited: set[tuple[int, int]] = {(st.st_dev, st.st_ino)}
    # stack of (directory path, its (dev, ino), sorted entry names still to visit)
    stack: list[tuple[str, tuple[int, int], Iterator[str]]] = []

    def listing(path: str) -> Iterator[str] | SourceItem:
        try:
            with os.scandir(path) as it:
                names = sorted(e.name for e in it)
        except OSError as exc:
            return SourceItem(os.path.normpath(path), path, f"cannot list folder: {exc.strerror}")
        return iter(names)

    first = listing(root)
    if isinstance(first, SourceItem):
        yield first
        return
    stack.append((root, (st.st_dev, st.st_ino), first))
    while stack:
        folder, _, names = stack[-1]
        name = next(names, None)
        if name is None:
            stack.pop()
            continue
        if name.startswith(".") and not include_hidden:
            continue
        path = os.path.join(folder, name)
        if _matches(name, extensions):
            yield SourceItem(os.path.normpath(path), path)
            continue
        try:
            st = os.stat(path)  # follows symlinks; loops raise ELOOP
        except OSError:
            continue  # not an image by name and not a usable directory: not ours to report
        if not stat.S_ISDIR(st.st_mode):
            continue
        key = (st.st_dev, st.st_ino)
        ancestors = {k for _, k, _ in stack}
        if key in ancestors:
            yield SourceItem(os.path.normpath(path), path, "symlink loop: leads back to a folder being walked")
            continue
        if key in visited:
            continue  # the same folder reached again through a link: already walked
        visited.add(key)
        sub = listing(path)
        if isinstance(sub, SourceItem):
            yield sub
            continue
        stack.append((path, key, sub))


def _read_lines(stream: TextIO) -> Iterator[str]:
    for line in stream:
        line = line.rstrip("\r\n")
        if line.strip():
            yield line


def read_list(path: str | os.PathLike) -> Iterator[SourceItem]:
    """Items of a list file: one path per line."""
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as fh:
            for line in _read_lines(fh):
                yield SourceItem(os.path.normpath(line), line)
    except OSError as exc:
        raise SourceError(f"{os.fspath(path)}: cannot read list file ({exc.strerror})") from None


def iter_sources(
    specs: Iterable[str | os.PathLike],
    *,
    extensions: str | Iterable[str] | None = None,
    list_files: Iterable[str | os.PathLike] = (),
    stdin: TextIO | None = None,
    include_hidden: bool = False,
) -> Iterator[SourceItem]:
    """All images named by ``specs`` then ``list_files``, each once, deterministic order.

    ``specs`` entries: a folder, a file, ``@LIST`` or ``-`` (read paths from ``stdin``, default
    ``sys.stdin``). Items already :class:`SourceItem` pass through. Lazy: folders are walked as
    the items are consumed.
    """
    exts = parse_extensions(extensions)
    seen: set[str] = set()

    def expand(spec: str | os.PathLike | SourceItem) -> Iterator[SourceItem]:
        if isinstance(spec, SourceItem):
            yield spec
            return
        s = os.fspath(spec)
        if s == "-":
            stream = stdin if stdin is not None else sys.stdin
            if isinstance(stream, io.TextIOWrapper):
                stream.reconfigure(errors="surrogateescape")
            for line in _read_lines(stream):
                yield SourceItem(os.path.normpath(line), line)
        elif s.startswith("@"):
            yield from read_list(s[1:])
        elif os.path.isdir(s):
            yield from walk_folder(s, exts, include_hidden=include_hidden)
        else:
            yield SourceItem(os.path.normpath(s), s)

    all_specs: list[str | os.PathLike | SourceItem] = list(specs)
    all_specs += ["@" + os.fspath(lf) for lf in list_files]
    for spec in all_specs:
        for item in expand(spec):
            if item.name in seen:
                continue
            seen.add(item.name)
            yield item


def source_paths(*specs: str | Path, extensions: str | None = None) -> list[str]:
    """Convenience: the image paths named by ``specs`` (errors dropped), as a list."""
    return [item.path for item in iter_sources(specs, extensions=extensions) if item.error is None]
