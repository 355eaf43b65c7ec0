"""The feature store: a directory of descriptors that numpy alone can memory-map.

Layout of a store directory::

    manifest.json     {"format", "kind", "card_hash", "dim", "dtype", "count", "commits",
                       "names_bytes", "failures_bytes", "failures", "model", ...}
    vectors.f32       raw little-endian float32, C order, shape (count, dim)
    names.jsonl       one JSON string per line: the image name of row i on line i
    failures.jsonl    one JSON object per line: {"name": ..., "reason": ...}
    .lock             advisory lock held by the one writer

Reading needs nothing but numpy::

    m = json.load(open("store/manifest.json"))
    vectors = np.memmap("store/vectors.f32", "<f4", "r", shape=(m["count"], m["dim"]))

Side files: other parts of the runtime (the local features of :mod:`regatt_sdk.local`) keep
more append-only files in the same directory, committed by the same manifest (``side``: the
committed bytes of each, ``side_meta``: their owner's counters), with the same rules.

Crash safety: the three data files are append-only, and ``manifest.json`` records how much of
each is committed (``count`` rows, ``names_bytes``, ``failures_bytes``). An append first records
the sizes it starts from and will reach in ``.commit.json``, writes and ``fsync``-s the data,
then writes the new manifest to a temporary file, ``fsync``-s it and atomically renames it over
``manifest.json`` (then ``fsync``-s the directory), then removes ``.commit.json``. A process
killed at any moment leaves the previous manifest or the new one; bytes past the committed lengths are ignored by readers, and
a writer's open cuts them only when ``.commit.json`` shows they are that interrupted commit.
Anything else past the committed lengths (a manifest older than its data: edited, or restored
from a backup) is refused, never cut: ``regatt verify --repair`` cuts it, keeping a copy.

Integrity: each commit appends one line to ``checksums.jsonl`` (committed like the data,
``checksums_bytes``): ``{"commit", "rows": [start, end], "files": {file: [offset, length,
crc32]}}`` for every file it wrote (vectors, names, failures, side files); the manifest's
``last_chunk`` repeats the last line, checked on every open (a cheap read of the last commit's
bytes). :mod:`regatt_sdk.integrity` checks every chunk (``regatt verify STORE``). Rows written
before checksums existed (``checksums_from_row``) have none; such stores keep opening. Vectors
that are not finite (NaN, inf) are refused on write.
"""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import RegattError
from .files import atomic_write, read_json

STORE_FORMAT = 1
STORE_KIND = "regatt.features"
MANIFEST = "manifest.json"
VECTORS = "vectors.f32"
NAMES = "names.jsonl"
FAILURES = "failures.jsonl"
LOCK = ".lock"
#: one line per commit: what it wrote and the CRC-32 of it (committed as ``checksums_bytes``)
CHECKSUMS = "checksums.jsonl"
#: the sizes an append starts from and will reach, written before its data (see the docstring)
PENDING = ".commit.json"
#: manifest keys of the side files: ``side`` = {file name: committed bytes}, ``side_meta`` =
#: {key: JSON value} that their owner (e.g. :mod:`regatt_sdk.local`) commits with them
SIDE = "side"
SIDE_META = "side_meta"
_CORE_FILES = frozenset({MANIFEST, VECTORS, NAMES, FAILURES, LOCK, CHECKSUMS, PENDING})


class StoreError(RegattError):
    """A feature store is missing, corrupt, busy, or belongs to another model."""


@dataclass(frozen=True)
class Failure:
    """One input that could not be encoded: its ``name`` and why (``reason``)."""

    name: str
    reason: str


def _read_manifest(path: Path) -> dict:
    file = path / MANIFEST
    raw = read_json(
        file,
        StoreError,
        missing=f"{path} is not a feature store (no {MANIFEST})",
        unreadable=lambda exc: f"{file} is unreadable or not JSON: {exc}",
    )
    if not isinstance(raw, dict) or raw.get("kind") != STORE_KIND:
        raise StoreError(f"{file} is not a regatt feature-store manifest")
    if raw.get("format") != STORE_FORMAT:
        raise StoreError(f"{path}: store format {raw.get('format')} is not supported")
    for key in ("card_hash", "dim", "count", "names_bytes", "failures_bytes"):
        if key not in raw:
            raise StoreError(f"{file} lacks {key!r}")
    return raw


