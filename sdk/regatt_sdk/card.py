"""The model card: everything a runtime needs to use an exported encoder, stored as JSON in the
ONNX file's ``metadata_props`` under the key :data:`CARD_KEY`.

Every stage reads and writes this one record: the exporter fills it, the SDK's preprocessing,
the feature store (which keeps the card's hash) and the benchmarks read it back.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import IO, Any

CARD_KEY = "regatt.card"
CARD_FORMAT = 1
#: ``provenance`` entries that record measurements of the written file (parity cosines, timings)
#: rather than what the model is; left out of :attr:`ModelCard.hash` with ``versions``
MEASURED_PROVENANCE = ("parity",)
#: ``provenance`` entries that may hold a path on the exporting machine (the release directory,
#: a weights file; and ``calibration.folder``): only their last part enters the hash
PATH_PROVENANCE = ("official", "weights")


def _last_part(path: str) -> str:
    """The last component of a path written on any system (``/a/b/`` and ``C:\\a\\b`` -> ``b``)."""
    parts = [p for p in path.replace("\\", "/").split("/") if p]
    return parts[-1] if parts else path


@dataclass(frozen=True)
class Golden:
    """A fixed input and the descriptor the exported model must produce for it.

    The input is :func:`regatt_sdk.card.golden_image` ``(height, width, seed)``; ``vector`` is the
    full float32 descriptor written as a list of floats.
    """

    height: int
    width: int
    seed: int
    vector: list[float]
    atol: float = 1e-5


@dataclass(frozen=True)
class ModelCard:
    """Facts about one exported encoder.

    ``mean``/``std`` are in 0..255 pixel units and in the model's ``color`` order; the ONNX graph
    applies them itself (the SDK only decodes, resizes and crops). ``stride`` is the backbone's
    total stride (the 1/32 of the region pooling). ``dim`` is the descriptor length.
    """

    backbone: str
    dim: int
    channels: int
    stride: int
    color: str  # "BGR" or "RGB": channel order the backbone expects
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    max_side: int = 1024
    levels: int = 5
    pooling: str = "roi"  # regional max: roi (MaxRoiPool, CPU-fast) or table (any provider)
    attention: str = "context"  # context | regional | none
    whitening: str = "none"  # where the whitening came from ("official", a file, "none")
    preset: str = "custom"
    precision: str = "fp32"
    input_name: str = "image"
    output_name: str = "descriptor"
    input_dtype: str = "uint8"  # uint8 or float32; layout is always NHWC, BGR, 0..255
    format: int = CARD_FORMAT
    versions: dict[str, str] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    golden: Golden | None = None
    outputs: tuple[str, ...] = ("descriptor",)
    #: multiples of the prepared input's size the graph describes (1.0: the input as given) and
    #: how their descriptors combine: sum (per-scale descriptors summed, then L2) or regions (the
    #: regional vectors of all scales in one attention-weighted mean)
    scales: tuple[float, ...] = (1.0,)
    scale_aggregation: str = "sum"
    #: the longest side images are prepared at when it is not ``max_side`` (S): a graph with a
    #: scale > 1 is fed ``round(max(scales) * S)`` and resizes by ``s / max(scales)`` per scale.
    #: None (every scale <= 1, and cards older than the field): prepared at S, resized by ``s``.
    #: Left out of the JSON when None, so those cards (and their hashes) are unchanged.
    input_side: int | None = None

    def to_json(self) -> str:
        data = asdict(self)
        if data["input_side"] is None:
            del data["input_side"]
        return json.dumps(data, sort_keys=True)

    @property
    def prepare_side(self) -> int:
        """The longest side the SDK prepares images at for this model: ``input_side`` or S."""
        return int(self.input_side or self.max_side)

    def prepare_side_for(self, max_side: int | None = None) -> int:
        """:attr:`prepare_side` when S is ``max_side`` instead of the card's (None: the card's)."""
        if max_side is None:
            return self.prepare_side
        if self.input_side is None:
            return int(max_side)
        from .scales import input_side

        return input_side(int(max_side), self.scales)

    @classmethod
    def from_json(cls, text: str) -> ModelCard:
        raw = json.loads(text)
        if not isinstance(raw, dict):
            raise ValueError("model card is not a JSON object")
        known = {f.name for f in fields(cls)}
        data = {k: v for k, v in raw.items() if k in known}
        missing = [
            f.name for f in fields(cls) if f.name not in data and f.default is MISSING and f.default_factory is MISSING
        ]
        if missing:
            raise ValueError(f"model card lacks {missing}")
        if data.get("golden") is not None:
            data["golden"] = Golden(**data["golden"])
        for key in ("mean", "std", "outputs", "scales"):
            if key in data:
                data[key] = tuple(data[key])
        return cls(**data)

    def identity_json(self) -> str:
        """The card's JSON less what describes the tools and the machine rather than the model:
        ``versions`` (torch, onnx, Python, regatt), the :data:`MEASURED_PROVENANCE` entries of
        ``provenance`` (numbers measured by whichever onnxruntime ran the checks), and the
        directories of the paths it records (:data:`PATH_PROVENANCE`, ``calibration.folder``)."""
        data = json.loads(self.to_json())
        data.pop("versions", None)
        prov = data.get("provenance")
        if isinstance(prov, dict):
            prov = {k: v for k, v in prov.items() if k not in MEASURED_PROVENANCE}
            for key in PATH_PROVENANCE:  # where the files were, not what they were: the last part
                if isinstance(prov.get(key), str):
                    prov[key] = _last_part(prov[key])
            calibration = prov.get("calibration")
            if isinstance(calibration, dict) and isinstance(calibration.get("folder"), str):
                prov["calibration"] = {**calibration, "folder": _last_part(calibration["folder"])}
            data["provenance"] = prov
        return json.dumps(data, sort_keys=True)

    @property
    def hash(self) -> str:
        """Short content hash identifying the model: graph and weights (backbone, attention,
        whitening, golden vector...), preprocessing and outputs, not the tool versions that wrote
        it (:meth:`identity_json`), so re-exporting the same model elsewhere keeps its stores."""
        return hashlib.sha256(self.identity_json().encode()).hexdigest()[:16]

    @property
    def legacy_hash(self) -> str:
        """The hash cards had before :attr:`hash` left the tool versions out (the whole JSON):
        what stores, ANN indexes and tables made before that record."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]

    def matches(self, card_hash: str | None) -> bool:
        """Whether a store (index, table) recording ``card_hash`` was made by this model: its
        :attr:`hash`, or its :attr:`legacy_hash` for one made before the hash changed."""
        return card_hash is not None and str(card_hash) in (self.hash, self.legacy_hash)


