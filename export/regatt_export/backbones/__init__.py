"""Backbone registry: name -> :class:`BackboneSpec` (preprocessing facts + a builder).

A built backbone maps a normalised ``(N, 3, H, W)`` float tensor in the spec's colour order to
its last feature map ``(N, C, H/stride, W/stride)`` and exposes its ImageNet classifier as
``.classifier`` (an ``nn.Linear`` over the pooled C channels) for attention training.
"""

from __future__ import annotations

from . import efficientnet, resnet, tiny  # noqa: F401  (register themselves)
from .base import BACKBONES, BackboneSpec, build_backbone, get_spec  # noqa: F401

__all__ = ["BackboneSpec", "build_backbone", "get_spec", "BACKBONES"]
