"""The retrieval-level gate: a variant (engine x precision x file) must rank a small photo set as
fp32 onnxruntime does, not only give close descriptors.

The set: the 8 photos shipped in ``gate_photos/`` (256x192, made from scikit-image's public-domain
and CC0 samples by ``scripts/make_gate_photos.py``) and 4 known transformations of each
(:data:`TRANSFORMS`: an off-centre half crop, a 20 % down-and-up scale, JPEG quality 10, a
colour cast with a brighter gamma), made here
with OpenCV: 40 images of one shape (one compiled graph on OpenVINO). Every image is a query
against the 39 others; its photo's 4 other versions are its positives.

Two checks, each against the reference's descriptors of the same images (fp32 onnxruntime CPU on
the fp32 file; for an INT8/fp16 file its fp32 source when one lies beside it, see
:func:`reference_model`):

1. top-10 agreement: the mean over queries of ``|top10(variant) & top10(reference)| / 10`` must be
   at least :data:`MIN_TOP10` (the worst query is reported too);
2. mAP of the copies: the variant's mAP (percent, every image a query) may be at most
   :data:`MAX_MAP_DROP` points below the reference's.

A refused variant's reason names the check that failed and by how much. Bounds measured on this
project's models: see ``benchmarks/results/precision_gate.md``.
"""

from __future__ import annotations

import functools
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import cv2
import numpy as np

from ..card import ModelCard, read_card

PHOTO_DIR = Path(__file__).resolve().parent / "gate_photos"
#: the transformations every photo is also described under
TRANSFORMS: tuple[str, ...] = ("crop", "scale", "jpeg", "colour")
TOP_K = 10
#: the least mean top-10 agreement with the reference
MIN_TOP10 = 0.85
#: the most mAP (percentage points) a variant may lose to the reference on the copies
MAX_MAP_DROP = 1.0
#: provenance entries a precision variant adds to its fp32 source's card (not part of the family)
VARIANT_PROVENANCE = ("calibration", "quantization", "fp16", "parity")

RunFn = Callable[[np.ndarray], np.ndarray]


def transform(image: np.ndarray, kind: str) -> np.ndarray:
    """``image`` (BGR uint8) under one of :data:`TRANSFORMS`, at the same shape."""
    h, w = image.shape[:2]
    if kind == "crop":  # half of each side, off centre (a third of the margin above and left)
        ch, cw = h // 2, w // 2
        y, x = (h - ch) // 3, (w - cw) // 3
        return cv2.resize(image[y : y + ch, x : x + cw], (w, h), interpolation=cv2.INTER_LINEAR)
    if kind == "scale":  # down to 20 % and up again: the detail of a thumbnail
        small = cv2.resize(image, (int(round(0.2 * w)), int(round(0.2 * h))), interpolation=cv2.INTER_AREA)
        return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    if kind == "jpeg":
        ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 10])
        if not ok:
            raise RuntimeError("OpenCV could not encode a JPEG")
        return cv2.imdecode(data, cv2.IMREAD_COLOR)
    if kind == "colour":  # a warm cast and a much brighter gamma
        x = image.astype(np.float32) / 255.0
        x = np.power(x, 0.5) * np.array([0.8, 0.95, 1.2], np.float32)  # B, G, R gains
        return np.clip(np.round(x * 255.0), 0, 255).astype(np.uint8)
    raise ValueError(f"unknown transformation {kind!r}: use one of {TRANSFORMS}")


@functools.lru_cache(maxsize=1)
def photo_set() -> tuple[tuple[np.ndarray, ...], tuple[int, ...], tuple[str, ...]]:
    """``(images, groups, labels)``: each shipped photo then its transformed copies; ``groups[i]``
    is the photo an image comes from. Raises ``FileNotFoundError`` when the photos are missing."""
    files = sorted(PHOTO_DIR.glob("*.jpg"))
    if not files:
        raise FileNotFoundError(f"{PHOTO_DIR}: the retrieval gate's photos are missing (a broken install)")
    images: list[np.ndarray] = []
    groups: list[int] = []
    labels: list[str] = []
    for g, path in enumerate(files):
        base = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if base is None:
            raise FileNotFoundError(f"{path}: cannot be decoded")
        for kind in ("original", *TRANSFORMS):
            images.append(base if kind == "original" else transform(base, kind))
            groups.append(g)
            labels.append(f"{path.stem}/{kind}")
    for im in images:
        im.setflags(write=False)
    return tuple(images), tuple(groups), tuple(labels)


