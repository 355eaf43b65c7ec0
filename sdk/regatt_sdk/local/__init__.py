"""Local features and the second stage of retrieval: verify the global top candidates with
keypoints and geometry, and find candidates the global vector misses.

- :mod:`.codec` — the shipped codebook (RootSIFT -> PCA-64 -> int8, a two-level vocabulary of
  visual words) and :func:`.codec.load_codebook`.
- :mod:`.extract` — :func:`.extract.extract` : a BGR photo -> :class:`.extract.LocalFeatures`
  (keypoints, int8 descriptors, visual words).
- :mod:`.storage` — local features as side files of a feature store, aligned with its rows.
- :mod:`.match` — mutual nearest neighbours with a ratio test, one matrix product for many pairs.
- :mod:`.verify` — robust geometry (homography, MAGSAC) -> inlier counts.
- :mod:`.ivf` — an inverted file of visual words with tf-idf: candidates from local features.
- :mod:`.rerank` — the two stages composed: candidates, verification, fused scores.
- :mod:`.draw` — the picture of why a hit matched.
"""

from __future__ import annotations

from .extract import LocalConfig, LocalFeatures, extract

__all__ = ["LocalConfig", "LocalFeatures", "extract"]
