"""Exceptions the runtime raises for bad input; the CLI prints them as one line, no traceback."""

from __future__ import annotations


class RegattError(Exception):
    """Base class: a problem with the user's input that has a clear fix."""


class ImageError(RegattError):
    """An image could not be used. ``path`` names it, ``reason`` says why."""

    def __init__(self, path: object, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class ModelError(RegattError):
    """A model file is missing, not ONNX, or lacks a regatt model card."""


class MissingExtraError(RegattError):
    """An optional dependency is not installed; the message names the extra to install."""

    def __init__(self, module: str, extra: str, what: str):
        super().__init__(f"{what} needs the '{module}' package: install it with  pip install 'regatt[{extra}]'")
