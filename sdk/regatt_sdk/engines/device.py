"""One parser for ``--device`` strings, shared by the encoder, the bench, Ray encoding and the
export-side checks.

Accepted: ``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``tensorrt``, ``tensorrt:N`` (N: the GPU
index, as onnxruntime's ``device_id``), ``openvino`` and ``openvino:TARGET`` (TARGET an OpenVINO
device name such as ``CPU``, ``GPU``, ``GPU.1``, ``NPU``, ``AUTO``; kept as written).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ModelError

#: device kinds -> the engine (module under ``regatt_sdk.engines``) that runs them
KINDS: dict[str, str] = {
    "auto": "onnxruntime",
    "cpu": "onnxruntime",
    "cuda": "onnxruntime",
    "tensorrt": "onnxruntime",
    "openvino": "openvino",
}
#: kinds that take a GPU index after the colon
INDEXED = ("cuda", "tensorrt")
HELP = "auto, cpu, cuda[:N], tensorrt[:N] or openvino[:TARGET]"


@dataclass(frozen=True)
class Device:
    """A parsed device: ``kind`` (one of :data:`KINDS`), ``index`` (GPU index for cuda/tensorrt,
    ``None`` when not given) and ``target`` (OpenVINO device name, ``None`` when not given)."""

    kind: str
    index: int | None = None
    target: str | None = None

    @property
    def engine(self) -> str:
        """Name of the engine that runs this device (``onnxruntime`` or ``openvino``)."""
        return KINDS[self.kind]

    @property
    def gpu(self) -> bool:
        """True for kinds that need a GPU (cuda, tensorrt)."""
        return self.kind in INDEXED

    def __str__(self) -> str:
        if self.index is not None:
            return f"{self.kind}:{self.index}"
        if self.target is not None:
            return f"{self.kind}:{self.target}"
        return self.kind


def parse_device(device: str | Device) -> Device:
    """``"cuda:1"`` -> ``Device("cuda", 1)``; an unknown name raises :class:`ModelError` with the
    accepted forms. A :class:`Device` is returned as it is."""
    if isinstance(device, Device):
        return device
    text = str(device).strip()
    kind, sep, rest = text.partition(":")
    kind = kind.lower()
    if kind not in KINDS:
        raise ModelError(f"unknown device {text!r}: use {HELP}")
    if not sep:
        return Device(kind)
    if kind in INDEXED:
        if not rest.isdigit():
            raise ModelError(
                f"device {text!r}: the GPU index after '{kind}:' must be a number, e.g. {kind}:0 (devices: {HELP})"
            )
        return Device(kind, index=int(rest))
    if kind == "openvino" and rest:
        return Device(kind, target=rest)
    raise ModelError(f"device {text!r}: '{kind}' takes no suffix; use {HELP}")