def _read_jsonl(file: Path, nbytes: int) -> Iterator[object]:
    """Parsed lines of the first ``nbytes`` (committed) bytes of a JSON-lines file."""
    if nbytes == 0:
        return
    with open(file, "rb") as fh:
        data = fh.read(nbytes)
    if len(data) < nbytes:
        raise StoreError(f"{file} is shorter than its committed {nbytes} bytes (store damaged)")
    for k, line in enumerate(data.splitlines()):
        try:
            yield json.loads(line)
        except ValueError:  # bad JSON or bytes that are not UTF-8
            raise StoreError(
                f"{file}: line {k + 1} is not a JSON line (store damaged): check it with regatt verify"
            ) from None


def committed_sizes(manifest: dict) -> dict[str, int]:
    """``{file name: committed bytes}`` of every data file a manifest commits."""
    m = manifest
    sizes = {
        VECTORS: int(m["count"]) * int(m["dim"]) * 4,
        NAMES: int(m["names_bytes"]),
        FAILURES: int(m["failures_bytes"]),
    }
    for name, size in m.get(SIDE, {}).items():
        sizes[name] = int(size)
    if "checksums_bytes" in m:
        sizes[CHECKSUMS] = int(m["checksums_bytes"])
    return sizes


def crc32_range(file: Path, offset: int, length: int) -> int:
    """CRC-32 of ``length`` bytes of ``file`` from ``offset`` (-1 when the file is shorter)."""
    crc = 0
    with open(file, "rb") as fh:
        fh.seek(offset)
        left = length
        while left > 0:
            block = fh.read(min(left, 1 << 22))
            if not block:
                return -1
            crc = zlib.crc32(block, crc)
            left -= len(block)
    return crc


def chunk_errors(path: Path, chunk: dict) -> list[str]:
    """What fails in one ``checksums.jsonl`` record (``[]`` when every file matches)."""
    errors = []
    for name, (offset, length, crc) in sorted(chunk.get("files", {}).items()):
        try:
            got = crc32_range(path / name, int(offset), int(length))
        except OSError as exc:
            errors.append(f"{name}: {exc.strerror or exc}")
            continue
        if got != int(crc):
            errors.append(f"{name} bytes {offset}..{int(offset) + int(length)} fail their checksum")
    return errors


