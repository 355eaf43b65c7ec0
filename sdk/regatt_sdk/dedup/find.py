"""From descriptors (and, for copies, hashes and local features) to groups: the library behind
``regatt dedup``.

* :func:`group_by_cosine`: pairs with descriptor cosine ``>= threshold`` (range search,
  :mod:`.pairs`), grouped (:mod:`.groups`). Right for ``scene`` (bursts, same place) and for
  grouping stored descriptors alone.
* :func:`group_copies`: candidate pairs (cosine ``>= cand_cosine`` or DCT-hash similarity
  ``>= cand_hash``), each scored by the calibrated :class:`~.score.CopyModel` from cosine,
  hash and the geometry of the local-feature matches (:mod:`.geometry`); pairs with copy
  probability ``>= threshold`` are grouped.

Shapes: ``vectors (N, D)`` unit rows; ``hashes (N,)`` uint64; ``local(k) -> LocalFeatures`` (or
``None`` for a row whose features cannot be had).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .geometry import FEATURES as GEOMETRY_FEATURES
from .geometry import pair_geometry
from .groups import Group, group_pairs
from .pairs import Pairs, check_threshold, check_vectors, similar_pairs
from .phash import hamming
from .score import CopyModel


@dataclass(frozen=True)
class DedupResult:
    """``groups``; the ``pairs`` ``(i, j, score)`` that made them (score: cosine or copy
    probability); ``candidates`` scored; the ``threshold`` used."""

    groups: list[Group]
    pairs: Pairs
    candidates: int
    threshold: float


def group_by_cosine(vectors: np.ndarray, threshold: float, *, mode: str = "components",
                    backend: str = "auto", **options) -> DedupResult:  # fmt: skip
    """Groups of rows whose descriptor cosine is ``>= threshold``."""
    pairs = similar_pairs(vectors, threshold, backend, **options)
    n = int(vectors.shape[0])

    def cos(rep: int, members: np.ndarray) -> np.ndarray:
        return np.asarray(vectors[members], np.float32) @ np.asarray(vectors[rep], np.float32)

    return DedupResult(group_pairs(n, pairs, mode, similarity=cos), pairs, int(pairs[0].size), float(threshold))


def hash_pairs(hashes: np.ndarray, min_similarity: float, *, block: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """Pairs ``i < j`` whose hash similarity ``1 - hamming / 64`` is ``>= min_similarity``."""
    h = np.asarray(hashes, np.uint64)
    max_bits = int(np.floor((1.0 - min_similarity) * 64 + 1e-9))
    out_i, out_j = [], []
    for s in range(0, h.size, block):
        d = hamming(h[s : s + block, None], h[None, :])  # (b, N)
        r, c = np.nonzero(d <= max_bits)
        gi = r + s
        keep = gi < c
        out_i.append(gi[keep])
        out_j.append(c[keep])
    if not out_i:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(out_i).astype(np.int64), np.concatenate(out_j).astype(np.int64)


def copy_candidates(vectors: np.ndarray, hashes: np.ndarray, model: CopyModel, backend: str = "auto"):
    """Candidate pairs ``(i, j)`` (sorted, unique) by cosine or by hash (see the module doc)."""
    ci, cj, _ = similar_pairs(vectors, model.cand_cosine, backend)
    hi, hj = hash_pairs(hashes, model.cand_hash)
    key = np.unique(np.concatenate([ci * vectors.shape[0] + cj, hi * vectors.shape[0] + hj]))
    return key // vectors.shape[0], key % vectors.shape[0]


def pair_features(vectors: np.ndarray, hashes: np.ndarray, local: Callable[[int], Any],
                  i: np.ndarray, j: np.ndarray) -> np.ndarray:  # fmt: skip
    """``(P, F)`` features of pairs ``(i, j)`` in :data:`~.score.FEATURES` order: cosine, hash,
    then :data:`~.geometry.FEATURES` (one matrix product per row ``i`` against its partners)."""
    out = np.zeros((i.size, 2 + len(GEOMETRY_FEATURES)), dtype=np.float64)
    if i.size == 0:
        return out
    a = np.asarray(vectors[i], np.float32)
    b = np.asarray(vectors[j], np.float32)
    out[:, 0] = np.einsum("pd,pd->p", a, b)
    out[:, 1] = 1.0 - hamming(hashes[i], hashes[j]) / 64.0
    out[:, 2:] = pair_geometry(local, i, j)
    return out


def group_copies(vectors: np.ndarray, hashes: np.ndarray, local: Callable[[int], Any], model: CopyModel,
                 threshold: float, *, mode: str = "components", backend: str = "auto") -> DedupResult:  # fmt: skip
    """Groups of edited copies: pairs whose copy probability is ``>= threshold``."""
    check_vectors(vectors)
    t = check_threshold(threshold)
    hashes = np.asarray(hashes, np.uint64)
    if hashes.shape != (vectors.shape[0],):
        raise ValueError(f"need one hash per descriptor: {hashes.shape} hashes, {vectors.shape[0]} descriptors")
    i, j = copy_candidates(vectors, hashes, model, backend)
    prob = model.probability(pair_features(vectors, hashes, local, i, j)) if i.size else np.zeros(0)
    keep = prob >= t
    pairs = (i[keep], j[keep], prob[keep].astype(np.float32))
    return DedupResult(group_pairs(int(vectors.shape[0]), pairs, mode), pairs, int(i.size), t)
