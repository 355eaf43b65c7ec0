"""Parity of a precision variant (INT8, fp16) against its fp32 graph: descriptor cosines on
held-out images, the variant's own golden vector, and writing the checked variant with its card."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from regatt_sdk.card import Golden, ModelCard, golden_image, read_card

from .calibration import CalibrationError, ImageSet
from .onnx_export import GOLDEN_SIZE, ParityError, write_card


@dataclass(frozen=True)
class VariantParity:
    """Descriptor agreement of a reduced-precision graph with its fp32 graph."""

    precision: str
    images: str
    count: int
    min_cosine: float
    mean_cosine: float
    threshold: float
    provider: str

    @property
    def ok(self) -> bool:
        return bool(np.isfinite(self.min_cosine) and self.min_cosine >= self.threshold)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ok"] = self.ok
        return d

    def summary(self) -> str:
        return (
            f"{self.precision} parity on {self.count} {self.images} ({self.provider}): cosine to fp32 "
            f"min {self.min_cosine:.5f}, mean {self.mean_cosine:.5f}, required >= {self.threshold:g} "
            f"-> {'pass' if self.ok else 'FAIL'}"
        )


def _session(path: str | Path, providers: Sequence[str]):
    from regatt_sdk.engines.ort import create_session, import_ort

    ort = import_ort()
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    return create_session(path, options=opts, providers=list(providers))


def descriptors(session, images: Sequence[np.ndarray], dtype=np.uint8) -> np.ndarray:
    """Run ``session`` on each prepared image (one at a time: sizes differ) -> ``(N, D)``."""
    name = session.get_inputs()[0].name
    rows = [session.run(["descriptor"], {name: np.ascontiguousarray(im[None], dtype=dtype)})[0][0] for im in images]
    return np.stack(rows).astype(np.float32)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine of ``(N, D)`` arrays; NaN rows (non-finite output) give -inf."""
    num = np.sum(a * b, axis=1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = num / den
    return np.where(np.isfinite(cos), cos, -np.inf)


def measure_parity(
    fp32_path: str | Path,
    variant_path: str | Path,
    images: ImageSet,
    precision: str,
    threshold: float,
    providers: Sequence[str] = ("CPUExecutionProvider",),
) -> VariantParity:
    """Cosine of ``variant_path``'s descriptors to ``fp32_path``'s on ``images``."""
    if not images.images:
        raise CalibrationError("no parity images")
    dtype = _input_dtype(fp32_path)
    ref = descriptors(_session(fp32_path, ["CPUExecutionProvider"]), images.images, dtype)
    sess = _session(variant_path, providers)
    got = descriptors(sess, images.images, dtype)
    cos = cosines(ref, got)
    return VariantParity(
        precision=precision,
        images=images.source,
        count=len(images.images),
        min_cosine=float(cos.min()),
        mean_cosine=float(cos.mean()) if np.isfinite(cos).all() else float("-inf"),
        threshold=float(threshold),
        provider=sess.get_providers()[0],
    )


def _input_dtype(path: str | Path):
    return np.uint8 if read_card(path).input_dtype == "uint8" else np.float32


def variant_golden(path: str | Path, card: ModelCard, atol: float) -> Golden:
    """The golden vector recomputed on the variant itself (onnxruntime CPU)."""
    h, w, seed = GOLDEN_SIZE
    image = golden_image(h, w, seed)[None].astype(np.uint8 if card.input_dtype == "uint8" else np.float32)
    sess = _session(path, ["CPUExecutionProvider"])
    vec = sess.run(["descriptor"], {sess.get_inputs()[0].name: image})[0][0]
    return Golden(height=h, width=w, seed=seed, vector=[float(x) for x in vec], atol=atol)


def finish_variant(
    tmp: str | Path,
    out_path: str | Path,
    card: ModelCard,
    parity: VariantParity,
    golden_atol: float,
) -> ModelCard:
    """Refuse (``ParityError``) or stamp the card (golden from the variant) and move into place."""
    if not parity.ok:
        raise ParityError(parity.summary())
    card = replace(card, golden=variant_golden(tmp, card, golden_atol))
    write_card(tmp, card)
    os.chmod(tmp, 0o644)
    os.replace(tmp, out_path)
    return card
