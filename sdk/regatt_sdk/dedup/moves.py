"""Moving the removals out of the way, and undoing it. Nothing is ever deleted.

:func:`move_files` moves each file under ``dest`` (keeping its path relative to ``root``, or its
absolute path's parts below ``dest`` when outside ``root``) and records every move in a JSON
manifest, ``dest/MANIFEST``: ``{"kind": "regatt.dedup.moves", "format": 1, "moves": [{"src",
"dst", "size", "state"}]}``. The manifest is written (atomically, fsync-ed) *before* each
move with state ``pending`` and again after it with ``moved``, so a crash leaves a manifest that
says where every file is. :func:`undo_moves` moves every ``moved`` (and any ``pending`` whose
file is at ``dst`` and no longer at ``src``) back to ``src``; it refuses to overwrite a file that
has appeared at ``src`` since, and any entry whose ``dst`` is outside the move folder (a
hand-edited manifest), and reports them instead.

A symbolic link is moved as a link (``"link"``: its target as written), never the file it points
to, and is restored as the same link. A move across file systems copies (fsync-ed) then removes
the original; when the copy fails (a full disk: ``ENOSPC``) the partial copy is removed, the
original stays where it was, the entry is marked ``failed`` and :class:`MoveError` says so in one
line.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import RegattError
from ..files import atomic_write, read_json

MANIFEST = "regatt-dedup-moves.json"
KIND = "regatt.dedup.moves"


@dataclass
class MoveReport:
    """``done`` (src, dst) pairs moved; ``skipped`` (path, reason)."""

    done: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)


def _write(path: Path, data: dict) -> None:
    """Replace the manifest at ``path`` atomically, data and directory entry fsync-ed."""
    with atomic_write(path, "w", fsync=True) as f:
        json.dump(data, f, indent=1)


class MoveError(RegattError):
    """A move could not be done (or undone); the message says where every file is."""


def _abspath(path: str | os.PathLike) -> Path:
    """Absolute and normalized, symbolic links *not* resolved (a link is moved, not its target)."""
    return Path(os.path.abspath(os.fspath(path)))


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.relative_to(folder)
    except ValueError:
        return False
    return True


def destination(src: Path, dest: Path, root: Path | None) -> Path:
    """Where ``src`` goes under ``dest``: its path relative to ``root`` if inside it, else its
    absolute path's parts (without the anchor). Symbolic links are not resolved."""
    src = _abspath(src)
    if root is not None:
        root_p = _abspath(root)
        if _inside(src, root_p):
            return dest / src.relative_to(root_p)
    return dest.joinpath(*src.parts[1:])


def _write_block(fh, data: bytes) -> None:
    """The write layer of a cross-device copy (one place, so a test can fill the disk here)."""
    fh.write(data)


def _copy(src: Path, dst: Path) -> None:
    """``src``'s bytes into a new file ``dst`` (never replaced), fsync-ed, metadata copied."""
    with open(src, "rb") as fin, open(dst, "xb") as fout:
        while block := fin.read(1 << 20):
            _write_block(fout, block)
        fout.flush()
        os.fsync(fout.fileno())
    shutil.copystat(src, dst)


def _move(src: Path, dst: Path) -> None:
    """Rename ``src`` to ``dst`` (a link as a link); across file systems copy, then remove the
    original; on failure nothing is left at ``dst`` and ``src`` is untouched."""
    try:
        os.rename(src, dst)
        return
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
    try:
        if src.is_symlink():
            os.symlink(os.readlink(src), dst)
        else:
            _copy(src, dst)
    except BaseException:
        if os.path.lexists(dst):
            os.unlink(dst)  # our partial copy, never the user's file (dst was absent: "xb")
        raise
    os.unlink(src)


def _present(path: Path) -> bool:
    return os.path.lexists(path)


def _movable(path: Path) -> bool:
    """A regular file, or a symbolic link (to anything: the link itself is moved)."""
    return path.is_symlink() or path.is_file()


def read_manifest(path: str | os.PathLike) -> dict:
    """The move manifest at ``path`` (a file, or a ``--move-to`` folder holding one)."""
    p = Path(path)
    if p.is_dir():
        p = p / MANIFEST
    data = read_json(
        p,
        RegattError,
        missing=f"{p}: no move manifest here (regatt dedup --move-to writes {MANIFEST})",
        unreadable=lambda exc: f"{p}: unreadable move manifest ({exc})",
    )
    if not isinstance(data, dict) or data.get("kind") != KIND or not isinstance(data.get("moves"), list):
        raise RegattError(f"{p}: not a regatt dedup move manifest")
    return data


