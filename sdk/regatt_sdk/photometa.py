"""Per-photo metadata beside a store's rows: what ``regatt sync`` compares and filters select on.

Side file ``photo.jsonl`` (append-only, committed with the rows; see :mod:`regatt_sdk.store`):
one JSON object per row, in row order, for a prefix of the rows (``side_meta["photo"] =
{"count": rows covered}``; rows added by ``regatt encode`` get theirs at the next sync)::

    {"folder": "trips/2024", "size": 123456, "mtime_ns": 1700000000000000000,
     "sha256": "...", "width": 4000, "height": 3000,
     "date": "2024-05-01T10:20:30", "camera": "Canon EOS R6"}

``folder`` is the folder part of the row's name; ``date`` (EXIF DateTimeOriginal, else
DateTime) and ``camera`` (EXIF Make + Model) are present only when the file has them;
``width``/``height`` come from the file's header (not rotated by EXIF orientation).
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import struct
from collections.abc import Sequence

from .store import FeatureStore, StoreError

PHOTO = "photo.jsonl"
META = "photo"
#: bytes read per block when hashing a file
_BLOCK = 1 << 20


def covered(store: FeatureStore) -> int:
    """Rows that have metadata (a prefix of the store's rows)."""
    return int((store.side_meta.get(META) or {}).get("count", 0))


def read_meta(store: FeatureStore) -> list[dict]:
    """The metadata of the first :func:`covered` rows, in row order."""
    n = covered(store)
    nbytes = store.side_bytes(PHOTO)
    if n == 0:
        return []
    with open(store.side_path(PHOTO), "rb") as fh:
        data = fh.read(nbytes)
    lines = data.splitlines()
    if len(data) < nbytes or len(lines) != n:
        raise StoreError(f"{store.side_path(PHOTO)}: {len(lines)} records for {n} rows (store damaged)")
    try:
        return [json.loads(line) for line in lines]
    except ValueError:
        raise StoreError(f"{store.side_path(PHOTO)} holds a line that is not JSON (store damaged)") from None


def pack(records: Sequence[dict]) -> bytes:
    """Side-file bytes of ``records`` (one JSON line each)."""
    return "".join(json.dumps(r, sort_keys=True, ensure_ascii=True) + "\n" for r in records).encode("ascii")


def side(store: FeatureStore, records: Sequence[dict]) -> tuple[dict[str, bytes], dict]:
    """``(side, side_meta)`` for :meth:`FeatureStore.append` adding ``records`` after the covered rows."""
    return {PHOTO: pack(records)}, {META: {"count": covered(store) + len(records)}}


def folder_of(name: str) -> str:
    """The folder part of a row name, with ``/`` separators (``""`` for a bare file name)."""
    return posixpath.dirname(name.replace(os.sep, "/"))


def file_digest(path: str) -> str:
    """SHA-256 of a file's bytes (hex)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(_BLOCK):
            h.update(block)
    return h.hexdigest()


def describe(name: str, path: str, st: os.stat_result | None = None) -> dict:
    """The metadata record of one file (reads it whole: hash, header, EXIF); ``OSError`` when it
    cannot be read."""
    st = st or os.stat(path)
    with open(path, "rb") as fh:
        data = fh.read()
    rec: dict = {
        "folder": folder_of(name),
        "size": int(st.st_size),
        "mtime_ns": int(st.st_mtime_ns),
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    try:
        from .imageio import image_header

        info = image_header(data)
        rec["width"], rec["height"] = int(info.width), int(info.height)
    except Exception:  # noqa: BLE001 - not a readable header: the encoder says why, if it matters
        pass
    rec.update(exif(data))
    return rec


# --------------------------------------------------------------------------- EXIF (JPEG APP1)

_DATE_ORIGINAL, _DATE, _MAKE, _MODEL, _EXIF_IFD = 0x9003, 0x0132, 0x010F, 0x0110, 0x8769


def exif(data: bytes) -> dict:
    """``{"date": ISO, "camera": text}`` from a JPEG's EXIF, each only when present."""
    tiff = _jpeg_exif(data)
    if tiff is None:
        return {}
    try:
        tags = _ifd_tags(tiff)
    except (struct.error, IndexError, ValueError):
        return {}
    out: dict = {}
    raw = tags.get(_DATE_ORIGINAL) or tags.get(_DATE)
    if isinstance(raw, str) and len(raw) >= 19 and raw[4] == ":" and raw[7] == ":":
        out["date"] = f"{raw[0:4]}-{raw[5:7]}-{raw[8:10]}T{raw[11:19]}"
    make, model = tags.get(_MAKE), tags.get(_MODEL)
    camera = " ".join(t for t in (make, model) if isinstance(t, str) and t)
    if model and make and isinstance(model, str) and model.startswith(str(make)):
        camera = model
    if camera:
        out["camera"] = camera
    return out


def _jpeg_exif(data: bytes) -> bytes | None:
    if data[:2] != b"\xff\xd8":
        return None
    pos = 2
    while pos + 4 <= len(data) and data[pos] == 0xFF:
        marker = data[pos + 1]
        if marker in (0xD9, 0xDA):  # end of image, start of scan: no more metadata
            return None
        length = struct.unpack(">H", data[pos + 2 : pos + 4])[0]
        if marker == 0xE1 and data[pos + 4 : pos + 10] == b"Exif\x00\x00":
            return data[pos + 10 : pos + 2 + length]
        pos += 2 + length
    return None


def _ifd_tags(tiff: bytes) -> dict[int, object]:
    order = {b"II": "<", b"MM": ">"}.get(tiff[:2])
    if order is None:
        raise ValueError("not TIFF")
    tags: dict[int, object] = {}

    def read_ifd(offset: int) -> None:
        (count,) = struct.unpack(order + "H", tiff[offset : offset + 2])
        for k in range(min(count, 512)):
            at = offset + 2 + 12 * k
            tag, kind, n = struct.unpack(order + "HHI", tiff[at : at + 8])
            if tag == _EXIF_IFD and kind == 4:
                (sub,) = struct.unpack(order + "I", tiff[at + 8 : at + 12])
                if sub < len(tiff) and sub != offset:
                    read_ifd(sub)
            elif kind == 2 and tag in (_DATE_ORIGINAL, _DATE, _MAKE, _MODEL):
                if n <= 4:
                    raw = tiff[at + 8 : at + 8 + n]
                else:
                    (off,) = struct.unpack(order + "I", tiff[at + 8 : at + 12])
                    raw = tiff[off : off + n]
                tags[tag] = raw.split(b"\x00", 1)[0].decode("latin-1").strip()

    (first,) = struct.unpack(order + "I", tiff[4:8])
    read_ifd(first)
    return tags
