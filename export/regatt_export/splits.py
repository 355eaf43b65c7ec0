"""The one landmark-disjoint split of a ``<landmark>/<photo>`` folder tree.

Every learned part (attention, whitening) and every held-out check uses this rule, so no
reported number comes from a landmark that a learned part saw. Landmark folders are sorted by
name; position ``i`` goes to ``test`` when ``i % 5 == 4``, to ``val`` when ``i % 5 == 3`` and to
``train`` otherwise (30 / 10 / 10 landmarks of ``landmarks-train``). ``val`` is for early
stopping and choosing settings; ``test`` only for the numbers that are reported.
"""

from __future__ import annotations

from pathlib import Path

PARTS = ("train", "val", "test")


def landmark_folders(root: str | Path) -> list[str]:
    """Sorted names of the sub-folders of ``root`` (one per landmark); raises if none."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a folder; give a folder with one sub-folder per landmark")
    names = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not names:
        raise ValueError(f"{root}: no landmark sub-folders; expected <landmark>/<photo> folders")
    return names


def part_of(position: int) -> str:
    """Which part the landmark at sorted ``position`` belongs to."""
    r = position % 5
    return "test" if r == 4 else "val" if r == 3 else "train"


def landmark_split(root: str | Path) -> dict[str, list[str]]:
    """``{"train": [...], "val": [...], "test": [...]}`` landmark names of ``root``."""
    out: dict[str, list[str]] = {p: [] for p in PARTS}
    for i, name in enumerate(landmark_folders(root)):
        out[part_of(i)].append(name)
    return out
