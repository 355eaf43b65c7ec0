"""Removed rows of a feature store: tombstones, append-only and committed like the rows.

A store's rows never change. Removing a photo appends its row number to the side file
``deleted.rows`` (little-endian int64, one entry a row; see :mod:`regatt_sdk.store`), in the
same all-or-nothing commit as whatever goes with it (the new row of an updated photo, its
metadata), so a crash leaves either the row live and nothing new, or both done.
``side_meta["deleted"] = {"count": entries}`` repeats the number of entries.

Every search path honours them: the searcher wraps its index in
:class:`~regatt_sdk.index.masked.MaskedIndex` (exact and FAISS: over-fetch, then drop), the
pgvector table deletes the rows (:func:`regatt_sdk.index.pgvector.load_store`), and the second
stage drops them from its visual-word candidates. :func:`regatt_sdk.compact.compact` rewrites a
store without them.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from .store import FeatureStore, StoreError

#: side file of removed row numbers (int64, append-only)
DELETED = "deleted.rows"
#: ``side_meta`` key: ``{"count": entries in DELETED}``
META = "deleted"


def deleted_rows(store: FeatureStore) -> np.ndarray:
    """The removed rows, sorted and unique ``(m,)`` int64 (empty when none)."""
    nbytes = store.side_bytes(DELETED)
    if nbytes == 0:
        return np.zeros(0, np.int64)
    count = int((store.side_meta.get(META) or {}).get("count", -1))
    if nbytes % 8 or count != nbytes // 8:
        raise StoreError(
            f"{store.side_path(DELETED)}: {nbytes} committed bytes for {count} removed rows (store damaged): "
            "check it with regatt verify"
        )
    rows = np.fromfile(store.side_path(DELETED), dtype="<i8", count=count)
    if len(rows) != count:
        raise StoreError(f"{store.side_path(DELETED)} is shorter than its committed {nbytes} bytes (store damaged)")
    return np.unique(rows.astype(np.int64))


def deleted_mask(store: FeatureStore) -> np.ndarray | None:
    """``(N,)`` bool, True for removed rows; ``None`` when the store has removed none."""
    rows = deleted_rows(store)
    if len(rows) == 0:
        return None
    mask = np.zeros(store.count, bool)
    mask[rows[rows < store.count]] = True
    return mask


def live_rows(store: FeatureStore) -> dict[str, int]:
    """``{name: row}`` of the rows not removed (a name stored twice: its last live row)."""
    gone = set(deleted_rows(store).tolist())
    return {name: row for row, name in enumerate(store.names) if row not in gone}


def tombstone_side(store: FeatureStore, rows: Iterable[int]) -> tuple[dict[str, bytes], dict]:
    """``(side, side_meta)`` for :meth:`FeatureStore.append` that remove ``rows`` (rows already
    removed, or repeated, are dropped; a row past the store's end is a ``StoreError``)."""
    new = np.unique(np.asarray(list(rows), np.int64))
    if len(new) and (new[0] < 0 or new[-1] >= store.count):
        raise StoreError(f"cannot remove row {int(new[-1] if new[-1] >= store.count else new[0])}: "
                         f"{store.path} has rows 0..{store.count - 1}")  # fmt: skip
    new = new[~np.isin(new, deleted_rows(store))]
    if len(new) == 0:
        return {}, {}
    count = store.side_bytes(DELETED) // 8 + len(new)
    return {DELETED: new.astype("<i8").tobytes()}, {META: {"count": int(count)}}


def remove(store: FeatureStore, rows: Iterable[int]) -> int:
    """Remove ``rows`` of the writable ``store`` in one commit; returns how many were newly removed."""
    side, meta = tombstone_side(store, rows)
    if side:
        store.append([], np.zeros((0, store.dim), np.float32), side=side, side_meta=meta)
    return len(side.get(DELETED, b"")) // 8


def remove_names(store: FeatureStore, names: Iterable[str]) -> int:
    """Remove the live rows named ``names`` (unknown names are a ``StoreError``); returns the count."""
    live = live_rows(store)
    wanted = list(names)
    missing = [n for n in wanted if n not in live]
    if missing:
        raise StoreError(f"{store.path} has no live row named {missing[0]!r}")
    return remove(store, [live[n] for n in wanted])
