"""Duplicates of a feature store's rows: the Python API behind ``regatt dedup`` and
:meth:`regatt_sdk.collection.Collection.duplicates` (quiet: what it skipped or noted is in the
returned :class:`DuplicateReport`, for the caller to show).

:func:`find_duplicates` ``(vectors, names, ...)`` groups the rows by descriptor cosine
(``threshold``, or the ``scene`` preset) or, for the ``exact``/``near`` presets, by the
calibrated copy check (DCT hash + the geometry of local-feature matches; needs the image files,
and takes the local features from the store when it keeps them: ``regatt encode --local``),
then picks one member to keep per group (``keep``: ``largest``, ``first`` or ``oldest``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import RegattError

log = logging.getLogger(__name__)

PRESETS = ("exact", "near", "scene")
GROUPING = ("components", "tight")
KEEP = ("largest", "first", "oldest")
BACKENDS = ("auto", "exact", "ivf", "index")


class DedupError(RegattError):
    """Duplicate-finding options that cannot work together, or inputs they cannot use."""


@dataclass(frozen=True)
class DuplicateRow:
    """One member of a group: ``group`` (1-based), ``member`` (store row), ``name``, ``path``
    (the file, ``None`` when not found), ``score`` to the representative (cosine or copy
    probability), descriptor ``cosine`` to it, ``action`` (``keep`` | ``remove``)."""

    group: int
    member: int
    name: str
    path: str | None
    score: float
    cosine: float
    action: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "member": self.member,
            "name": self.name,
            "path": self.path,
            "score": self.score,
            "cosine": self.cosine,
            "action": self.action,
        }


@dataclass
class DuplicateReport:
    """What :func:`find_duplicates` found: ``rows`` (every member of every group), the
    ``threshold`` used, the ``label`` of the rule (``preset near``, ``descriptor cosine``),
    ``candidates`` (pairs scored), ``images`` (rows considered), ``skipped`` (``(path, why)``
    left out of the copy check) and ``notes`` (e.g. presets fitted for another model)."""

    rows: list[DuplicateRow]
    threshold: float
    label: str
    candidates: int
    images: int
    skipped: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def groups(self) -> int:
        return len({r.group for r in self.rows})

    @property
    def removals(self) -> list[DuplicateRow]:
        return [r for r in self.rows if r.action == "remove"]

    def summary(self) -> str:
        return (
            f"{self.groups} groups, {len(self.removals)} to remove, among {self.images} images "
            f"({self.label}, threshold {self.threshold:.3f}, {self.candidates} pairs scored)"
        )


def check_options(preset: str | None, threshold: float | None, group: str, keep: str, backend: str) -> str | None:
    """The preset to use (``near`` when neither ``preset`` nor ``threshold`` is given); refuses
    unknown values with :class:`DedupError`."""
    from .pairs import check_threshold

    if threshold is not None:
        check_threshold(threshold)
    if preset is not None and preset not in PRESETS:
        raise DedupError(f"unknown preset '{preset}': use exact, near or scene")
    if group not in GROUPING:
        raise DedupError(f"unknown grouping '{group}': use components or tight")
    if keep not in KEEP:
        raise DedupError(f"unknown keep policy '{keep}': use largest, first or oldest")
    if backend not in BACKENDS:
        raise DedupError(f"unknown backend '{backend}': use {', '.join(BACKENDS)}")
    if preset is None and threshold is None:
        return "near"
    return preset


def pixels(path: Path | None) -> int:
    """Width x height from the file's header (0 when unknown)."""
    from ..imageio import image_header

    if path is None:
        return 0
    try:
        with open(path, "rb") as f:
            info = image_header(f.read(1 << 20))
        return int(info.width) * int(info.height)
    except (OSError, RegattError):
        return 0


def store_local(store: Any, notes: list[str] | None = None) -> Any:
    """The :class:`~regatt_sdk.local.storage.LocalIndex` of ``store`` (for the rows that have local
    features), or ``None`` when it keeps none or they cannot be read (the reason appended to
    ``notes``): the copy check then extracts them from the image files."""
    from ..local.extract import LocalConfig
    from ..local.storage import LocalFeaturesMissing, LocalIndex

    try:
        index = LocalIndex.open(store, rows_needed=0)
    except LocalFeaturesMissing:
        return None
    except RegattError as exc:
        if notes is not None:
            notes.append(f"local features of the store not used ({exc}); extracted from the image files")
        return None
    if index.count and index.config != LocalConfig() and notes is not None:
        notes.append(
            f"the store's local features were extracted with {index.config.to_json()}, the presets were "
            f"calibrated with {LocalConfig().to_json()}; their thresholds may not carry over"
        )
    return index if index.count else None


