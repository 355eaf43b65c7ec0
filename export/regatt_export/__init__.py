"""regatt export side: the PyTorch encoder, importers, training, whitening and ONNX export."""

from __future__ import annotations

__version__ = "0.1.0"
