"""The landmark check behind ``regatt bench --quality DIR``: one sub-folder per landmark, every
photo a query, the photos of its landmark the positives, the query removed from its ranking."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import RegattError
from ..evaluation import compute_ap
from ..files import list_images


def landmark_set(root: Path) -> tuple[list[Path], list[str]]:
    """Photos under ``root/<landmark>/`` and their landmark labels, sorted."""
    if not root.is_dir():
        raise RegattError(f"{root}: not a folder (expected one sub-folder of photos per landmark)")
    files: list[Path] = []
    labels: list[str] = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        for f in list_images(sub, recursive=False):
            files.append(f)
            labels.append(sub.name)
    if len(set(labels)) < 2:
        raise RegattError(f"{root}: needs at least 2 landmark sub-folders with photos")
    return files, labels


def landmark_map(vectors: np.ndarray, labels: list[str], queries: np.ndarray | None = None) -> float:
    """mAP in percent over all photos as queries; ``vectors (N, D)`` unit rows. ``queries (N, D)``:
    the same photos described another way (e.g. at a query-side scale), row ``i`` searching
    ``vectors`` without its own row; default ``vectors`` itself."""
    sims = (vectors if queries is None else queries) @ vectors.T
    names = [str(i) for i in range(len(labels))]
    aps = []
    for q in range(len(labels)):
        order = [names[i] for i in np.argsort(-sims[q], kind="stable") if i != q]
        positives = {names[i] for i in range(len(labels)) if labels[i] == labels[q] and i != q}
        if positives:
            aps.append(compute_ap(order, positives))
    return 100.0 * float(np.mean(aps))
