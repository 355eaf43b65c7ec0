"""``regatt compact STORE``: rewrite a feature store without its removed rows, atomically.

The kept rows are written, in order, into a new store beside it (``.STORE.compact``: vectors,
names, failures, and the side files that follow the rows: local features ``local.rows/kp/desc/
words`` with their ``side_meta``, photo metadata ``photo.jsonl``), through the store's own
append path (so its checksums are fresh and valid), fsync-ed; then the two directories are
swapped in one step (``renameat2(RENAME_EXCHANGE)`` on Linux; elsewhere two renames, finished
by the next run if interrupted between them) and the old one is deleted. A kill -9 at any
moment leaves the old store or the new one at ``STORE``; running again gives the same result
as a clean run. The store's ANN index (``STORE.ann.*``) numbers the old rows: it is removed
(rebuild it with ``regatt index --faiss``); a pgvector table loaded from the store is reloaded
by the next load (the store's ``side_meta["generation"]`` changes).
"""

from __future__ import annotations

import ctypes
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .files import fsync_dir
from .store import FeatureStore, StoreError
from .tombstones import DELETED, deleted_mask

#: ``side_meta`` key changed by every compaction (tables keyed by row number reload on a change)
GENERATION = "generation"


@dataclass
class CompactReport:
    """What :func:`compact` did: rows before and after, how many removed, how long."""

    store: str
    before: int
    after: int
    seconds: float = 0.0

    @property
    def removed(self) -> int:
        return self.before - self.after

    def summary(self) -> str:
        if not self.removed:
            return f"{self.store}: no removed rows, nothing to compact ({self.after} rows)"
        return (
            f"{self.store}: {self.removed} removed rows dropped, {self.after} rows kept "
            f"(was {self.before}) in {self.seconds:.1f} s"
        )


def _paths(path: Path) -> tuple[Path, Path]:
    return path.with_name(f".{path.name}.compact"), path.with_name(f".{path.name}.precompact")


def compact(store_path: str | os.PathLike, *, chunk_rows: int = 65536) -> CompactReport:
    """Rewrite the store at ``store_path`` without its removed rows (see the module docstring)."""
    from .local.storage import DESC, KP, ROW_DTYPE, ROWS, WORDS
    from .local.storage import META as LOCAL
    from .photometa import META as PHOTO_META
    from .photometa import PHOTO, covered, pack, read_meta

    path = Path(os.path.normpath(os.fspath(store_path)))
    t0 = time.monotonic()
    new_path, old_path = _paths(path)
    _finish_interrupted(path, new_path, old_path)
    store = FeatureStore.open(path, writable=True)
    try:
        known = {DELETED, ROWS, KP, DESC, WORDS, PHOTO}
        unknown = sorted(set(store.manifest.get("side", {})) - known)
        if unknown:
            raise StoreError(f"{path} has side files compact does not know how to rewrite: {', '.join(unknown)}")
        mask = deleted_mask(store)
        report = CompactReport(str(store_path), store.count, store.count)
        if mask is None:
            return report
        keep = np.flatnonzero(~mask)
        report.after = len(keep)
        if new_path.exists():
            shutil.rmtree(new_path)  # an earlier compaction killed before its swap
        meta = store.side_meta
        names, vectors = store.names, store.vectors
        local = meta.get(LOCAL)
        li = None
        if local:
            from .local.storage import LocalIndex

            li = LocalIndex.open(store, rows_needed=int(local["count"]))
        photos = read_meta(store) if covered(store) else []
        out = FeatureStore.create(new_path, card_hash=store.card_hash, dim=store.dim, model=store.manifest.get("model"))
        try:
            gen = {GENERATION: uuid.uuid4().hex}
            first: dict = {}
            if local:
                first = {ROWS: b"", KP: b"", DESC: b"", WORDS: b""}
            out.append([], np.zeros((0, store.dim), np.float32), store.failures, side=first,
                       side_meta={**gen, **({LOCAL: {**local, "count": 0, "keypoints": 0}} if local else {})})  # fmt: skip
            for a in range(0, len(keep), chunk_rows):
                rows = keep[a : a + chunk_rows]
                side: dict[str, bytes] = {}
                side_meta: dict = {}
                if li is not None:
                    lrows = rows[rows < li.count]
                    side, side_meta = _local_chunk(out, li, lrows, ROW_DTYPE, (ROWS, KP, DESC, WORDS), LOCAL)
                prows = rows[rows < len(photos)]
                if len(prows):
                    side[PHOTO] = pack([photos[int(r)] for r in prows])
                    side_meta[PHOTO_META] = {"count": covered(out) + len(prows)}
                out.append([names[int(r)] for r in rows], np.ascontiguousarray(vectors[rows], np.float32),
                           side=side, side_meta=side_meta)  # fmt: skip
        finally:
            out.close()
        fsync_dir(new_path)
        from .ann import index_paths

        for file in index_paths(path):  # numbers the old rows
            file.unlink(missing_ok=True)
        _swap(path, new_path, old_path)
    finally:
        store.close()
    shutil.rmtree(new_path, ignore_errors=True)  # the old store, after the exchange
    shutil.rmtree(old_path, ignore_errors=True)
    report.seconds = time.monotonic() - t0
    return report


def _local_chunk(out, li, rows: np.ndarray, row_dtype, files, key) -> tuple[dict, dict]:
    rows_f, kp_f, desc_f, words_f = files
    meta = out.side_meta[key]
    start = int(meta["keypoints"])
    ends = li.rows["end"]
    starts = np.concatenate([[0], ends[:-1]]) if li.count else np.zeros(0, np.int64)
    a, b = starts[rows], ends[rows]
    lengths = (b - a).astype(np.int64)
    idx = np.concatenate([np.arange(x, y) for x, y in zip(a, b)]) if len(rows) else np.zeros(0, np.int64)
    rec = np.zeros(len(rows), row_dtype)
    rec["end"] = start + np.cumsum(lengths)
    for f in ("scale", "width", "height"):
        rec[f] = li.rows[f][rows]
    side = {
        rows_f: rec.tobytes(),
        kp_f: np.asarray(li.kp[idx], "<f2").tobytes(),
        desc_f: np.asarray(li.desc[idx], np.int8).tobytes(),
        words_f: np.asarray(li.words[idx], "<u2").tobytes(),
    }
    new_meta = {**meta, "count": int(meta["count"]) + len(rows), "keypoints": start + int(lengths.sum())}
    return side, {key: new_meta}


_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux ``renameat2``); False where that is not available."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    rc = fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (22, 38, 95):  # EINVAL, ENOSYS, EOPNOTSUPP: this file system cannot
        return False
    raise StoreError(f"cannot swap {b} into {a}: {os.strerror(err)}")


def _swap(path: Path, new_path: Path, old_path: Path) -> None:
    """Put ``new_path`` at ``path``; the old store ends at ``new_path`` (exchange) or ``old_path``."""
    if _exchange(path, new_path):
        fsync_dir(path.parent)
        return
    os.replace(path, old_path)
    fsync_dir(path.parent)
    os.replace(new_path, path)
    fsync_dir(path.parent)


def _finish_interrupted(path: Path, new_path: Path, old_path: Path) -> None:
    """Finish a compaction killed between its two renames (systems without an exchange)."""
    if not path.exists() and old_path.exists():
        if (new_path / "manifest.json").exists():
            os.replace(new_path, path)
        else:
            os.replace(old_path, path)
        fsync_dir(path.parent)
    if path.exists() and old_path.exists():
        shutil.rmtree(old_path)
