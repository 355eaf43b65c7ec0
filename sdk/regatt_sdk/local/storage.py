"""Local features as side files of a feature store, aligned with its rows.

Side files (append-only, committed by the store's manifest; see :mod:`regatt_sdk.store`)::

    local.rows    per row: end (int64, cumulative keypoint count), scale (float32), width,
                  height (uint32): 20 bytes
    local.kp      per keypoint: x, y, size, angle as float16 (8 bytes)
    local.desc    per keypoint: P int8 (the codebook's PCA dims)
    local.words   per keypoint: the visual word (uint16)

The store's ``side_meta["local"]`` holds ``count`` (rows with local features: always a prefix of
the store's rows), ``keypoints`` (total), ``config`` (:class:`~.extract.LocalConfig`), ``dims``
and ``codebook`` (the codebook hash). Readers memory-map the files: a million photos are never
loaded into RAM.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import RegattError
from ..store import FeatureStore, StoreError
from .codec import Codebook, load_codebook
from .extract import LocalConfig, LocalFeatures

ROWS, KP, DESC, WORDS = "local.rows", "local.kp", "local.desc", "local.words"
ROW_DTYPE = np.dtype([("end", "<i8"), ("scale", "<f4"), ("width", "<u4"), ("height", "<u4")])
META = "local"
FIX = "regatt encode MODEL SOURCES... -o STORE --resume --local"


class LocalFeaturesMissing(RegattError):
    """The store has no local features (for some or all rows): names the fix."""


def pack(features: Sequence[LocalFeatures], start_keypoints: int) -> dict[str, bytes]:
    """Side-file bytes for ``features`` (rows in order), the first keypoint numbered ``start_keypoints``."""
    rows = np.zeros(len(features), ROW_DTYPE)
    end = start_keypoints
    for i, f in enumerate(features):
        end += len(f)
        rows[i] = (end, f.scale, f.width, f.height)
    kp = np.concatenate([f.kp for f in features]) if features else np.zeros((0, 4), np.float32)
    desc = [f.desc for f in features]
    words = [f.words for f in features]
    return {
        ROWS: rows.tobytes(),
        KP: kp.astype("<f2").tobytes(),
        DESC: np.concatenate(desc).astype(np.int8).tobytes() if desc else b"",
        WORDS: np.concatenate(words).astype("<u2").tobytes() if words else b"",
    }


def meta_after(store: FeatureStore, features: Sequence[LocalFeatures], config: LocalConfig, book: Codebook) -> dict:
    """The ``side_meta["local"]`` after appending ``features``."""
    old = store.side_meta.get(META) or {}
    return {
        META: {
            "count": int(old.get("count", 0)) + len(features),
            "keypoints": int(old.get("keypoints", 0)) + sum(len(f) for f in features),
            "config": config.to_json(),
            "dims": book.dims,
            "codebook": book.hash,
        }
    }


def start_local(store: FeatureStore, config: LocalConfig | None = None) -> None:
    """Mark an empty store as keeping local features (``config`` or the defaults) from its first row."""
    if store.count:
        raise StoreError(f"{store.path} already holds rows: add local features with `{FIX}`")
    book = load_codebook()
    cfg = config or LocalConfig()
    check_compatible(store, cfg, book)
    empty = {name: b"" for name in (ROWS, KP, DESC, WORDS)}
    store.append([], np.zeros((0, store.dim), np.float32), side=empty, side_meta=meta_after(store, [], cfg, book))


def check_compatible(store: FeatureStore, config: LocalConfig, book: Codebook) -> None:
    """Refuse adding local features made another way than those already in ``store``."""
    old = store.side_meta.get(META)
    if not old:
        return
    if old.get("codebook") != book.hash or LocalConfig.from_json(old["config"]) != config:
        raise StoreError(
            f"{store.path} holds local features made with another codebook or settings "
            f"({old.get('config')}, codebook {old.get('codebook')}); use a new store"
        )


@dataclass
class LocalIndex:
    """Read-only memory maps of a store's local features.

    ``rows`` (N,) structured, ``kp`` (K, 4) float16, ``desc`` (K, P) int8, ``words`` (K,) uint16.
    """

    store_path: str
    count: int
    config: LocalConfig
    codebook: Codebook
    rows: np.ndarray
    kp: np.ndarray
    desc: np.ndarray
    words: np.ndarray

    @classmethod
    def open(cls, store: FeatureStore, *, rows_needed: int | None = None) -> LocalIndex:
        """The local features of ``store``; :class:`LocalFeaturesMissing` when fewer than
        ``rows_needed`` (default: all) rows have them."""
        meta = store.side_meta.get(META)
        need = store.count if rows_needed is None else rows_needed
        have = int(meta.get("count", 0)) if meta else 0
        if have < need:
            what = "no local features" if have == 0 else f"local features for {have} of {store.count} rows"
            raise LocalFeaturesMissing(f"{store.path} has {what}; add them with `{FIX}`")
        book = load_codebook()
        if meta and meta.get("codebook") != book.hash:
            raise StoreError(
                f"{store.path}: its local features were made with codebook {meta.get('codebook')}, "
                f"not this regatt's ({book.hash}); re-encode with --local into a new store"
            )
        total = int(meta["keypoints"]) if meta else 0
        dims = int(meta["dims"]) if meta else book.dims

        def mm(name: str, dtype: str | np.dtype, shape: tuple[int, ...]) -> np.ndarray:
            nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
            if store.side_bytes(name) != nbytes:
                raise StoreError(
                    f"{store.side_path(name)} holds {store.side_bytes(name)} committed bytes, not the "
                    f"{nbytes} its manifest implies (local features damaged; re-encode with --local)"
                )
            if nbytes == 0:
                return np.zeros(shape, dtype)
            return np.memmap(store.side_path(name), dtype=dtype, mode="r", shape=shape)

        rows = mm(ROWS, ROW_DTYPE, (have,))
        index = cls(
            str(store.path), have, LocalConfig.from_json(meta["config"]) if meta else LocalConfig(), book,
            rows, mm(KP, "<f2", (total, 4)), mm(DESC, np.int8, (total, dims)), mm(WORDS, "<u2", (total,)),
        )  # fmt: skip
        if have and int(rows["end"][-1]) != total:
            raise StoreError(f"{store.side_path(ROWS)}: row offsets do not match {total} keypoints (damaged)")
        return index

    def span(self, row: int) -> tuple[int, int]:
        """Keypoint range ``[start, end)`` of ``row``."""
        end = int(self.rows["end"][row])
        return (int(self.rows["end"][row - 1]) if row else 0), end

    def features(self, row: int) -> LocalFeatures:
        """The local features of one row (copied out of the maps)."""
        if not 0 <= row < self.count:
            raise IndexError(f"row {row} out of range 0..{self.count - 1}")
        a, b = self.span(row)
        r = self.rows[row]
        return LocalFeatures(
            np.asarray(self.kp[a:b], np.float32), np.asarray(self.desc[a:b]), np.asarray(self.words[a:b]),
            float(r["scale"]), int(r["width"]), int(r["height"]),
        )  # fmt: skip