def _strerror(exc: OSError) -> str:
    return exc.strerror or str(exc)


def move_files(
    paths: list[str | os.PathLike], dest: str | os.PathLike, *, root: str | os.PathLike | None = None
) -> MoveReport:
    """Move ``paths`` under ``dest`` with the manifest ``dest/MANIFEST`` (appended to if present).

    Raises :class:`MoveError` (one line) when a file or the manifest cannot be written (a full
    disk): the files moved so far are in the manifest, the one that failed is still in place."""
    dest = _abspath(dest)
    man_path = dest / MANIFEST
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MoveError(f"cannot create the move folder {dest}: {_strerror(exc)}") from None
    manifest = read_manifest(man_path) if man_path.exists() else {"kind": KIND, "format": 1, "moves": []}
    report = MoveReport()
    for raw in paths:
        src = _abspath(raw)
        if not _movable(src):
            report.skipped.append((str(raw), "not a file (already moved or deleted?)"))
            continue
        dst = destination(src, dest, root)
        if _present(dst):
            report.skipped.append((str(raw), f"{dst} already exists"))
            continue
        entry = {"src": str(src), "dst": str(dst), "size": src.lstat().st_size, "state": "pending"}
        if src.is_symlink():
            entry["link"] = os.readlink(src)
        manifest["moves"].append(entry)
        try:
            _write(man_path, manifest)
        except OSError as exc:
            raise MoveError(
                f"cannot write the move manifest {man_path}: {_strerror(exc)}; {src} was not moved "
                f"({len(report.done)} moved before it: regatt dedup --undo {dest})"
            ) from None
        try:
            dst.parent.mkdir(parents=True, exist_ok=True)
            _move(src, dst)
        except OSError as exc:
            entry["state"] = "failed"
            entry["error"] = _strerror(exc)
            with_manifest = ""
            try:
                _write(man_path, manifest)
            except OSError:
                with_manifest = " (its manifest entry still says pending: --undo leaves it)"
            raise MoveError(
                f"cannot move {src} to {dst}: {_strerror(exc)}; {src} is still in place{with_manifest} "
                f"({len(report.done)} moved before it: regatt dedup --undo {dest})"
            ) from None
        entry["state"] = "moved"
        try:
            _write(man_path, manifest)
        except OSError as exc:
            raise MoveError(
                f"moved {src} to {dst} but cannot record it in {man_path}: {_strerror(exc)}; "
                f"regatt dedup --undo {dest} still restores it (the entry says pending)"
            ) from None
        report.done.append((entry["src"], entry["dst"]))
    return report


def undo_moves(manifest_path: str | os.PathLike) -> MoveReport:
    """Move every file recorded in the manifest back; entries restored get state ``restored``.

    Only entries whose ``dst`` lies inside the manifest's folder are touched; a ``pending`` entry
    whose original is still in place is a move that never completed (its original is kept, a
    partial copy at ``dst`` is reported, not restored over it)."""
    p = Path(manifest_path)
    if p.is_dir():
        p = p / MANIFEST
    manifest = read_manifest(p)
    folder = _abspath(p).parent
    report = MoveReport()
    for entry in manifest["moves"]:
        state = entry.get("state") if isinstance(entry, dict) else None
        if state not in ("moved", "pending"):
            continue
        try:
            src, dst = _abspath(entry["src"]), _abspath(entry["dst"])
        except (KeyError, TypeError):
            report.skipped.append((str(entry), "not a move entry (no src/dst)"))
            continue
        if not _inside(dst, folder) or dst == _abspath(p):
            report.skipped.append((str(dst), f"outside the move folder {folder}; not touched"))
            continue
        if state == "pending" and _present(src):  # the move never happened (or never finished)
            if _present(dst):
                report.skipped.append(
                    (str(dst), f"an incomplete copy from an interrupted move; the original {src} is in place")
                )
            else:
                entry["state"] = "restored"
            continue
        if "link" in entry:
            found = dst.is_symlink()
        else:
            found = dst.is_file() and not dst.is_symlink()
        if not found:
            report.skipped.append((str(dst), "not found in the move folder"))
            continue
        if _present(src):
            report.skipped.append((str(src), "a file exists there now; left the moved file in place"))
            continue
        try:
            src.parent.mkdir(parents=True, exist_ok=True)
            _move(dst, src)
        except OSError as exc:
            report.skipped.append((str(dst), f"cannot move it back to {src}: {_strerror(exc)}"))
            continue
        entry["state"] = "restored"
        _write(p, manifest)
        report.done.append((str(dst), str(src)))
    _write(p, manifest)
    return report
