"""Optional dependencies: one way to import them, one error naming the extra to install."""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import MissingExtraError

#: import name -> (pip package, what needs it) for the messages
PACKAGES: dict[str, tuple[str, str]] = {
    "onnxruntime": ("onnxruntime", "running a model"),
    "openvino": ("openvino", "the OpenVINO engine"),
    "faiss": ("faiss-cpu", "the FAISS search backend"),
    "ray": ("ray[data]", "distributed encoding (--ray)"),
    "matplotlib": ("matplotlib", "plots"),
    "torch": ("torch", "building or exporting models"),
}


def require(module: str, *, extra: str, what: str | None = None, package: str | None = None) -> ModuleType:
    """``import module`` or raise :class:`MissingExtraError` naming ``pip install 'regatt[extra]'``.

    ``package``/``what`` override the pip name and the purpose shown in the message (defaults
    from :data:`PACKAGES`). A missing *other* module raised from inside an installed package
    propagates as it is.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        if isinstance(exc, ModuleNotFoundError) and exc.name is not None and exc.name.split(".")[0] != top:
            raise
        known_package, known_what = PACKAGES.get(top, (top, f"this feature ({top})"))
        raise MissingExtraError(package or known_package, extra, what or known_what) from None
