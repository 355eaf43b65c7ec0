"""Moving the removals out of the way, and undoing it. Nothing is ever deleted.

:func:`move_files` moves each file under ``dest`` (keeping its path relative to ``root``, or its
absolute path's parts below ``dest`` when outside ``root``) and records every move in a JSON
manifest, ``dest/MANIFEST``: ``{"kind": "regatt.dedup.moves", "format": 1, "moves": [{"src",
"dst", "size", "state"}]}``. The manifest is written (atomically, fsync-ed) *before* each
move with state ``pending`` and again after it with ``moved``, so a crash leaves a manifest that
says where every file is. :func:`undo_moves` moves every ``moved`` (and any ``pending`` whose
file is at ``dst``) back to ``src``; it refuses to overwrite a file that has appeared at ``src``
since, and reports it instead.
"""

from __future__ import annotations

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


def destination(src: Path, dest: Path, root: Path | None) -> Path:
    """Where ``src`` goes under ``dest``: its path relative to ``root`` if inside it, else its
    absolute path's parts (without the anchor)."""
    src = src.resolve()
    if root is not None:
        try:
            return dest / src.relative_to(root.resolve())
        except ValueError:
            pass
    return dest.joinpath(*src.parts[1:])


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


def move_files(
    paths: list[str | os.PathLike], dest: str | os.PathLike, *, root: str | os.PathLike | None = None
) -> MoveReport:
    """Move ``paths`` under ``dest`` with the manifest ``dest/MANIFEST`` (appended to if present)."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    man_path = dest / MANIFEST
    manifest = read_manifest(man_path) if man_path.exists() else {"kind": KIND, "format": 1, "moves": []}
    report = MoveReport()
    root_p = Path(root) if root is not None else None
    for raw in paths:
        src = Path(raw)
        if not src.is_file():
            report.skipped.append((str(src), "not a file (already moved or deleted?)"))
            continue
        dst = destination(src, dest.resolve(), root_p)
        if dst.exists():
            report.skipped.append((str(src), f"{dst} already exists"))
            continue
        entry = {"src": str(src.resolve()), "dst": str(dst), "size": src.stat().st_size, "state": "pending"}
        manifest["moves"].append(entry)
        _write(man_path, manifest)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(src), str(dst))
        entry["state"] = "moved"
        _write(man_path, manifest)
        report.done.append((entry["src"], entry["dst"]))
    return report


def undo_moves(manifest_path: str | os.PathLike) -> MoveReport:
    """Move every file recorded in the manifest back; entries restored get state ``restored``."""
    p = Path(manifest_path)
    if p.is_dir():
        p = p / MANIFEST
    manifest = read_manifest(p)
    report = MoveReport()
    for entry in manifest["moves"]:
        if entry.get("state") not in ("moved", "pending"):
            continue
        src, dst = Path(entry["src"]), Path(entry["dst"])
        if not dst.is_file():
            if entry["state"] == "pending" and src.is_file():  # the move never happened
                entry["state"] = "restored"
                continue
            report.skipped.append((str(dst), "not found in the move folder"))
            continue
        if src.exists():
            report.skipped.append((str(src), "a file exists there now; left the moved copy in place"))
            continue
        src.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(dst), str(src))
        entry["state"] = "restored"
        _write(p, manifest)
        report.done.append((str(dst), str(src)))
    _write(p, manifest)
    return report
