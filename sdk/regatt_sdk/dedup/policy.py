"""Which member of a group to keep: ``largest`` (most pixels, then most bytes), ``first`` (input
order) or ``oldest`` (earliest modification time). Ties fall back to input order.

Pure functions over :class:`FileInfo` records; nothing here touches the files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import RegattError
from .groups import Group

POLICIES = ("largest", "first", "oldest")


@dataclass(frozen=True)
class FileInfo:
    """What the policies look at: ``pixels`` (width x height, 0 if unknown), ``size`` in bytes,
    ``mtime`` (seconds since the epoch)."""

    name: str
    pixels: int = 0
    size: int = 0
    mtime: float = 0.0


def file_info(name: str, path: str | os.PathLike | None, pixels: int = 0) -> FileInfo:
    """:class:`FileInfo` of ``name`` from ``path``'s ``stat`` (missing file: zeros)."""
    try:
        st = Path(path).stat() if path is not None else None
    except OSError:
        st = None
    return FileInfo(name, int(pixels), int(st.st_size) if st else 0, float(st.st_mtime) if st else 0.0)


def choose_keep(group: Group, infos: list[FileInfo], policy: str = "largest") -> int:
    """The item index (one of ``group.members``) that ``policy`` keeps."""
    members = [int(m) for m in group.members]
    if policy == "first":
        return min(members)
    if policy == "largest":
        return min(members, key=lambda m: (-infos[m].pixels, -infos[m].size, m))
    if policy == "oldest":
        return min(members, key=lambda m: (infos[m].mtime, m))
    raise RegattError(f"unknown keep policy '{policy}': use one of {', '.join(POLICIES)}")


def keep_remove(groups: list[Group], infos: list[FileInfo], policy: str = "largest") -> list[tuple[int, list[int]]]:
    """``[(kept item, [removed items])]`` per group (removed in the group's member order)."""
    out = []
    for g in groups:
        keep = choose_keep(g, infos, policy)
        out.append((keep, [int(m) for m in g.members if int(m) != keep]))
    return out