class FeatureStore:
    """A feature store directory (see the module docstring for the layout).

    Open with :meth:`create`, :meth:`open` or :meth:`open_for_append`. Writable stores hold an
    exclusive lock (``fcntl.flock`` where available) until :meth:`close`.
    """

    def __init__(self, path: Path, manifest: dict, *, writable: bool, lock_fd: int | None):
        self.path = path
        self._manifest = manifest
        self.writable = writable
        self._lock_fd = lock_fd

    # ------------------------------------------------------------------ opening

    @classmethod
    def create(cls, path: str | Path, *, card_hash: str, dim: int, model: dict | None = None) -> FeatureStore:
        """Make a new, empty store at ``path`` (absent or an empty directory) for one model."""
        path = Path(path)
        if path.exists():
            if not path.is_dir():
                raise StoreError(f"{path} exists and is not a directory")
            if (path / MANIFEST).exists():
                raise StoreError(f"{path} is already a feature store")
            leftovers = [p.name for p in path.iterdir()]
            ours = {LOCK, VECTORS, NAMES, FAILURES, CHECKSUMS, PENDING}
            if leftovers and not all(
                n in ours or n.startswith((MANIFEST + ".tmp", PENDING + ".tmp")) for n in leftovers
            ):
                raise StoreError(f"{path} is a non-empty directory that is not a feature store; choose a new path")
            # a store being created by another writer (refused by the lock below), or one whose
            # creation was killed before its first manifest (made again from nothing)
        if dim <= 0:
            raise StoreError(f"descriptor dimension must be positive, got {dim}")
        path.mkdir(parents=True, exist_ok=True)
        lock_fd = cls._lock(path)
        try:
            if (path / MANIFEST).exists():  # created by the writer that held the lock before us
                raise StoreError(f"{path} is already a feature store")
            held = [
                n for n in (VECTORS, NAMES, FAILURES, CHECKSUMS) if (path / n).exists() and (path / n).stat().st_size
            ]
            if held:  # data without a manifest: never overwritten
                raise StoreError(
                    f"{path} holds feature-store data ({', '.join(held)}) but no {MANIFEST}: restore the "
                    "manifest or choose a new output path"
                )
            for name in (VECTORS, NAMES, FAILURES, CHECKSUMS):
                with open(path / name, "wb"):
                    pass
            manifest = {
                "format": STORE_FORMAT,
                "kind": STORE_KIND,
                "card_hash": str(card_hash),
                "dim": int(dim),
                "dtype": "<f4",
                "vectors": VECTORS,
                "names": NAMES,
                "failures": FAILURES,
                "count": 0,
                "commits": 0,
                "names_bytes": 0,
                "failures_bytes": 0,
                "failure_count": 0,
                "checksums_bytes": 0,
                "checksums_from_row": 0,
                "model": model or {},
            }
            store = cls(path, manifest, writable=True, lock_fd=lock_fd)
            store._write_manifest(manifest)
            return store
        except BaseException:
            cls._unlock(lock_fd)
            raise

    @classmethod
    def open(cls, path: str | Path, *, writable: bool = False) -> FeatureStore:
        """Open an existing store, checking its files and its last commit's checksums;
        ``writable`` locks it and cuts off what an interrupted commit left (nothing else)."""
        path = Path(path)
        if not path.is_dir():
            raise StoreError(f"feature store {path} does not exist")
        lock_fd = cls._lock(path) if writable else None
        try:
            store = cls(path, _read_manifest(path), writable=writable, lock_fd=lock_fd)
            store._check_files(repair=writable)
            return store
        except BaseException:
            cls._unlock(lock_fd)
            raise

    @classmethod
    def open_for_append(
        cls,
        path: str | Path,
        *,
        card_hash: str,
        dim: int,
        resume: bool,
        model: dict | None = None,
    ) -> FeatureStore:
        """Create the store, or with ``resume`` reopen it after checking it matches the model.

        Without ``resume`` an existing store is refused; with it, a store made with a different
        model card (hash) or dimension is refused.
        """
        path = Path(path)
        if (path / MANIFEST).exists():
            if not resume:
                raise StoreError(
                    f"{path} already holds a feature store; pass --resume to continue it or choose a new output path"
                )
            store = cls.open(path, writable=True)
            if store.card_hash != card_hash or store.dim != dim:
                store.close()
                raise StoreError(
                    f"{path} was made with another model (card {store.card_hash}, dim "
                    f"{store.dim}), not this one (card {card_hash}, dim {dim}); "
                    "use a new output path"
                )
            return store
        return cls.create(path, card_hash=card_hash, dim=dim, model=model)

    @staticmethod
    def _lock(path: Path) -> int:
        fd = os.open(path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            import fcntl
        except ImportError:  # Windows: no advisory locks; single writer is the user's job
            return fd
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise StoreError(f"{path} is being written by another process") from None
        return fd

    @staticmethod
    def _unlock(fd: int | None) -> None:
        if fd is not None:
            os.close(fd)  # closing releases the flock

    def close(self) -> None:
        """Release the writer lock (no-op for read-only stores)."""
        self._unlock(self._lock_fd)
        self._lock_fd = None
        self.writable = False

    def __enter__(self) -> FeatureStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_files(self, *, repair: bool) -> None:
        """Check the data files hold the committed bytes and the last commit's checksums; when
        ``repair`` (a writer's open), cut off bytes past them *only* when ``.commit.json`` shows
        they are what an interrupted commit from this very state wrote. Anything else is refused
        before a byte is cut (a manifest older than its data)."""
        m = self._manifest
        expected = committed_sizes(m)
        tails = {}
        for name, size in expected.items():
            file = self.path / name
            try:
                actual = file.stat().st_size
            except FileNotFoundError:
                raise StoreError(f"{file} is missing (store damaged)") from None
            if actual < size:
                raise StoreError(f"{file} holds {actual} bytes, fewer than the {size} committed (store damaged)")
            if actual > size:
                tails[name] = actual - size
        last = m.get("last_chunk")
        if last:
            errors = chunk_errors(self.path, last)
            if errors:
                rows = last.get("rows", [0, 0])
                raise StoreError(
                    f"{self.path}: the last commit (rows {rows[0]}..{rows[1] - 1}) is damaged ({'; '.join(errors)}): "
                    "see regatt verify STORE (--repair cuts back to the last good chunk, keeping a copy)"
                )
        if not repair:
            return
        if tails and not self._interrupted_commit(expected, tails):
            what = ", ".join(f"{n} {b} bytes" for n, b in sorted(tails.items()))
            extra = ""
            if VECTORS in tails:
                extra = f" ({tails[VECTORS] / (4 * self.dim):g} rows of vectors)"
            raise StoreError(
                f"{self.path} holds data past what its manifest commits: {what}{extra}; not an interrupted "
                "commit (the manifest is older than the data: edited, or restored from a backup?). Nothing was "
                "cut. Check it with  regatt verify STORE; cut it with  regatt verify --repair STORE (keeps a copy)"
            )
        for name, size in expected.items():
            if name in tails:
                with open(self.path / name, "r+b") as fh:
                    fh.truncate(size)
                    fh.flush()
                    os.fsync(fh.fileno())
        for leftover in [*self.path.glob(MANIFEST + ".tmp*"), *self.path.glob(PENDING + ".tmp*")]:
            leftover.unlink()

    def _interrupted_commit(self, committed: dict[str, int], tails: dict[str, int]) -> bool:
        """True when ``.commit.json`` records a commit that started from exactly ``committed``
        and the bytes past it are no more than that commit was writing."""
        try:
            pending = json.loads((self.path / PENDING).read_text(encoding="utf-8"))
            start, end = pending["from"], pending["to"]
        except (OSError, ValueError, KeyError, TypeError):
            return False
        if any(name not in start or int(start[name]) != size for name, size in committed.items()):
            return False
        for name, extra in tails.items():
            if name not in start or name not in end or int(start[name]) + extra > int(end[name]):
                return False
        return True

    # ------------------------------------------------------------------ properties

    @property
    def card_hash(self) -> str:
        """Hash of the model card (:attr:`~regatt_sdk.card.ModelCard.hash`) of the store's model."""
        return str(self._manifest["card_hash"])

    @property
    def dim(self) -> int:
        """Descriptor length ``D``."""
        return int(self._manifest["dim"])

    @property
    def count(self) -> int:
        """Number of committed rows ``N``."""
        return int(self._manifest["count"])

    @property
    def failure_count(self) -> int:
        """Number of committed failure records."""
        return int(self._manifest.get("failure_count", 0))

    @property
    def manifest(self) -> dict:
        """A copy of the committed manifest."""
        return json.loads(json.dumps(self._manifest))

    @property
    def names(self) -> list[str]:
        """Image names of the ``N`` committed rows, in row order."""
        names = [str(n) for n in _read_jsonl(self.path / NAMES, self._manifest["names_bytes"])]
        if len(names) != self.count:
            raise StoreError(f"{self.path}: {len(names)} names for {self.count} rows (store damaged)")
        return names

    @property
    def vectors(self) -> np.ndarray:
        """Committed descriptors as a read-only float32 memory map ``(N, D)``."""
        if self.count == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.memmap(self.path / VECTORS, dtype="<f4", mode="r", shape=(self.count, self.dim))

    @property
    def failures(self) -> list[Failure]:
        """Committed failure records, in the order they happened."""
        out = []
        for rec in _read_jsonl(self.path / FAILURES, self._manifest["failures_bytes"]):
            if isinstance(rec, dict):
                out.append(Failure(str(rec.get("name")), str(rec.get("reason"))))
        return out

    def side_bytes(self, file: str) -> int:
        """Committed bytes of the side file ``file`` (0 when it was never written)."""
        return int(self._manifest.get(SIDE, {}).get(file, 0))

    def side_path(self, file: str) -> Path:
        """Path of the side file ``file`` (read only its first :meth:`side_bytes` bytes)."""
        return self.path / _side_name(file)

    @property
    def side_meta(self) -> dict:
        """A copy of the committed side-file metadata (``{}`` when there is none)."""
        return json.loads(json.dumps(self._manifest.get(SIDE_META, {})))

    def done_names(self) -> set[str]:
        """Names already handled: stored rows plus recorded failures (what a resume skips)."""
        return set(self.names) | {f.name for f in self.failures}

    # ------------------------------------------------------------------ appending

    def append(
        self,
        names: Sequence[str],
        vectors: np.ndarray,
        failures: Iterable[Failure] = (),
        *,
        side: Mapping[str, bytes | memoryview] | None = None,
        side_meta: Mapping[str, object] | None = None,
    ) -> None:
        """Commit rows ``vectors`` ``(n, D)`` float32 named ``names`` (and failure records).

        ``side``: bytes to append to side files (created on first use); ``side_meta``: keys to
        set in the manifest's ``side_meta``. All or nothing: after a crash the store holds
        either none or all of them (rows, failures, side bytes and metadata).
        """
        if not self.writable:
            raise StoreError(f"{self.path} is open read-only")
        vectors = np.asarray(vectors)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim or vectors.shape[0] != len(names):
            raise ValueError(f"expected vectors ({len(names)}, {self.dim}), got {vectors.shape}")
        if vectors.dtype != np.float32:
            raise ValueError(f"expected float32 vectors, got {vectors.dtype}")
        finite = np.isfinite(vectors).all(axis=1)
        if not finite.all():
            bad = np.flatnonzero(~finite)
            raise StoreError(
                f"{len(bad)} row(s) hold NaN or infinite values, first {names[int(bad[0])]!r}: not stored "
                f"in {self.path} (a descriptor must be finite)"
            )
        failures = list(failures)
        side = {_side_name(k): v for k, v in (side or {}).items()}
        if not names and not failures and not side and not side_meta:
            return
        try:
            self._commit(list(names), vectors, failures, side, dict(side_meta or {}))
        except OSError as exc:
            raise StoreError(f"cannot write to the feature store {self.path}: {exc}") from exc

    def _commit(
        self,
        names: list[str],
        vectors: np.ndarray,
        failures: list[Failure],
        side: dict[str, bytes | memoryview],
        side_meta: dict[str, object],
    ) -> None:
        m = dict(self._manifest)
        before = committed_sizes(m)
        writes: list[tuple[str, int, memoryview]] = []  # (file, committed offset, bytes)
        sizes = dict(m.get(SIDE, {}))
        for file, data in side.items():
            data = memoryview(data).cast("B")
            if not data.nbytes and file in sizes:
                continue
            committed = int(sizes.get(file, 0))
            writes.append((file, committed, data))
            sizes[file] = committed + data.nbytes
        if side:
            m[SIDE] = sizes
        if side_meta:
            m[SIDE_META] = {**m.get(SIDE_META, {}), **side_meta}
        start_row = int(m["count"])
        if len(names):
            blob = memoryview(np.ascontiguousarray(vectors, dtype="<f4")).cast("B")
            writes.append((VECTORS, m["count"] * self.dim * 4, blob))
            text = "".join(json.dumps(str(n)) + "\n" for n in names).encode("utf-8")
            writes.append((NAMES, m["names_bytes"], memoryview(text)))
            m["count"] += len(names)
            m["names_bytes"] += len(text)
        if failures:
            text = "".join(json.dumps({"name": f.name, "reason": f.reason}) + "\n" for f in failures).encode("utf-8")
            writes.append((FAILURES, m["failures_bytes"], memoryview(text)))
            m["failures_bytes"] += len(text)
            m["failure_count"] = m.get("failure_count", 0) + len(failures)
        m["commits"] += 1
        if "checksums_bytes" not in m:  # a store from before checksums: they start here
            m["checksums_bytes"] = 0
            m["checksums_from_row"] = start_row
            before[CHECKSUMS] = 0
        chunk = {
            "commit": m["commits"],
            "rows": [start_row, int(m["count"])],
            "files": {f: [off, data.nbytes, zlib.crc32(data)] for f, off, data in writes},
        }
        if m.get(SIDE_META):  # what a repair that cuts back to this chunk restores
            chunk["side_meta"] = m[SIDE_META]
        line = (json.dumps(chunk, sort_keys=True) + "\n").encode("utf-8")
        writes.append((CHECKSUMS, int(m["checksums_bytes"]), memoryview(line)))
        m["checksums_bytes"] += len(line)
        m["last_chunk"] = chunk
        after = committed_sizes(m)
        self._write_pending({"from": before, "to": after})
        for file, off, data in writes:
            (self.path / file).touch()
            self._append_bytes(file, off, data)
        self._write_manifest(m)
        self._manifest = m
        # committed: no record of a commit in flight is left (a manifest restored from before
        # this commit then finds none, and is refused instead of cutting this commit's data)
        (self.path / PENDING).unlink(missing_ok=True)

    def _write_pending(self, record: dict) -> None:
        """``.commit.json``: the sizes this commit starts from and reaches, before its data."""
        with atomic_write(self.path / PENDING, "w") as fh:
            json.dump(record, fh, sort_keys=True)

    def _append_bytes(self, name: str, committed: int, data: bytes | memoryview) -> None:
        with open(self.path / name, "r+b") as fh:
            fh.seek(committed)
            fh.truncate(committed)
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())

    def _write_manifest(self, manifest: dict) -> None:
        with atomic_write(self.path / MANIFEST, "w", fsync=True) as fh:
            json.dump(manifest, fh, indent=1, sort_keys=True)
            fh.write("\n")

    def __repr__(self) -> str:
        return f"FeatureStore({str(self.path)!r}, count={self.count}, dim={self.dim}, card_hash={self.card_hash!r})"


def _side_name(file: str) -> str:
    """``file`` if it is a plain file name a side file may have, else a ``ValueError``."""
    if (
        not file
        or file in _CORE_FILES
        or file.startswith(".")
        or file != os.path.basename(file)
        or not all(c.isalnum() or c in "._-" for c in file)
    ):
        raise ValueError(f"{file!r} cannot name a side file of a feature store")
    return file


def load_features(path: str | Path) -> tuple[list[str], np.ndarray]:
    """``(names, vectors)`` of a store: N names and a read-only float32 memmap ``(N, D)``."""
    store = FeatureStore.open(path)
    return store.names, store.vectors