def describe(run: RunFn, card: ModelCard, images: Sequence[np.ndarray] | None = None) -> np.ndarray:
    """``(N, D)`` descriptors of ``images`` (default: :func:`photo_set`), one run per image."""
    images = photo_set()[0] if images is None else images
    dtype = np.uint8 if card.input_dtype == "uint8" else np.float32
    return np.stack([np.asarray(run(np.ascontiguousarray(im[None], dtype=dtype))[0], np.float32) for im in images])


def _similarity(vectors: np.ndarray) -> np.ndarray:
    v = np.asarray(vectors, np.float64)
    v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    s = v @ v.T
    np.fill_diagonal(s, -np.inf)  # a query never retrieves itself
    return s


def rankings(vectors: np.ndarray) -> np.ndarray:
    """``(N, N-1)``: for each query, the other images best first (ties by index)."""
    s = _similarity(vectors)
    order = np.argsort(-s, axis=1, kind="stable")
    return order[:, :-1]  # the query itself (-inf) comes last


def top_agreement(variant: np.ndarray, reference: np.ndarray, k: int = TOP_K) -> np.ndarray:
    """Per query: the share of the reference's top ``k`` that the variant's top ``k`` holds."""
    rv, rr = rankings(variant)[:, :k], rankings(reference)[:, :k]
    return np.array([len(set(a.tolist()) & set(b.tolist())) / k for a, b in zip(rv, rr)])


def copies_map(vectors: np.ndarray, groups: Sequence[int]) -> float:
    """mAP (percent): every image a query, the other images of its photo the positives."""
    groups_arr = np.asarray(groups)
    aps = []
    for q, ranked in enumerate(rankings(vectors)):
        hits = groups_arr[ranked] == groups_arr[q]
        npos = int(hits.sum())
        if npos == 0:
            continue
        ranks = np.flatnonzero(hits) + 1
        aps.append(float(np.mean(np.arange(1, npos + 1) / ranks)))
    return 100.0 * float(np.mean(aps))


@dataclass(frozen=True)
class RetrievalResult:
    """The retrieval gate's verdict for one variant: ``passed``, ``reason`` (one line), the mean
    and worst top-10 agreement, both mAPs and their difference (variant - reference, points),
    and what the reference was."""

    engine: str
    precision: str
    passed: bool
    reason: str
    top10_mean: float
    top10_min: float
    map_variant: float
    map_reference: float
    map_delta: float
    reference: str
    images: int
    checks: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RetrievalResult:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


def judge(
    variant: np.ndarray,
    reference: np.ndarray,
    groups: Sequence[int],
    *,
    engine: str,
    precision: str,
    reference_label: str = "onnxruntime fp32",
    min_top10: float | None = None,
    max_map_drop: float | None = None,
) -> RetrievalResult:
    """The verdict on descriptors already computed (``variant`` and ``reference``, ``(N, D)``);
    bounds default to :data:`MIN_TOP10` and :data:`MAX_MAP_DROP`."""
    min_top10 = MIN_TOP10 if min_top10 is None else min_top10
    max_map_drop = MAX_MAP_DROP if max_map_drop is None else max_map_drop
    if variant.shape != reference.shape or not np.all(np.isfinite(variant)):
        return RetrievalResult(
            engine, precision, False,
            f"{engine} {precision} refused by the retrieval gate: descriptors of shape {variant.shape} "
            f"or not finite (reference {reference.shape})",
            0.0, 0.0, 0.0, 0.0, float("-inf"), reference_label, len(groups),
        )  # fmt: skip
    agree = top_agreement(variant, reference)
    m_var, m_ref = copies_map(variant, groups), copies_map(reference, groups)
    delta = m_var - m_ref
    checks = [
        {"check": "top-10 agreement", "value": float(agree.mean()), "worst": float(agree.min()), "bound": min_top10,
         "passed": bool(agree.mean() >= min_top10)},
        {"check": "copies mAP", "value": m_var, "reference": m_ref, "delta": delta, "bound": -max_map_drop,
         "passed": bool(delta >= -max_map_drop)},
    ]  # fmt: skip
    failures = []
    if not checks[0]["passed"]:
        failures.append(
            f"top-10 agreement {agree.mean():.3f} < {min_top10} (short by {min_top10 - agree.mean():.3f}; "
            f"worst query {agree.min():.1f})"
        )
    if not checks[1]["passed"]:
        failures.append(
            f"copies mAP {m_var:.2f} vs {m_ref:.2f} of {reference_label}: {delta:+.2f} points, "
            f"beyond the -{max_map_drop:g} allowed by {-delta - max_map_drop:.2f}"
        )
    summary = f"top-10 agreement {agree.mean():.3f} (worst {agree.min():.1f}), copies mAP {m_var:.2f} ({delta:+.2f})"
    if failures:
        reason = f"{engine} {precision} refused by the retrieval gate: " + "; ".join(failures)
    else:
        reason = f"{engine} {precision} ranks {len(groups)} photos as {reference_label}: {summary}"
    return RetrievalResult(
        engine, precision, not failures, reason, float(agree.mean()), float(agree.min()), m_var, m_ref, delta,
        reference_label, len(groups), checks,
    )  # fmt: skip


