"""An inverted file of visual words with tf-idf weights: candidates from local features alone,
the photos the global vector misses (a small object in clutter).

Built from a store's ``local.words`` (see :mod:`.storage`) in one pass of sorts; cached next to
the store as ``local.ivf.npz`` (arrays only, no pickles) keyed by the number of rows it covers,
and rebuilt when the store has grown.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..files import staged_file
from .storage import LocalIndex

CACHE = "local.ivf.npz"
FORMAT = 1


@dataclass(frozen=True)
class InvertedFile:
    """``offsets`` (V+1,) int64 into ``images`` (T,) int32 and ``weights`` (T,) float32 (the
    image's tf-idf weight of the word over its tf-idf norm), ``idf`` (V,) float32, ``count``: rows."""

    offsets: np.ndarray
    images: np.ndarray
    weights: np.ndarray
    idf: np.ndarray
    count: int

    @classmethod
    def build(cls, local: LocalIndex, vocabulary: int) -> InvertedFile:
        n = local.count
        ends = np.asarray(local.rows["end"], np.int64)
        counts = np.diff(np.concatenate([[0], ends]))
        image_of = np.repeat(np.arange(n, dtype=np.int64), counts)
        words = np.asarray(local.words, np.int64)
        key, tf = np.unique(words * n + image_of if n else words, return_counts=True)
        word = key // max(n, 1)
        image = (key % max(n, 1)).astype(np.int32)
        df = np.bincount(word, minlength=vocabulary)
        idf = np.log((n + 1) / (df + 1)).astype(np.float32)  # ((n+1)/(df+1) > 1 keeps it positive)
        w = np.sqrt(tf).astype(np.float32) * idf[word]  # sqrt(tf): bursts of one texture count less
        norm = np.sqrt(np.bincount(image, weights=w.astype(np.float64) ** 2, minlength=n))
        w /= np.maximum(norm[image], 1e-12).astype(np.float32)
        offsets = np.concatenate([[0], np.cumsum(df)]).astype(np.int64)
        return cls(offsets, image, w, idf, n)

    def query_weights(self, words: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(unique words (u,), their normalised query weights (u,))`` of one query's words."""
        u, tf = np.unique(np.asarray(words, np.int64), return_counts=True)
        w = np.sqrt(tf).astype(np.float32) * self.idf[u]
        return u, w / max(float(np.linalg.norm(w)), 1e-12)

    def scores(self, words: np.ndarray) -> np.ndarray:
        """Cosine similarity of the query's tf-idf bag of words with every row: ``(count,)``."""
        u, qw = self.query_weights(words)
        starts, ends = self.offsets[u], self.offsets[u + 1]
        lengths = ends - starts
        if lengths.sum() == 0:
            return np.zeros(self.count, np.float32)
        idx = np.repeat(starts - np.cumsum(np.concatenate([[0], lengths[:-1]])), lengths) + np.arange(lengths.sum())
        contrib = self.weights[idx] * np.repeat(qw, lengths)
        return np.bincount(self.images[idx], weights=contrib, minlength=self.count).astype(np.float32)

    def top(self, words: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(scores (k,), rows (k,))`` of the ``k`` best rows (fewer when the store is smaller)."""
        s = self.scores(words)
        k = min(k, len(s))
        if k <= 0:
            return np.zeros(0, np.float32), np.zeros(0, np.int64)
        rows = np.argpartition(-s, k - 1)[:k]
        rows = rows[np.argsort(-s[rows], kind="stable")]
        return s[rows], rows.astype(np.int64)


def load_or_build(local: LocalIndex, vocabulary: int, *, cache: bool = True) -> InvertedFile:
    """The store's inverted file: from its cache when that covers the same rows, else built (and
    cached when the store's directory is writable)."""
    path = Path(local.store_path) / CACHE
    if cache and path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                if int(z["format"]) == FORMAT and int(z["count"]) == local.count and int(z["vocabulary"]) == vocabulary:
                    return InvertedFile(z["offsets"], z["images"], z["weights"], z["idf"], int(z["count"]))
        except (OSError, KeyError, ValueError):
            pass  # a damaged cache is rebuilt below
    ivf = InvertedFile.build(local, vocabulary)
    if cache and os.access(path.parent, os.W_OK):
        try:
            with staged_file(path, suffix=".npz") as tmp:
                np.savez(tmp, format=FORMAT, count=ivf.count, vocabulary=vocabulary, offsets=ivf.offsets,
                         images=ivf.images, weights=ivf.weights, idf=ivf.idf)  # fmt: skip
                os.replace(tmp, path)
        except OSError:
            pass  # read-only or full: the index still works from memory
    return ivf
