"""Synthetic descriptors for the index tests (numpy only, so the runtime tests can use them)."""

from __future__ import annotations

import numpy as np


def clustered(n: int, dim: int, clusters: int, seed: int = 0) -> np.ndarray:
    """``n`` unit rows (n, dim) float32 around ``clusters`` random centres (cosine to centre ~0.8)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = centres[rng.integers(0, clusters, n)] + 0.7 * rng.standard_normal((n, dim)).astype(np.float32) / np.sqrt(dim)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
