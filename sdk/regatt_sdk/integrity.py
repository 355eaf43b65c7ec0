"""Checking a feature store in full (``regatt verify STORE``) and cutting it back to its last
good chunk when asked (``regatt verify --repair STORE``).

:func:`verify` reads everything a store commits: the sizes of its files, every chunk of
``checksums.jsonl`` (the CRC-32 of what each commit wrote to the vectors, the names, the failure
records and every side file), every name line, and whether every vector is finite. It names the
damaged rows. Rows written before checksums existed (``checksums_from_row``) are checked by
size, names and finite values only.

:func:`repair` cuts the store back to the start of the first damaged chunk (for rows without
checksums: the first damaged row), and any bytes past what the manifest commits; it first copies
every byte it cuts, and the old manifest, to ``STORE/repair-<UTC time>/`` (``<file>`` holding the
cut bytes, ``cut.json`` saying from which offset), then commits the shorter manifest, then
truncates. Nothing is cut without :func:`repair`.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .files import atomic_write, fsync_dir
from .names import display
from .store import (
    CHECKSUMS,
    FAILURES,
    MANIFEST,
    NAMES,
    PENDING,
    SIDE,
    SIDE_META,
    VECTORS,
    FeatureStore,
    StoreError,
    _read_manifest,
    chunk_errors,
    committed_sizes,
)


@dataclass
class Damage:
    """Rows ``start .. end-1`` are damaged (``chunk``: the commit's index in checksums.jsonl)."""

    start: int
    end: int
    reason: str
    chunk: int | None = None
    names: list[str] = field(default_factory=list)

    def describe(self) -> str:
        rows = f"row {self.start}" if self.end - self.start == 1 else f"rows {self.start}..{self.end - 1}"
        where = f" (chunk {self.chunk})" if self.chunk is not None else ""
        shown = f"; names: {', '.join(self.names)}" if self.names else ""
        return f"{rows}{where}: {self.reason}{shown}"


@dataclass
class VerifyReport:
    """What :func:`verify` found. ``ok``: no damage and nothing past the committed bytes except
    what an interrupted commit left (which a writer's open cuts by itself)."""

    path: Path
    count: int
    chunks: int
    unchecked_rows: int
    damage: list[Damage]
    tails: dict[str, int]
    interrupted: bool
    _chunks: list[dict] = field(default_factory=list, repr=False)
    _line_offsets: list[int] = field(default_factory=list, repr=False)

    @property
    def ok(self) -> bool:
        return not self.damage and (not self.tails or self.interrupted)

    def lines(self) -> list[str]:
        out = [f"{self.path}: {self.count} rows, {self.chunks} chunks checked"]
        if self.unchecked_rows:
            out.append(
                f"note: rows 0..{self.unchecked_rows - 1} were written before checksums: checked by size, "
                "names and finite values only"
            )
        for d in self.damage:
            out.append(f"damaged: {d.describe()}")
        if self.tails:
            what = ", ".join(f"{n} {b} bytes" for n, b in sorted(self.tails.items()))
            if self.interrupted:
                out.append(f"note: an interrupted commit left {what} past the committed data (a writer cuts them)")
            else:
                out.append(
                    f"damaged: data past what the manifest commits ({what}): the manifest is older than the data"
                )
        if self.ok:
            out.append("ok: every committed byte checks")
        return out


def _names_of(path: Path, offsets: list[int], rows: range, limit: int = 3) -> list[str]:
    """Up to ``limit`` names of ``rows`` (as :func:`~regatt_sdk.names.display` shows them)."""
    out = []
    try:
        with open(path / NAMES, "rb") as fh:
            for r in list(rows)[:limit]:
                if r + 1 >= len(offsets):
                    break
                fh.seek(offsets[r])
                raw = fh.read(offsets[r + 1] - offsets[r])
                try:
                    out.append(display(str(json.loads(raw))))
                except ValueError:
                    out.append(f"<line {r + 1} unreadable>")
    except OSError:
        pass
    return out


def _interrupted(path: Path, committed: dict[str, int], tails: dict[str, int]) -> bool:
    store = FeatureStore(path, {}, writable=False, lock_fd=None)
    return store._interrupted_commit(committed, tails)


def verify(path: str | os.PathLike) -> VerifyReport:
    """Check every committed byte of the store at ``path`` (see the module docstring)."""
    path = Path(path)
    if not path.is_dir():
        raise StoreError(f"feature store {path} does not exist")
    m = _read_manifest(path)
    count, dim = int(m["count"]), int(m["dim"])
    committed = committed_sizes(m)
    damage: list[Damage] = []
    tails: dict[str, int] = {}
    actual: dict[str, int] = {}
    short: dict[str, int] = {}
    for name, size in committed.items():
        try:
            actual[name] = (path / name).stat().st_size
        except FileNotFoundError:
            actual[name] = -1
        if actual[name] < 0:
            damage.append(Damage(0, max(count, 1), f"{name} is missing"))
        elif actual[name] < size:
            short[name] = actual[name]
        elif actual[name] > size:
            tails[name] = actual[name] - size

    # names: one JSON line per row
    offsets = [0]
    if actual.get(NAMES, -1) >= 0:
        with open(path / NAMES, "rb") as fh:
            data = fh.read(committed[NAMES])
        pos = 0
        for k, line in enumerate(data.splitlines(keepends=True)):
            if not line.endswith(b"\n"):
                break  # cut short (reported with the file's size)
            pos += len(line)
            offsets.append(pos)
            try:
                json.loads(line)
            except ValueError:
                damage.append(Damage(k, k + 1, "its name line is not JSON"))
        if len(offsets) - 1 != count and NAMES not in short:
            start = min(len(offsets) - 1, count)
            damage.append(Damage(start, max(count, start + 1), f"{len(offsets) - 1} name lines for {count} rows"))

    # vectors: finite values
    if count and actual.get(VECTORS, -1) >= committed[VECTORS]:
        vectors = np.memmap(path / VECTORS, dtype="<f4", mode="r", shape=(count, dim))
        step = max(1, (64 << 20) // (4 * dim))
        for start in range(0, count, step):
            block = np.asarray(vectors[start : start + step])
            bad = np.flatnonzero(~np.isfinite(block).all(axis=1))
            for r in bad[:1000]:
                row = start + int(r)
                damage.append(Damage(row, row + 1, "its vector holds NaN or infinite values"))
        del vectors

    # chunks: the CRC-32 of every commit's bytes
    chunks: list[dict] = []
    if CHECKSUMS in committed and actual.get(CHECKSUMS, -1) >= committed[CHECKSUMS]:
        with open(path / CHECKSUMS, "rb") as fh:
            data = fh.read(committed[CHECKSUMS])
        pos = 0
        for k, line in enumerate(data.splitlines(keepends=True)):
            try:
                chunk = json.loads(line)
                rows = [int(chunk["rows"][0]), int(chunk["rows"][1])]
            except (ValueError, KeyError, TypeError, IndexError):
                damage.append(
                    Damage(
                        chunks[-1]["rows"][1] if chunks else 0,
                        max(count, 1),
                        f"{CHECKSUMS} line {k + 1} is unreadable",
                        k,
                    )
                )
                break
            chunk["_offset"] = pos
            pos += len(line)
            chunks.append(chunk)
            errors = chunk_errors(path, chunk)
            if errors:
                damage.append(Damage(rows[0], max(rows[1], rows[0] + 1), "; ".join(errors), k))
    unchecked = min(count, int(m.get("checksums_from_row", count)))
    for name, have in short.items():  # the first row whose bytes are missing
        starts = [int(c["rows"][0]) for c in chunks if name in c["files"] and sum(c["files"][name][:2]) > have]
        fallback = {VECTORS: have // (4 * dim), NAMES: len(offsets) - 1}.get(name, 0 if name in (CHECKSUMS,) else count)
        start = min(starts) if starts else fallback
        reason = f"{name} holds {have} of {committed[name]} committed bytes"
        damage.append(Damage(start, max(count, start + 1), reason))
    for d in damage:
        if not d.names and d.start < count:
            d.names = _names_of(path, offsets, range(d.start, min(d.end, count)))
    damage.sort(key=lambda d: (d.start, d.end))
    interrupted = bool(tails) and _interrupted(path, committed, tails)
    return VerifyReport(path, count, len(chunks), unchecked, damage, tails, interrupted, chunks, offsets)


@dataclass
class RepairReport:
    """``kept`` rows; ``cut`` rows moved to ``copy`` (with every cut byte, per file)."""

    kept: int
    cut: int
    copy: Path | None
    files: dict[str, int]


def _cut_point(report: VerifyReport, m: dict) -> tuple[int, dict[str, int]]:
    """``(rows kept, {file: bytes kept})`` for a repair after ``report``."""
    committed = committed_sizes(m)
    dim = int(m["dim"])
    if not report.damage:
        return report.count, committed
    first = min(d.start for d in report.damage)
    chunks = report._chunks
    # the first chunk that holds a damaged row (or is itself damaged): everything from it is cut
    bad_chunks = {d.chunk for d in report.damage}
    k = next((i for i, c in enumerate(chunks) if int(c["rows"][1]) > first or i in bad_chunks), None)
    from_row = int(m.get("checksums_from_row", report.count))
    if k is not None and int(chunks[k]["rows"][0]) >= from_row and first >= from_row:
        keep = dict(committed)
        for c in chunks[k:]:
            for name, (offset, _length, _crc) in c["files"].items():
                keep[name] = min(keep.get(name, int(offset)), int(offset))
        keep[CHECKSUMS] = int(chunks[k]["_offset"])
        return int(chunks[k]["rows"][0]), keep
    # a damaged row written before checksums: cut at that row
    keep = dict(committed)
    keep[VECTORS] = first * 4 * dim
    keep[NAMES] = report._line_offsets[first] if first < len(report._line_offsets) else committed[NAMES]
    keep[FAILURES] = _whole_lines(report.path / FAILURES, committed[FAILURES])
    if CHECKSUMS in keep:
        keep[CHECKSUMS] = 0
    return first, keep


def _whole_lines(file: Path, limit: int) -> int:
    """Bytes of the whole lines among the first ``limit`` bytes of ``file`` (what is there)."""
    try:
        with open(file, "rb") as fh:
            data = fh.read(limit)
    except OSError:
        return 0
    return data.rfind(b"\n") + 1


def repair(path: str | os.PathLike) -> RepairReport:
    """Cut the store back to its last good chunk (see the module docstring); holds the writer
    lock. Returns what was kept and cut; a store with nothing to cut is left as it is."""
    path = Path(path)
    lock = FeatureStore._lock(path)
    try:
        report = verify(path)
        m = _read_manifest(path)
        if report.ok and not report.tails:
            return RepairReport(report.count, 0, None, {})
        kept, keep = _cut_point(report, m)
        sizes = {name: (path / name).stat().st_size for name in keep if (path / name).exists()}
        cut_files = {name: sizes[name] - keep[name] for name in keep if sizes.get(name, 0) > keep[name]}
        stamp = time.strftime("repair-%Y%m%dT%H%M%SZ", time.gmtime())
        copy, n = path / stamp, 1
        while copy.exists():
            n += 1
            copy = path / f"{stamp}-{n}"
        copy.mkdir()
        shutil.copy2(path / MANIFEST, copy / MANIFEST)
        for name, nbytes in cut_files.items():
            with open(path / name, "rb") as src, open(copy / name, "wb") as dst:
                src.seek(keep[name])
                shutil.copyfileobj(src, dst, 1 << 22)
                dst.flush()
                os.fsync(dst.fileno())
        (copy / "cut.json").write_text(
            json.dumps({"rows_kept": kept, "rows_cut": report.count - kept,
                        "files": {n: {"from_offset": keep[n], "bytes": b} for n, b in cut_files.items()}}, indent=1)
        )  # fmt: skip
        fsync_dir(copy)
        m2 = dict(m)
        m2["count"] = kept
        m2["names_bytes"] = keep[NAMES]
        if keep[FAILURES] != int(m["failures_bytes"]):
            with open(path / FAILURES, "rb") as fh:
                m2["failure_count"] = fh.read(keep[FAILURES]).count(b"\n")
        m2["failures_bytes"] = keep[FAILURES]
        if SIDE in m:
            m2[SIDE] = {name: keep.get(name, int(size)) for name, size in m[SIDE].items()}
        if CHECKSUMS in keep:
            m2["checksums_bytes"] = keep[CHECKSUMS]
            kept_chunks = [c for c in report._chunks if int(c["_offset"]) < keep[CHECKSUMS]]
            if kept_chunks:
                last = {k: v for k, v in kept_chunks[-1].items() if k != "_offset"}
                m2["last_chunk"] = last
                if SIDE_META in m:
                    m2[SIDE_META] = last.get("side_meta", m[SIDE_META])
            else:
                m2.pop("last_chunk", None)
                m2["checksums_from_row"] = min(int(m.get("checksums_from_row", kept)), kept)
        m2["repaired"] = m.get("repaired", []) + [{"at": copy.name, "rows_kept": kept, "rows_cut": report.count - kept}]
        with atomic_write(path / MANIFEST, "w", fsync=True) as fh:
            json.dump(m2, fh, indent=1, sort_keys=True)
            fh.write("\n")
        for name in cut_files:
            with open(path / name, "r+b") as fh:
                fh.truncate(keep[name])
                fh.flush()
                os.fsync(fh.fileno())
        (path / PENDING).unlink(missing_ok=True)
        return RepairReport(kept, report.count - kept, copy, cut_files)
    finally:
        FeatureStore._unlock(lock)
