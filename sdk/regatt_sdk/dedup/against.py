"""New photos against an existing collection: ``regatt dedup --against STORE new/`` and
:meth:`regatt_sdk.collection.Collection.duplicates_of`.

Each new photo is described with the collection's model and searched among the collection's
live rows (removed ones never match): its ``top`` nearest rows are the candidates. With a
threshold alone (or the ``scene`` preset) a candidate is a duplicate when its descriptor cosine
reaches the threshold; with ``exact`` / ``near`` each (new photo, candidate) pair is scored by
the calibrated copy check (descriptor cosine, DCT hash, geometry of local-feature matches; the
candidates' files are read for it) and kept at the preset's probability. The collection is
neither changed nor re-grouped: the work is one search per new photo plus the copy check of its
candidates.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .run import DedupError, check_options


@dataclass(frozen=True)
class Match:
    """A new photo (``new``, its ``path``) that duplicates collection row ``row`` (``name``),
    with the rule's ``score`` (cosine, or copy probability) and the descriptor ``cosine``."""

    new: str
    path: str
    row: int
    name: str
    score: float
    cosine: float

    def as_dict(self) -> dict[str, Any]:
        return {"new": self.new, "path": self.path, "row": self.row, "name": self.name,
                "score": self.score, "cosine": self.cosine}  # fmt: skip


@dataclass
class AgainstReport:
    """``matches`` (best first per new photo), ``new`` photos described, the ``threshold`` and
    rule ``label``, ``failed`` ``(name, why)`` photos that could not be described, ``skipped``
    files left out of the copy check and ``notes``."""

    matches: list[Match]
    new: int
    threshold: float
    label: str
    failed: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def duplicated(self) -> int:
        """New photos with at least one match."""
        return len({m.new for m in self.matches})

    def summary(self) -> str:
        return (
            f"{self.duplicated} of {self.new} new photos duplicate photos of the collection "
            f"({len(self.matches)} matches; {self.label}, threshold {self.threshold:.3f})"
            + (f"; {len(self.failed)} could not be read" if self.failed else "")
        )


def find_in_collection(
    collection: Any,
    sources: Iterable[str],
    *,
    preset: str | None = None,
    threshold: float | None = None,
    top: int = 10,
    images: str | None = None,
    extensions: str | None = None,
) -> AgainstReport:
    """Duplicates in ``collection`` (a :class:`~regatt_sdk.collection.Collection` opened with
    its model) of the photos ``sources`` names (see the module docstring)."""
    from ..compose import resolve_image
    from ..errors import RegattError
    from ..sources import iter_sources
    from .find import pair_features
    from .run import copy_signals
    from .score import load_presets

    preset = check_options(preset, threshold, "components", "largest", "auto")
    if top < 1:
        raise DedupError(f"top must be at least 1, got {top}")
    encoder = collection._need_encoder("find duplicates of new photos")
    copy_model, presets, prov = load_presets() if preset else (None, {}, {})
    copies = preset in ("exact", "near")
    t = float(threshold if threshold is not None else presets[preset].threshold)
    label = f"preset {preset}" if preset else "descriptor cosine"
    report = AgainstReport([], 0, t, label)
    if copies and prov.get("card_hash") and not encoder.card.matches(prov["card_hash"]):
        report.notes.append(
            f"the presets were calibrated for model card {prov['card_hash']}, not {encoder.card.hash}; "
            "their thresholds may not carry over"
        )
    items, vecs = [], []
    for item in iter_sources(list(sources), extensions=extensions):
        if item.error is not None:
            report.failed.append((item.name, item.error))
            continue
        try:
            vecs.append(np.asarray(encoder.encode(item.path), np.float32))
            items.append(item)
        except RegattError as exc:
            report.failed.append((item.name, str(exc)))
    report.new = len(items)
    if not items:
        return report
    q = np.stack(vecs)
    searcher = collection.searcher()
    k = min(int(top), searcher.index.size)
    scores, rows = searcher.search_vectors(q, k)
    pairs = [(a, int(r), float(s)) for a in range(len(items)) for s, r in zip(scores[a], rows[a]) if r >= 0]
    if copies:
        pairs = [p for p in pairs if p[2] >= copy_model.cand_cosine]
    else:
        pairs = [p for p in pairs if p[2] >= t]
    if not pairs:
        return report
    names = collection.names
    cand = sorted({r for _, r, _ in pairs})
    slot = {r: i for i, r in enumerate(cand)}
    if copies:
        # the candidates' rows, then the new photos: one small set for the copy check
        comb = np.concatenate([np.asarray(collection.vectors[cand], np.float32), q])
        paths: list[Path | None] = [resolve_image(names[r], images) for r in cand]
        paths += [Path(it.path) for it in items]
        hashes, local = copy_signals(paths, report.skipped)
        i = np.array([slot[r] for _, r, _ in pairs], np.int64)
        j = np.array([len(cand) + a for a, _, _ in pairs], np.int64)
        prob = copy_model.probability(pair_features(comb, hashes, local, i, j))
        scored = [(a, r, float(p), c) for (a, r, c), p in zip(pairs, prob)]
    else:
        scored = [(a, r, c, c) for a, r, c in pairs]
    for a, r, s, c in sorted(scored, key=lambda x: (x[0], -x[2])):
        if s >= t:
            report.matches.append(Match(items[a].name, items[a].path, r, names[r], round(s, 4), round(c, 4)))
    return report
