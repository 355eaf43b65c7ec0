"""The copy score of a candidate pair: descriptor cosine, DCT-hash agreement and the geometry of
its local-feature matches (:mod:`.geometry`) combined by a logistic model whose weights and
preset thresholds come from ``presets.json`` (written by ``benchmarks/dedup_bench.py
--calibrate`` on the benchmark's ``val`` landmarks). Any export works: nothing comes from the
model but the descriptor.

Shapes: ``features`` ``(P, F)`` float64 in the order of :data:`FEATURES`; scores ``(P,)``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import RegattError
from .geometry import FEATURES as GEOMETRY_FEATURES

FEATURES = ("cosine", "hash", *GEOMETRY_FEATURES)
PRESETS_FILE = Path(__file__).with_name("presets.json")
PRESETS = ("exact", "near", "scene")


@dataclass(frozen=True)
class CopyModel:
    """``p = sigmoid(((x - mean) / std) . weights + bias)`` over :data:`FEATURES`; candidates are
    pairs with cosine ``>= cand_cosine`` or hash similarity ``>= cand_hash``."""

    mean: np.ndarray
    std: np.ndarray
    weights: np.ndarray
    bias: float
    cand_cosine: float
    cand_hash: float

    def probability(self, features: np.ndarray) -> np.ndarray:
        """Copy probability ``(P,)`` of candidate pairs' ``features`` ``(P, F)``."""
        x = (np.asarray(features, np.float64) - self.mean) / self.std
        return 1.0 / (1.0 + np.exp(-(x @ self.weights + self.bias)))


@dataclass(frozen=True)
class Preset:
    """``kind`` ``copy`` (threshold on the copy probability) or ``cosine`` (on the descriptor
    cosine alone); ``threshold``; what it was calibrated for (``note``)."""

    name: str
    kind: str
    threshold: float
    note: str = ""


def load_presets(path: str | Path = PRESETS_FILE) -> tuple[CopyModel, dict[str, Preset], dict]:
    """``(copy model, {name: Preset}, the file's provenance dict)`` from ``path``."""
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
        m = raw["copy_model"]
        model = CopyModel(np.array(m["mean"]), np.array(m["std"]), np.array(m["weights"]), float(m["bias"]),
                          float(m["cand_cosine"]), float(m["cand_hash"]))  # fmt: skip
        presets = {k: Preset(k, v["kind"], float(v["threshold"]), v.get("note", "")) for k, v in raw["presets"].items()}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise RegattError(f"{path}: unreadable dedup presets ({exc})") from None
    if list(m.get("features", FEATURES)) != list(FEATURES):
        raise RegattError(
            f"{path}: presets were fitted on features {m.get('features')}, this version computes {FEATURES}"
        )
    return model, presets, raw.get("provenance", {})
