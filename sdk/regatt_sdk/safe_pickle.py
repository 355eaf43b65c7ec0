"""A restricted unpickler for ground-truth pickles downloaded from the internet.

``gnd_roxford5k.pkl`` / ``gnd_rparis6k.pkl`` (Radenovic et al.) hold plain dicts, lists, strings,
numbers and possibly numpy arrays. A normal ``pickle.load`` would run any callable the file
names; this loader allows only plain containers and numbers, and rebuilds numpy arrays and
scalars itself from their raw bytes with a numeric / string dtype (never ``object``), so no
function named by the file is ever called.
"""

from __future__ import annotations

import io
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np

from .errors import RegattError


class UnsafePickleError(RegattError):
    """The pickle names something other than plain containers, numbers, strings or arrays."""


# Simple dtype strings: bool, signed/unsigned int, float, complex, bytes, unicode (+ size).
_SIMPLE_DTYPE = re.compile(r"^[<>=|]?[?biufcSUa]\d*$")


class _DTypeSpec:
    """Stand-in for ``numpy.dtype(spec, align, copy)`` followed by ``__setstate__``."""

    def __init__(self, spec: Any, align: Any = False, copy: Any = True):
        if not isinstance(spec, str) or not _SIMPLE_DTYPE.match(spec):
            raise UnsafePickleError(f"refusing numpy dtype {spec!r} (only numeric/string dtypes)")
        self.spec = spec
        self.byteorder = "="

    def __setstate__(self, state: Any) -> None:
        # state = (version, byteorder, subarray, names, fields, elsize, alignment, flags)
        if not isinstance(state, tuple) or len(state) < 2:
            raise UnsafePickleError("malformed numpy dtype state")
        if any(part is not None for part in state[2:5]):
            raise UnsafePickleError("refusing structured / sub-array numpy dtype")
        if state[1] in ("<", ">", "=", "|"):
            self.byteorder = state[1]

    def to_numpy(self) -> np.dtype:
        dtype = np.dtype(self.spec)
        if self.byteorder in ("<", ">"):
            dtype = dtype.newbyteorder(self.byteorder)
        if dtype.hasobject:
            raise UnsafePickleError("refusing object numpy dtype")
        return dtype


class _ArraySpec:
    """Stand-in for ``numpy.core.multiarray._reconstruct(ndarray, shape, typecode)``."""

    def __init__(self, cls: Any, shape: Any = (0,), typecode: Any = b"b"):
        if cls is not _NDArrayTag:
            raise UnsafePickleError("refusing an ndarray subclass")
        self.state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def to_numpy(self) -> np.ndarray:
        # state = (version, shape, dtype, is_fortran, raw_data)
        if not isinstance(self.state, tuple) or len(self.state) != 5:
            raise UnsafePickleError("malformed numpy array state")
        _, shape, dtype_spec, is_fortran, data = self.state
        if not isinstance(dtype_spec, _DTypeSpec):
            raise UnsafePickleError("numpy array without a plain dtype")
        dtype = dtype_spec.to_numpy()
        raw = _raw_bytes(data)
        shape = tuple(int(s) for s in shape)
        flat = np.frombuffer(raw, dtype=dtype, count=int(np.prod(shape, dtype=np.int64)))
        return flat.reshape(shape, order="F" if is_fortran else "C").copy()


class _NDArrayTag:
    """Stand-in for the ``numpy.ndarray`` class passed to ``_reconstruct``."""


def _raw_bytes(data: Any) -> bytes:
    if isinstance(data, (bytes, bytearray)):
        return bytes(data)
    if isinstance(data, str):  # Python 2 pickles loaded with encoding="latin1"
        return data.encode("latin1")
    raise UnsafePickleError("numpy data that is not raw bytes (object arrays are refused)")


def _scalar(dtype_spec: Any, data: Any = b"") -> Any:
    if not isinstance(dtype_spec, _DTypeSpec):
        raise UnsafePickleError("numpy scalar without a plain dtype")
    return np.frombuffer(_raw_bytes(data), dtype=dtype_spec.to_numpy(), count=1)[0]


def _frombuffer(buf: Any, dtype_spec: Any, shape: Any, order: Any) -> np.ndarray:
    if not isinstance(dtype_spec, _DTypeSpec):
        raise UnsafePickleError("numpy buffer without a plain dtype")
    flat = np.frombuffer(_raw_bytes(buf), dtype=dtype_spec.to_numpy())
    return flat.reshape(tuple(int(s) for s in shape), order="F" if order == "F" else "C").copy()


def _codecs_encode(text: Any, encoding: Any = "utf-8") -> bytes:
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafePickleError("refusing _codecs.encode other than latin1 text")
    return text.encode("latin1")


def _bytes(*args: Any) -> bytes:
    # Python 3 writes b"" as ``__builtin__.bytes()`` in protocol 2; bytes(int) would allocate
    if not args:
        return b""
    if len(args) == 1 and isinstance(args[0], (bytes, list)):
        return bytes(args[0])
    raise UnsafePickleError("refusing bytes() with these arguments")


_ALLOWED: dict[tuple[str, str], Any] = {
    ("builtins", "bytes"): _bytes,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "complex"): complex,
    ("builtins", "bytearray"): bytearray,
    ("_codecs", "encode"): _codecs_encode,
    ("numpy", "ndarray"): _NDArrayTag,
    ("numpy", "dtype"): _DTypeSpec,
}
for _mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
    _ALLOWED[(_mod, "_reconstruct")] = _ArraySpec
    _ALLOWED[(_mod, "scalar")] = _scalar
for _mod in ("numpy.core.numeric", "numpy._core.numeric"):
    _ALLOWED[(_mod, "_frombuffer")] = _frombuffer


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if module == "__builtin__":  # Python 2 name (the default find_class maps it too)
            module = "builtins"
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"refusing to load '{module}.{name}': only plain containers, numbers, strings "
                "and numeric numpy arrays are allowed"
            ) from None


def _finish(obj: Any) -> Any:
    """Replace the array stand-ins by real numpy arrays, recursively."""
    if isinstance(obj, _ArraySpec):
        return obj.to_numpy()
    if isinstance(obj, (_DTypeSpec, _NDArrayTag)) or obj is _NDArrayTag:
        raise UnsafePickleError("stray numpy dtype/class object in the pickle")
    if isinstance(obj, dict):
        return {_finish(k): _finish(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finish(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_finish(v) for v in obj)
    return obj


def loads(data: bytes) -> Any:
    """Unpickle ``data`` allowing only plain builtins and numeric numpy arrays/scalars."""
    try:
        obj = _RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()
    except UnsafePickleError:
        raise
    except Exception as exc:  # truncated / corrupt stream, bad state tuples, ...
        raise UnsafePickleError(f"not a readable pickle: {exc}") from exc
    return _finish(obj)


def load(path: str | Path) -> Any:
    """Read and safely unpickle the file at ``path`` (see :func:`loads`)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise RegattError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    try:
        return loads(data)
    except UnsafePickleError as exc:
        raise UnsafePickleError(f"{path}: {exc}") from exc
