"""The gate every engine/precision passes before it encodes anything for a model.

Two checks, both on deterministic inputs (:func:`regatt_sdk.card.golden_image`):

1. the card's golden vector (computed by PyTorch at export, or by onnxruntime on the variant
   for INT8/fp16 files);
2. untraced sizes (:data:`SIZES`: portrait, landscape, square, 1:4, odd; none is the traced
   size) against onnxruntime CPU on the same file, which `regatt export` checked against
   PyTorch at untraced sizes to 1e-5.

Tolerances: an fp32 engine on an fp32 file must match to :data:`FP32_ATOL` (max |diff|);
bf16 compute needs cosine >= :data:`BF16_MIN_COSINE`; an engine running an INT8 file other
than onnxruntime needs cosine >= :data:`INT8_MIN_COSINE` to onnxruntime's INT8 result. A failed
gate raises nothing here: :func:`check` returns the verdict with its reason, and the caller
refuses the engine (never uses it silently).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..card import ModelCard, golden_image

FP32_ATOL = 1e-5
BF16_MIN_COSINE = 0.99
INT8_MIN_COSINE = 0.99
#: untraced (h, w) sizes, small enough that a gate costs well under a second on the default model
SIZES: tuple[tuple[int, int], ...] = ((112, 80), (80, 112), (96, 96), (48, 192), (77, 123))

RunFn = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class GateResult:
    """The verdict for one engine/precision on one model: ``passed``, ``reason`` (one line),
    the worst ``max_diff`` and ``min_cosine`` over the golden input and :data:`SIZES`."""

    engine: str
    precision: str
    passed: bool
    reason: str
    max_diff: float
    min_cosine: float
    checks: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _feed(card: ModelCard, h: int, w: int, seed: int) -> np.ndarray:
    dtype = np.uint8 if card.input_dtype == "uint8" else np.float32
    return golden_image(h, w, seed)[None].astype(dtype)


def _compare(got: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    got = np.asarray(got, np.float64).ravel()
    ref = np.asarray(ref, np.float64).ravel()
    if got.shape != ref.shape or not np.all(np.isfinite(got)):
        return float("inf"), -1.0
    denom = float(np.linalg.norm(got) * np.linalg.norm(ref)) or 1.0
    return float(np.abs(got - ref).max()), float(got @ ref / denom)


def check(
    run: RunFn,
    card: ModelCard,
    *,
    engine: str,
    precision: str = "fp32",
    reference: RunFn | None = None,
    sizes: tuple[tuple[int, int], ...] = SIZES,
    atol: float | None = None,
) -> GateResult:
    """Gate ``run`` (``(1, H, W, 3)`` -> ``(1, D)`` descriptors) for ``card``'s model.

    ``reference``: onnxruntime CPU fp32 on the same file (for the untraced sizes); ``None`` when
    ``run`` is that reference itself (then only the golden vector is checked). ``atol``
    replaces the max |diff| bound of an exact check (onnxruntime on a GPU).
    """
    user_atol = atol
    exact = precision == "fp32" and card.precision == "fp32"
    if precision == "bf16":
        min_cos, atol = BF16_MIN_COSINE, None
    elif exact:
        min_cos, atol = None, FP32_ATOL
    elif engine == "onnxruntime":  # an INT8/fp16 file on the engine that made its golden vector
        min_cos, atol = None, card.golden.atol if card.golden else FP32_ATOL
    else:
        min_cos, atol = INT8_MIN_COSINE, None
    if user_atol is not None and atol is not None:
        atol = user_atol
    checks: list[dict[str, Any]] = []
    failures: list[str] = []

    def judge(label: str, got: np.ndarray, ref: np.ndarray) -> None:
        diff, cos = _compare(got, ref)
        ok = (atol is None or diff <= atol) and (min_cos is None or cos >= min_cos)
        checks.append({"input": label, "max_diff": diff, "cosine": cos, "passed": ok})
        if not ok:
            need = f"max |diff| <= {atol:g}" if atol is not None else f"cosine >= {min_cos}"
            failures.append(f"{label}: max |diff| {diff:.2e}, cosine {cos:.6f} (needs {need})")

    g = card.golden
    if g is None:
        return GateResult(
            engine, precision, False, "the model card has no golden vector (re-export the model)", float("inf"), -1.0
        )
    try:
        judge(
            f"golden {g.height}x{g.width}",
            run(_feed(card, g.height, g.width, g.seed))[0],
            np.asarray(g.vector, np.float32),
        )
        if reference is not None:
            for k, (h, w) in enumerate(sizes):
                x = _feed(card, h, w, 900 + k)
                judge(f"untraced {h}x{w}", run(x)[0], reference(x)[0])
    except Exception as exc:  # an engine that crashes on an input fails its gate
        failures.append(f"error: {str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__}")
    max_diff = max((c["max_diff"] for c in checks), default=float("inf"))
    min_cosine = min((c["cosine"] for c in checks), default=-1.0)
    if failures:
        reason = f"{engine} {precision} refused: " + "; ".join(failures[:3])
        return GateResult(engine, precision, False, reason, max_diff, min_cosine, checks)
    rule = f"max |diff| {max_diff:.1e} <= {atol:g}" if atol is not None else f"cosine {min_cosine:.6f} >= {min_cos}"
    reason = f"{engine} {precision} passed on the golden vector and {len(checks) - 1} untraced sizes ({rule})"
    return GateResult(engine, precision, True, reason, max_diff, min_cosine, checks)


def model_key(path: str | Path, card: ModelCard) -> str:
    """Identifies a model file for caches: card hash, size and modification time."""
    st = Path(path).stat()
    return f"{card.hash}-{st.st_size}-{st.st_mtime_ns}"
