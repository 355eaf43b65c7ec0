"""The backbone registry and the facts that travel with each backbone."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch.nn as nn


@dataclass(frozen=True)
class BackboneSpec:
    """Preprocessing and shape facts of a backbone, and how to build it.

    ``mean``/``std`` are in 0..255 units and in ``color`` order ("BGR" or "RGB").
    ``build(weights)`` returns the feature extractor; ``weights`` is ``None`` (the default
    pretrained weights), ``"random"``, or a path to a state-dict file.
    """

    name: str
    color: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    stride: int
    channels: int
    build: Callable[[str | None], nn.Module]
    description: str
    offline: bool  # default weights available without network
    #: quantize the stem convolution in ``regatt export --int8`` unless told otherwise. True where
    #: it is robust and pays: a ResNet stem feeds a MaxPool that onnxruntime runs on uint8 NCHW
    #: (slow) after a float stem, on NHWC (fast) after a quantized one. EfficientNet-Lite0's stem
    #: is sensitive (worst parity cosine 0.85 -> 0.72 when quantized), so it stays fp32 there.
    int8_first_conv: bool = False
    #: substrings of ONNX node names kept fp32 by ``regatt export --int8`` unless told otherwise:
    #: the most quantization-sensitive layers, found by measuring the parity cosine
    int8_fp32_nodes: tuple[str, ...] = ()


BACKBONES: dict[str, BackboneSpec] = {}


def register(spec: BackboneSpec) -> BackboneSpec:
    BACKBONES[spec.name] = spec
    return spec


def get_spec(name: str) -> BackboneSpec:
    try:
        return BACKBONES[name]
    except KeyError:
        raise ValueError(f"unknown backbone {name!r}; choose one of {sorted(BACKBONES)}") from None


def build_backbone(name: str, weights: str | None = None) -> nn.Module:
    """Build backbone ``name`` in eval mode with ``weights`` (see :class:`BackboneSpec`)."""
    module = get_spec(name).build(weights)
    return module.eval()