def copy_signals(paths: Sequence[Path | None], skipped: list[tuple[str, str]], local_index: Any = None):
    """DCT hashes ``(N,)`` (every image read once) and a lookup ``local(k) -> LocalFeatures | None``
    for the copy check: row ``k``'s local features from ``local_index`` (a store's
    :class:`~regatt_sdk.local.storage.LocalIndex`) when it has them, else extracted from the file
    when first asked (kept for later pairs: only rows in candidate pairs are ever extracted).
    Unreadable rows are appended to ``skipped`` and get ``None`` (they can still pair by descriptor
    and hash)."""
    from ..imageio import read_image
    from ..local.extract import extract
    from .phash import phash

    hashes = np.zeros(len(paths), dtype=np.uint64)
    bad: set[int] = set()
    for k, p in enumerate(paths):
        try:
            if p is None:
                raise RegattError("image file not found (give --images DIR for a store)")
            hashes[k] = phash(read_image(p))
        except RegattError as exc:
            bad.add(k)
            skipped.append((str(p), str(exc)))
    cache: dict[int, Any] = {}
    stored = int(local_index.count) if local_index is not None else 0

    def local(k: int) -> Any:
        if k in bad:
            return None
        if k < stored:
            return local_index.features(k)
        if k not in cache:
            try:
                cache[k] = extract(read_image(paths[k]))
            except RegattError as exc:  # changed since its hash was read
                bad.add(k)
                skipped.append((str(paths[k]), str(exc)))
                return None
        return cache[k]

    return hashes, local


def find_duplicates(
    vectors: np.ndarray,
    names: Sequence[str],
    *,
    encoder: Any = None,
    preset: str | None = None,
    threshold: float | None = None,
    group: str = "components",
    keep: str = "largest",
    images: str | os.PathLike | None = None,
    backend: str = "auto",
    index: Callable[[], Any] | None = None,
    store: Any = None,
) -> DuplicateReport:
    """Groups of duplicates among the rows ``vectors (N, D)`` / ``names``.

    ``preset``: ``exact`` | ``near`` (copies: the calibrated copy check, needs ``encoder`` (any
    export) and the image files: names are paths, or relative to ``images``; local features
    come from ``store``, the :class:`~regatt_sdk.store.FeatureStore` of the rows, where it keeps
    them, else from the files) | ``scene`` (descriptor cosine); ``threshold`` overrides the preset's, or alone
    groups by descriptor cosine. ``group``: ``components`` or ``tight``; ``keep``: ``largest``,
    ``first`` or ``oldest``; ``backend``: range search ``auto``, ``exact``, ``ivf``, or ``index``
    (pairs from the vector index ``index()`` returns, e.g. the store's ANN index).
    """
    from ..compose import resolve_image
    from .find import DedupResult, group_by_cosine, group_copies
    from .groups import group_pairs
    from .pairs import pairs_from_index
    from .policy import FileInfo, file_info, keep_remove
    from .score import load_presets

    preset = check_options(preset, threshold, group, keep, backend)
    paths = [resolve_image(n, images) for n in names]
    copy_model, presets, prov = load_presets() if preset else (None, {}, {})
    copies = preset in ("exact", "near")
    report_notes: list[str] = []
    skipped: list[tuple[str, str]] = []
    if copies and encoder is None:
        raise DedupError(
            f"preset {preset} checks copies image by image: give the model (and the images folder if the "
            "store's names are not paths), or group by descriptor alone with a threshold"
        )
    if copies and prov.get("card_hash") and not encoder.card.matches(prov["card_hash"]):
        report_notes.append(
            f"the presets were calibrated for model card {prov['card_hash']}, not {encoder.card.hash}; "
            "their thresholds may not carry over"
        )
    t = float(threshold if threshold is not None else presets[preset].threshold)
    if copies:
        hashes, features = copy_signals(paths, skipped, store_local(store, report_notes) if store is not None else None)
        result = group_copies(
            vectors, hashes, features, copy_model, t, mode=group, backend="auto" if backend == "index" else backend
        )
    elif backend == "index":
        if index is None:
            raise DedupError("backend 'index' needs a vector index (a collection's store)")
        pairs = pairs_from_index(index(), t)
        result = DedupResult(group_pairs(len(names), pairs, group), pairs, int(pairs[0].size), t)
    else:
        result = group_by_cosine(vectors, t, mode=group, backend=backend)
    infos: list[FileInfo] = [FileInfo(n) for n in names]
    grouped = {int(m) for g in result.groups for m in g.members}
    for k in grouped:
        infos[k] = file_info(names[k], paths[k], pixels(paths[k]))
    decisions = keep_remove(result.groups, infos, keep)
    rows: list[DuplicateRow] = []
    for gid, (g, (kept, _)) in enumerate(zip(result.groups, decisions), start=1):
        rep = np.asarray(vectors[g.representative], np.float32)
        cos = np.asarray(vectors[g.members], np.float32) @ rep
        for m, s, c in zip(g.members.tolist(), g.scores.tolist(), cos.tolist()):
            rows.append(
                DuplicateRow(
                    group=gid,
                    member=m,
                    name=names[m],
                    path=str(paths[m]) if paths[m] else None,
                    score=round(float(s), 4),
                    cosine=round(float(c), 4),
                    action="keep" if m == kept else "remove",
                )
            )
    label = f"preset {preset}" if preset else "descriptor cosine"
    report = DuplicateReport(rows, t, label, int(result.candidates), len(names), skipped, report_notes)
    log.info("%s%s", report.summary(), f"; {len(skipped)} images left out of the copy check" if skipped else "")
    return report
