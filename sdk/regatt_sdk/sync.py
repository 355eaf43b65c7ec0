"""``regatt sync MODEL SOURCES... -o STORE``: keep a store in step with folders that change.

One run compares the sources with the store's live rows (not removed, :mod:`regatt_sdk.tombstones`)
and their metadata (:mod:`regatt_sdk.photometa`):

* a name the store lacks is **added** (encoded);
* a name whose size and mtime are those recorded is **unchanged** (not read);
* otherwise its content hash decides: the same bytes (a copy, a ``touch``) is **touched**: its
  row is copied with the new metadata (no encoding); other bytes is **changed**: encoded again;
  the new row, its metadata and the tombstone of the old row go in one commit;
* a live name no source yields any more is **removed** (a tombstone) - unless the folder that
  held it could not be listed, or a source named on the command line disappeared during the run
  (then nothing is removed and the run fails with that reason).

Phases, in this order, each made of all-or-nothing commits: metadata for rows that lack it (rows
added by ``regatt encode``: described from their files as they are now), encoding (added and
changed, through :func:`regatt_sdk.pipeline.encode_to_store`, which keeps local features when
the store has them), touched copies, removals. A run killed at any moment and run again ends
with the same rows, vectors, metadata and tombstones as a run that was never interrupted; a run
with nothing changed commits nothing.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import RegattError
from .photometa import covered, describe, folder_of, read_meta
from .photometa import side as photo_side
from .sources import SourceError, SourceItem, check_specs, iter_sources
from .store import MANIFEST, Failure, FeatureStore, StoreError
from .tombstones import live_rows, tombstone_side


class SyncError(RegattError):
    """A sync that cannot run, or stopped before removing anything (a source disappeared)."""


@dataclass
class SyncReport:
    """What one :func:`sync` did (counts of names) and the store afterwards."""

    store: str
    added: int = 0
    changed: int = 0
    touched: int = 0
    removed: int = 0
    unchanged: int = 0
    failed: int = 0
    described: int = 0  # stored rows that got their metadata in this run
    rows: int = 0  # rows in the store (removed ones included, until compacted)
    live: int = 0
    seconds: float = 0.0
    failures: list[Failure] = field(default_factory=list)
    unlisted: list[str] = field(default_factory=list)  # folders that could not be listed

    def summary(self) -> str:
        line = (
            f"sync {self.store}: {self.added} added, {self.changed} changed, {self.removed} removed, "
            f"{self.touched} touched (same content), {self.unchanged} unchanged, {self.failed} failed "
            f"in {self.seconds:.1f} s; {self.live} live rows ({self.rows} stored)"
        )
        if self.described:
            line += f"; metadata recorded for {self.described} rows stored before"
        if self.unlisted:
            line += f"; {len(self.unlisted)} folder(s) could not be listed (their photos kept): {self.unlisted[0]}"
        return line


def sync(
    encoder: Any,
    sources: Iterable[str | os.PathLike],
    store_path: str | os.PathLike,
    *,
    extensions: str | Iterable[str] | None = None,
    list_files: Iterable[str | os.PathLike] = (),
    local: bool | Any | None = None,
    progress: bool = False,
    chunk_rows: int = 256,
    **options: Any,
) -> SyncReport:
    """Bring the store at ``store_path`` (made if missing) in step with ``sources`` (see the
    module docstring). ``encoder``: as :func:`regatt_sdk.pipeline.encode_to_store` wants it (for
    a store of the model's legacy hash, :func:`regatt_sdk.compose.encoder_for_store`);
    ``options``: ``batch_size``, ``workers``, ``max_pixels``, ``min_side``, ``upscale_small``."""
    from .pipeline import encode_to_store

    t0 = time.monotonic()
    specs = [os.fspath(s) for s in sources]
    list_files = [os.fspath(f) for f in list_files]
    if "-" in specs:
        raise SyncError(
            "sync reads its sources twice (listing, then checking): name files, folders or @LIST files, not -"
        )
    if not specs and not list_files:
        raise SyncError("give at least one folder, file or @LIST to sync")
    check_specs(specs, list_files)
    path = Path(store_path)
    report = SyncReport(store=os.fspath(store_path))
    items = list(iter_sources(specs, extensions=extensions, list_files=list_files))
    unlisted = [it for it in items if it.error is not None]
    report.unlisted = [it.name for it in unlisted]
    good = [it for it in items if it.error is None]
    by_name = {it.name: it for it in good}

    records: dict[str, dict] = {}  # metadata of each name to encode or copy
    live: dict[str, int] = {}
    touched: list[tuple[int, dict]] = []
    encode: set[str] = set()
    exists = (path / MANIFEST).exists()
    if exists:
        with FeatureStore.open(path, writable=True) as st:
            _check_model(st, encoder, path)
            report.described = _describe_stored(st, by_name, chunk_rows)
            live = live_rows(st)
            metas = read_meta(st)
        for it in good:
            row = live.get(it.name)
            try:
                stat = os.stat(it.path)
            except OSError:
                continue  # gone since it was listed: removed below if it was stored
            if row is None:
                encode.add(it.name)
                continue
            old = metas[row]
            if old.get("size") == stat.st_size and old.get("mtime_ns") == stat.st_mtime_ns:
                report.unchanged += 1
                continue
            try:
                rec = describe(it.name, it.path, stat)
            except OSError:
                continue
            if rec["sha256"] == old.get("sha256"):
                touched.append((row, rec))
            else:
                records[it.name] = rec
                encode.add(it.name)
    else:
        encode = set(by_name)
    report.added = sum(1 for n in encode if n not in live)
    report.changed = len(encode) - report.added

    def row_side(store: FeatureStore, names: list[str]) -> tuple[dict, dict]:
        recs = []
        for n in names:
            if n not in records:
                it = by_name[n]
                try:
                    records[n] = describe(n, it.path)
                except OSError:  # encoded, then gone: described by name only, removed next run
                    records[n] = {"folder": folder_of(n), "size": -1, "mtime_ns": -1, "sha256": ""}
            recs.append(records[n])
        side, meta = photo_side(store, recs)
        tside, tmeta = tombstone_side(store, [live[n] for n in names if n in live])
        return {**side, **tside}, {**meta, **tmeta}

    skip = {it.name for it in items} - encode
    enc = encode_to_store(
        encoder, good, path, resume=True, skip=skip, row_side=row_side, local=local,
        progress=progress, chunk_rows=chunk_rows, **options,
    )  # fmt: skip
    report.failed, report.failures = enc.failed, enc.failures
    report.added -= sum(1 for f in enc.failures if f.name not in live)
    report.changed -= sum(1 for f in enc.failures if f.name in live)

    with FeatureStore.open(path, writable=True) as st:
        if touched:
            _copy_rows(st, touched, chunk_rows)
            report.touched = len(touched)
        gone = sorted(set(live) - set(by_name))
        keep_under = [u.name.rstrip(os.sep) + os.sep for u in unlisted]
        gone = [n for n in gone if not any(n.startswith(p) for p in keep_under)]
        if gone:
            missing = [s for s in specs + list_files if not os.path.lexists(s.lstrip("@") if s.startswith("@") else s)]
            if missing:
                raise SyncError(
                    f"{missing[0]} disappeared during the sync: nothing was removed (new and changed photos "
                    "were stored); run it again when the source is back"
                )
            rows = [live[n] for n in gone]
            side, meta = tombstone_side(st, rows)
            if side:
                st.append([], np.zeros((0, st.dim), np.float32), side=side, side_meta=meta)
            report.removed = len(gone)
        report.rows = st.count
        report.live = len(live_rows(st))
    report.seconds = time.monotonic() - t0
    return report


def _check_model(st: FeatureStore, encoder: Any, path: Path) -> None:
    if st.card_hash != str(encoder.card.hash) or st.dim != int(encoder.dim):
        raise StoreError(
            f"{path} was made with another model (card {st.card_hash}, dim {st.dim}), not this one "
            f"(card {encoder.card.hash}, dim {encoder.dim}): sync it with the model that made it"
        )


def _describe_stored(st: FeatureStore, by_name: dict[str, SourceItem], chunk_rows: int) -> int:
    """Metadata for the rows that lack it (a prefix is covered), from their files as they are
    now; a row whose file is not among the sources gets a record by name only (it is live, so it
    is removed next; or already removed). Returns how many rows got one."""
    start = covered(st)
    if start >= st.count:
        return 0
    names = st.names[start:]
    done = 0
    for a in range(0, len(names), chunk_rows):
        recs = []
        for name in names[a : a + chunk_rows]:
            it = by_name.get(name)
            rec = None
            if it is not None:
                try:
                    rec = describe(name, it.path)
                except OSError:
                    rec = None
            recs.append(rec or {"folder": folder_of(name), "size": -1, "mtime_ns": -1, "sha256": ""})
        side, meta = photo_side(st, recs)
        st.append([], np.zeros((0, st.dim), np.float32), side=side, side_meta=meta)
        done += len(recs)
    return done


def _copy_rows(st: FeatureStore, touched: list[tuple[int, dict]], chunk_rows: int) -> None:
    """Copy rows (vector, local features) with new metadata, removing the originals."""
    from .local.storage import META as LOCAL

    local = st.side_meta.get(LOCAL)
    li = book = config = None
    if local:
        from .local.codec import load_codebook
        from .local.extract import LocalConfig
        from .local.storage import LocalIndex

        li, book, config = LocalIndex.open(st), load_codebook(), LocalConfig.from_json(local["config"])
    names = st.names
    for a in range(0, len(touched), chunk_rows):
        part = touched[a : a + chunk_rows]
        rows = [r for r, _ in part]
        side, meta = photo_side(st, [rec for _, rec in part])
        if li is not None:
            from .local.storage import meta_after, pack

            feats = [li.features(r) for r in rows]
            side.update(pack(feats, int(local["keypoints"])))
            meta.update(meta_after(st, feats, config, book))
        tside, tmeta = tombstone_side(st, rows)
        side.update(tside)
        meta.update(tmeta)
        st.append([names[r] for r in rows], np.ascontiguousarray(st.vectors[rows], np.float32),
                  side=side, side_meta=meta)  # fmt: skip
        local = st.side_meta.get(LOCAL)


__all__ = ["SourceError", "SyncError", "SyncReport", "sync"]