def golden_image(height: int, width: int, seed: int):
    """The deterministic uint8 BGR test image ``(height, width, 3)`` behind :class:`Golden`.

    Smooth colour gradients plus seeded noise, so every region of the grid sees texture.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    base = np.stack(
        [
            127 + 100 * np.sin(xx / max(width, 1) * 6.0 + seed),
            127 + 100 * np.cos(yy / max(height, 1) * 5.0),
            127 + 100 * np.sin((xx + yy) / max(height + width, 1) * 9.0),
        ],
        axis=-1,
    )
    noise = rng.normal(0, 30, size=base.shape)
    return np.clip(base + noise, 0, 255).astype(np.uint8)


# -- reading the card from an ONNX file (no onnxruntime session, no onnx package) ---------------
#: ``ModelProto.metadata_props`` and the ``StringStringEntryProto`` fields (onnx.proto)
_METADATA_FIELD = 14
_KEY_FIELD, _VALUE_FIELD = 1, 2


def _read_varint(f: IO[bytes]) -> int | None:
    shift = value = 0
    while True:
        b = f.read(1)
        if not b:
            if shift == 0:
                return None
            raise ValueError("truncated protobuf varint")
        value |= (b[0] & 0x7F) << shift
        if not b[0] & 0x80:
            return value
        shift += 7
        if shift > 63:
            raise ValueError("protobuf varint too long")


def _fields(data: bytes):
    """``(field number, wire type, value)`` of a protobuf message held in memory."""
    import io

    f = io.BytesIO(data)
    while (tag := _read_varint(f)) is not None:
        yield from _one_field(f, tag, read=True)


def _one_field(f: IO[bytes], tag: int, *, read: bool):
    number, wire = tag >> 3, tag & 7
    if wire == 0:
        yield number, wire, _read_varint(f)
    elif wire == 1:
        f.seek(8, os.SEEK_CUR)
    elif wire == 2:
        size = _read_varint(f)
        if size is None:
            raise ValueError("truncated protobuf length")
        if read:
            payload = f.read(size)
            if len(payload) != size:
                raise ValueError("truncated protobuf field")
            yield number, wire, payload
        else:
            f.seek(size, os.SEEK_CUR)
    elif wire == 5:
        f.seek(4, os.SEEK_CUR)
    else:
        raise ValueError(f"not a protobuf message (wire type {wire})")


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The ``metadata_props`` of the ONNX file at ``path`` as ``{key: value}``.

    Scans the file's top-level protobuf fields and seeks over the others (the graph and its
    weights are never read into memory). Raises ``ValueError`` if it is not an ONNX protobuf.
    """
    size = Path(path).stat().st_size
    meta: dict[str, str] = {}
    with open(path, "rb") as f:
        while (tag := _read_varint(f)) is not None:
            number = tag >> 3
            if number == _METADATA_FIELD and tag & 7 == 2:
                for _, _, entry in _one_field(f, tag, read=True):
                    parts = {n: v for n, w, v in _fields(entry) if w == 2}
                    meta[parts.get(_KEY_FIELD, b"").decode()] = parts.get(_VALUE_FIELD, b"").decode()
            else:
                for _ in _one_field(f, tag, read=False):
                    pass
            if f.tell() > size:
                raise ValueError("truncated protobuf message")
    return meta


def read_card(path: str | os.PathLike) -> ModelCard:
    """The model card of the ONNX file at ``path`` (no inference session is created).

    Raises :class:`~regatt_sdk.errors.ModelError` naming the file when it is missing, not ONNX,
    has no card (not made by ``regatt export``) or a corrupt one.
    """
    from .errors import ModelError

    p = Path(path)
    if not p.exists():
        raise ModelError(f"{p}: model file not found (make one with  regatt export -o {p})")
    if not p.is_file():
        raise ModelError(f"{p}: not a file")
    try:
        meta = read_metadata(p)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelError(f"{p}: not a loadable ONNX model ({exc})") from None
    if CARD_KEY not in meta:
        raise ModelError(f"{p}: ONNX file has no regatt model card (was it made by  regatt export ?)")
    try:
        return ModelCard.from_json(meta[CARD_KEY])
    except (ValueError, TypeError) as exc:
        raise ModelError(f"{p}: corrupt model card ({exc})") from None
