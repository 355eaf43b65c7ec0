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
each is committed (``count`` rows, ``names_bytes``, ``failures_bytes``). An append writes and
``fsync``-s the data first, then writes the new manifest to a temporary file, ``fsync``-s it and
atomically renames it over ``manifest.json`` (then ``fsync``-s the directory). A process killed
at any moment leaves the previous manifest or the new one, and bytes past the committed lengths
are ignored by readers and cut off when a writer next opens the store.
"""

from __future__ import annotations

import json
import os
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
#: manifest keys of the side files: ``side`` = {file name: committed bytes}, ``side_meta`` =
#: {key: JSON value} that their owner (e.g. :mod:`regatt_sdk.local`) commits with them
SIDE = "side"
SIDE_META = "side_meta"
_CORE_FILES = frozenset({MANIFEST, VECTORS, NAMES, FAILURES, LOCK})


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
    for line in data.splitlines():
        yield json.loads(line)


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
            if leftovers:
                raise StoreError(f"{path} is a non-empty directory that is not a feature store; choose a new path")
        if dim <= 0:
            raise StoreError(f"descriptor dimension must be positive, got {dim}")
        path.mkdir(parents=True, exist_ok=True)
        lock_fd = cls._lock(path)
        try:
            for name in (VECTORS, NAMES, FAILURES):
                (path / name).touch()
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
        """Open an existing store; ``writable`` locks it and cuts off uncommitted leftovers."""
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
        """Check the data files hold the committed bytes; when ``repair``, cut off the rest."""
        m = self._manifest
        expected = {
            VECTORS: m["count"] * m["dim"] * 4,
            NAMES: m["names_bytes"],
            FAILURES: m["failures_bytes"],
        }
        for name, size in m.get(SIDE, {}).items():
            expected[name] = int(size)
        for name, size in expected.items():
            file = self.path / name
            try:
                actual = file.stat().st_size
            except FileNotFoundError:
                raise StoreError(f"{file} is missing (store damaged)") from None
            if actual < size:
                raise StoreError(f"{file} holds {actual} bytes, fewer than the {size} committed (store damaged)")
            if repair and actual > size:
                with open(file, "r+b") as fh:
                    fh.truncate(size)
                    fh.flush()
                    os.fsync(fh.fileno())
        if repair:
            for leftover in self.path.glob(MANIFEST + ".tmp*"):
                leftover.unlink()

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
        if side:
            sizes = dict(m.get(SIDE, {}))
            for file, data in side.items():
                data = memoryview(data).cast("B")
                if not data.nbytes and file in sizes:
                    continue
                committed = int(sizes.get(file, 0))
                (self.path / file).touch()
                self._append_bytes(file, committed, data)
                sizes[file] = committed + data.nbytes
            m[SIDE] = sizes
        if side_meta:
            m[SIDE_META] = {**m.get(SIDE_META, {}), **side_meta}
        if len(names):
            blob = memoryview(np.ascontiguousarray(vectors, dtype="<f4")).cast("B")
            self._append_bytes(VECTORS, m["count"] * self.dim * 4, blob)
            text = "".join(json.dumps(str(n)) + "\n" for n in names).encode("utf-8")
            self._append_bytes(NAMES, m["names_bytes"], text)
            m["count"] += len(names)
            m["names_bytes"] += len(text)
        if failures:
            text = "".join(json.dumps({"name": f.name, "reason": f.reason}) + "\n" for f in failures).encode("utf-8")
            self._append_bytes(FAILURES, m["failures_bytes"], text)
            m["failures_bytes"] += len(text)
            m["failure_count"] = m.get("failure_count", 0) + len(failures)
        m["commits"] += 1
        self._write_manifest(m)
        self._manifest = m

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
