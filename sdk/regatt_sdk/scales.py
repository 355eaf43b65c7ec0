"""Scale lists for multi-scale descriptors: parsing, checking and the per-scale size rule.

A model of longest side S with scales ``s_i`` describes each photo at longest side
``round(s_i * S)``. When a scale exceeds 1 the photo is prepared (``preprocess.prepare``) at
:func:`input_side` ``round(max(s) * S)`` from its original pixels, and the graph resizes that
input by the :func:`graph_factors` ``s_i / max(s)`` (so no scale is an upsampling of the
S-sized image); with every scale <= 1 the photo is prepared at S and the factors are the scales.
A factor ``f`` describes an input of longest side ``L`` at longest side ``round(f * L)``; both
sides follow the preprocessing rule ``h' = round(h * T / max(h, w))`` (NumPy rounding, half to
even), never below 1 pixel. The export side (``regatt_export.scales``) computes the same sizes
with tensor ops inside the graph.
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence, Union

import numpy as np

from .errors import RegattError

#: the smallest longest side a scale may give at the model's S (the encoder's own minimum S)
MIN_SCALED_SIDE = 16
AGGREGATIONS = ("sum", "regions")
ScaleSpec = Union[str, float, Sequence[Union[str, float]]]

_NAMED = {"sqrt2": math.sqrt(2.0), "1/sqrt2": 1.0 / math.sqrt(2.0)}


class ScaleError(RegattError, ValueError):
    """A scale list that cannot be used; the message names the input and the fix."""


def _one(token: object, source: str) -> float:
    text = str(token).strip()
    if text.lower() in _NAMED:
        return _NAMED[text.lower()]
    try:
        value = float(text)
    except ValueError:
        raise ScaleError(
            f"{source}: {text!r} is not a number; give positive numbers separated by commas, e.g. {source} 1,1.5"
        ) from None
    if not math.isfinite(value):
        raise ScaleError(f"{source}: {text!r} is not a finite number; give e.g. {source} 1,1.5")
    if value <= 0:
        raise ScaleError(f"{source}: scale {text} must be > 0 (1 is the model's own size S); e.g. {source} 1,1.5")
    return value


def parse_scales(spec: ScaleSpec, max_side: int, source: str = "--scales") -> tuple[float, ...]:
    """``"1,1.5"`` / ``[1, 1.5]`` -> ``(1.0, 1.5)``, checked against the longest side ``max_side``.

    Accepts numbers and the names ``sqrt2`` and ``1/sqrt2``. Refuses an empty list, duplicates,
    zero, negative, non-finite or non-numeric entries, and any scale whose longest side
    ``round(s * max_side)`` is below :data:`MIN_SCALED_SIDE` (naming the smallest usable one).
    """
    if isinstance(spec, str):
        tokens: Iterable[object] = [t for t in spec.split(",")]
        if not spec.strip() or all(not t.strip() for t in tokens):
            raise ScaleError(
                f"{source}: the scale list is empty; give at least one scale, e.g. {source} 1 or {source} 1,1.5"
            )
    elif isinstance(spec, (int, float)):
        tokens = [spec]
    else:
        tokens = list(spec)
        if not tokens:
            raise ScaleError(
                f"{source}: the scale list is empty; give at least one scale, e.g. {source} 1 or {source} 1,1.5"
            )
    values = []
    for token in tokens:
        if isinstance(spec, str) and not str(token).strip():
            raise ScaleError(
                f"{source}: empty entry in {spec!r}; give numbers separated by commas, e.g. {source} 1,1.5"
            )
        values.append(_one(token, source))
    for v in values:
        side = scaled_longest(max_side, v)
        if side < MIN_SCALED_SIDE:
            smallest = MIN_SCALED_SIDE / max_side
            raise ScaleError(
                f"{source}: scale {v:g} makes the longest side {side} px at S={max_side}, below the network's "
                f"minimum of {MIN_SCALED_SIDE} px; use scales >= {smallest:.3g} (or a larger --max-side)"
            )
    if len(set(values)) != len(values):
        raise ScaleError(f"{source}: scale list {format_scales(values)} repeats a scale; list each scale once")
    return tuple(values)


def check_aggregation(name: str, source: str = "--scale-aggregation") -> str:
    if name not in AGGREGATIONS:
        raise ScaleError(f"{source} {name!r}: use one of {', '.join(AGGREGATIONS)}")
    return name


def scaled_longest(longest: int, scale: float) -> int:
    """``round(scale * longest)`` half to even, at least 1."""
    return max(int(np.round(np.float64(scale) * longest)), 1)


def input_scale(scales: Iterable[float]) -> float:
    """``max(1, max(scales))``: the prepared input's longest side in units of S."""
    return max(1.0, max(float(s) for s in scales))


def input_side(max_side: int, scales: Iterable[float]) -> int:
    """The longest side a model of S ``max_side`` with ``scales`` is fed: ``round(max(s) * S)``
    when a scale exceeds 1, else S itself."""
    top = input_scale(scales)
    return int(max_side) if top == 1.0 else scaled_longest(int(max_side), top)


def graph_factors(scales: Iterable[float]) -> tuple[float, ...]:
    """The resize factor of the prepared input per scale: ``s / max(1, max(scales))``
    (the scales themselves when none exceeds 1), rounded to float32."""
    values = tuple(float(s) for s in scales)
    top = input_scale(values)
    factors = values if top == 1.0 else tuple(s / top for s in values)
    # float32-representable: the ONNX graph holds each factor as a float32 constant, so PyTorch
    # must size with the same value (1/sqrt2 / sqrt2 = 0.49999999999999994 in float64 is 0.5 in
    # float32, and round(123 * f) is 61 vs 62)
    return tuple(float(np.float32(f)) for f in factors)


def scaled_shape(height: int, width: int, scale: float) -> tuple[int, int]:
    """The size an ``(height, width)`` prepared image is described at for the factor ``scale``."""
    if scale == 1.0:
        return height, width
    longest = max(height, width)
    target = scaled_longest(longest, scale)
    new_h = int(np.round(np.float64(height) * target / longest))
    new_w = int(np.round(np.float64(width) * target / longest))
    return max(new_h, 1), max(new_w, 1)


def format_scales(scales: Iterable[float]) -> str:
    """``(1.0, 1.5)`` -> ``"1,1.5"`` (short, parseable back)."""
    return ",".join(f"{s:.6g}" for s in scales)
