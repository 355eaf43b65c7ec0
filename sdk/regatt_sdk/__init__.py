"""regatt runtime: encode images with an exported regional-attention ONNX model.

Needs numpy, OpenCV and onnxruntime only; never imports torch.
"""

from __future__ import annotations

__version__ = "0.1.0"

import logging as _logging

_logging.getLogger(__name__).addHandler(_logging.NullHandler())  # quiet unless configured (logs.py)

__all__ = ["Collection", "Encoder", "EncoderOptions", "ModelCard", "load_features", "open_encoder", "__version__"]


def __getattr__(name: str):
    # Lazy so that ``import regatt_sdk`` (and ``regatt --version``) stays instant.
    if name == "Encoder":
        from .encoder import Encoder

        return Encoder
    if name == "Collection":
        from .collection import Collection

        return Collection
    if name in ("EncoderOptions", "open_encoder"):
        from . import compose

        return getattr(compose, name)
    if name == "ModelCard":
        from .card import ModelCard

        return ModelCard
    if name == "load_features":
        from .store import load_features

        return load_features
    raise AttributeError(name)
