"""regatt export side: the PyTorch encoder, importers, training, whitening and ONNX export."""

from __future__ import annotations

__version__ = "0.1.0"

import logging as _logging

_logging.getLogger(__name__).addHandler(_logging.NullHandler())  # quiet unless configured (regatt_sdk.logs)