def check(
    run: RunFn,
    reference: RunFn | np.ndarray,
    card: ModelCard,
    *,
    engine: str,
    precision: str,
    reference_label: str = "onnxruntime fp32",
) -> RetrievalResult:
    """Describe the photo set with ``run`` and with ``reference`` (a run function, or its
    descriptors from :func:`describe`) and :func:`judge` them. An engine that crashes fails."""
    images, groups, _ = photo_set()
    ref = reference if isinstance(reference, np.ndarray) else describe(reference, card, images)
    try:
        got = describe(run, card, images)
    except Exception as exc:  # a crash on the set fails the gate
        text = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        return RetrievalResult(
            engine, precision, False, f"{engine} {precision} refused by the retrieval gate: error: {text}",
            0.0, 0.0, 0.0, copies_map(ref, groups), float("-inf"), reference_label, len(groups),
        )  # fmt: skip
    return judge(got, ref, groups, engine=engine, precision=precision, reference_label=reference_label)


def family(card: ModelCard) -> str:
    """The card less what a precision variant changes (precision, golden vector, tool versions,
    the variant's provenance entries): equal for an fp32 file and its INT8/fp16 variants."""
    data = json.loads(card.to_json())
    for key in ("precision", "golden", "versions"):
        data.pop(key, None)
    prov = data.get("provenance")
    if isinstance(prov, dict):
        data["provenance"] = {k: v for k, v in prov.items() if k not in VARIANT_PROVENANCE}
    return json.dumps(data, sort_keys=True)


#: the least cosine between a variant's golden vector and its fp32 source's (same input): the
#: weights are the same (INT8 exports are refused below 0.90 at export)
SOURCE_MIN_COSINE = 0.9


def _same_weights(variant: ModelCard, source: ModelCard) -> bool:
    """Whether the golden vectors (same input) agree: the same weights, not only the same card."""
    a, b = variant.golden, source.golden
    if a is None or b is None or (a.height, a.width, a.seed) != (b.height, b.width, b.seed):
        return a is None or b is None  # nothing to compare: the card alone decides
    va, vb = np.asarray(a.vector, np.float64), np.asarray(b.vector, np.float64)
    if va.shape != vb.shape:
        return False
    return float(va @ vb / max(np.linalg.norm(va) * np.linalg.norm(vb), 1e-12)) >= SOURCE_MIN_COSINE


def reference_model(model: str | Path, card: ModelCard) -> tuple[Path | None, str]:
    """``(path, label)`` of the fp32 file the variant at ``model`` is ranked against: itself for an
    fp32 file; for an INT8/fp16 file its fp32 source among the ``.onnx`` files beside it (same
    :func:`family`, golden vectors at cosine >= :data:`SOURCE_MIN_COSINE`), else ``None`` (the caller then ranks against onnxruntime on the file itself,
    and says so)."""
    model = Path(model)
    if card.precision == "fp32":
        return model, "onnxruntime fp32"
    want = family(card)
    for other in sorted(model.parent.glob("*.onnx")):
        if other.resolve() == model.resolve():
            continue
        try:
            c = read_card(other)
        except Exception:  # not a regatt model: not a candidate
            continue
        if c.precision == "fp32" and family(c) == want and _same_weights(card, c):
            return other, f"onnxruntime fp32 on {other.name}"
    return None, f"onnxruntime on this {card.precision} file (no fp32 source beside it)"
