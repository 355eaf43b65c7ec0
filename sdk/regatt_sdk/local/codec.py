"""The codebook: how SIFT descriptors become compact int8 vectors and visual words.

A descriptor ``d`` (128,) from OpenCV's SIFT becomes RootSIFT (L1-normalised, square-rooted:
unit L2), is projected on ``pca`` (64, 128) after subtracting ``mean`` (128,), and quantised
to int8 with one global ``step`` (``q = clip(round(x / step), -127, 127)``, so dot products of
dequantised vectors stay proportional to those of the projections). A two-level vocabulary
(``coarse`` (C1, 64) centres, ``fine`` (C1, C2, 64)) assigns each descriptor the word
``c1 * C2 + c2`` (nearest coarse centre, then the nearest of its fine centres).

The shipped codebook (``codebook.npz`` beside this module) was learned on photos independent of
any user's collection and of the held-out checks (see ``CODEBOOK.md``), by
:func:`train_codebook` (run by ``benchmarks/local_codebook.py``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..errors import RegattError

CODEBOOK_FILE = Path(__file__).with_name("codebook.npz")


class CodebookError(RegattError):
    """The codebook file is missing, unreadable or malformed."""


@dataclass(frozen=True)
class Codebook:
    """PCA + int8 step + two-level vocabulary. Shapes: ``mean`` (128,), ``pca`` (P, 128),
    ``step`` scalar, ``coarse`` (C1, P), ``fine`` (C1, C2, P)."""

    mean: np.ndarray
    pca: np.ndarray
    step: float
    coarse: np.ndarray
    fine: np.ndarray

    @property
    def dims(self) -> int:
        """``P``, the stored descriptor length."""
        return int(self.pca.shape[0])

    @property
    def words(self) -> int:
        """Vocabulary size ``C1 * C2``."""
        return int(self.fine.shape[0] * self.fine.shape[1])

    @property
    def hash(self) -> str:
        """First 16 hex digits of the SHA-256 of every array: which codebook made a store."""
        h = hashlib.sha256()
        for a in (self.mean, self.pca, np.float64(self.step), self.coarse, self.fine):
            h.update(np.ascontiguousarray(a).tobytes())
        return h.hexdigest()[:16]

    def encode(self, sift: np.ndarray) -> np.ndarray:
        """SIFT ``(n, 128)`` float32 -> int8 ``(n, P)``."""
        x = project(rootsift(sift), self.mean, self.pca)
        return np.clip(np.rint(x / self.step), -127, 127).astype(np.int8)

    def decode(self, q: np.ndarray) -> np.ndarray:
        """int8 ``(n, P)`` -> float32 ``(n, P)`` (the projections, to within ``step / 2``)."""
        return q.astype(np.float32) * np.float32(self.step)

    def assign(self, q: np.ndarray) -> np.ndarray:
        """int8 ``(n, P)`` -> visual words ``(n,)`` uint16 (uint32 beyond 65,536 words)."""
        x = self.decode(q)
        if len(x) == 0:
            return np.zeros(0, np.uint16 if self.words <= 65536 else np.uint32)
        c1 = nearest(x, self.coarse)
        c2 = np.empty(len(x), np.int64)
        for c in np.unique(c1):
            sel = np.flatnonzero(c1 == c)
            c2[sel] = nearest(x[sel], self.fine[c])
        words = c1 * self.fine.shape[1] + c2
        return words.astype(np.uint16 if self.words <= 65536 else np.uint32)

    def save(self, path: str | Path, **provenance: str) -> None:
        """Write the codebook as an ``.npz`` (no pickles; ``provenance`` as strings; the word
        centres as float16, which is how they are used)."""
        np.savez(
            path, mean=self.mean, pca=self.pca, step=np.float64(self.step), coarse=self.coarse.astype(np.float16),
            fine=self.fine.astype(np.float16), **{f"provenance_{k}": np.array(str(v)) for k, v in provenance.items()},
        )  # fmt: skip


def rootsift(d: np.ndarray) -> np.ndarray:
    """SIFT ``(n, 128)`` -> RootSIFT ``(n, 128)`` float32: L1-normalise, square root (unit L2)."""
    d = np.asarray(d, np.float32)
    return np.sqrt(d / (np.abs(d).sum(axis=1, keepdims=True) + 1e-7))


#: rows per matrix product in :func:`small_matmul`: 16 x 128 x 128 multiply-adds stays under
#: OpenBLAS's threshold for threading (65,536 x 4), so no BLAS thread is woken
SMALL_ROWS = 16


def small_matmul(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``x @ w.T`` for ``x`` (n, D) and ``w`` (K, D), D*K <= 16,384, in blocks of
    :data:`SMALL_ROWS` rows: each block single-threaded in BLAS. Local features are extracted
    beside the engine (the encode pipeline's decode workers); a threaded product there leaves
    BLAS threads spinning through the next photo's SIFT, doubling its CPU time and taking the
    core the engine needs (measured: 34.7 vs 17.4 CPU ms per photo). Over 4,096 rows (training
    a codebook) one threaded product."""
    if len(x) > 4096:
        return x @ w.T
    out = np.empty((len(x), len(w)), np.result_type(x, w))
    wt = w.T
    for i in range(0, len(x), SMALL_ROWS):
        np.matmul(x[i : i + SMALL_ROWS], wt, out=out[i : i + SMALL_ROWS])
    return out


def project(x: np.ndarray, mean: np.ndarray, pca: np.ndarray) -> np.ndarray:
    """``(n, 128)`` -> ``(n, P)``: ``(x - mean) @ pca.T``."""
    return small_matmul(x - mean, pca).astype(np.float32)


def nearest(x: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Index of the nearest centre (L2) of each row: ``x`` (n, P), ``centres`` (K, P) -> (n,)."""
    d = (centres * centres).sum(axis=1)[None, :] - 2.0 * small_matmul(x, centres)
    return np.argmin(d, axis=1)


@lru_cache(maxsize=4)
def load_codebook(path: str | None = None) -> Codebook:
    """The codebook at ``path`` (default: the shipped one), cached."""
    file = Path(path) if path else CODEBOOK_FILE
    try:
        with np.load(file, allow_pickle=False) as z:
            book = Codebook(
                mean=z["mean"].astype(np.float32),
                pca=z["pca"].astype(np.float32),
                step=float(z["step"]),
                coarse=z["coarse"].astype(np.float32),
                fine=z["fine"].astype(np.float32),
            )
    except FileNotFoundError:
        raise CodebookError(f"codebook {file} not found (reinstall regatt: it ships with the package)") from None
    except (OSError, KeyError, ValueError) as exc:
        raise CodebookError(f"codebook {file} is unreadable: {exc}") from None
    p = book.pca.shape
    if book.mean.shape != (128,) or p[1] != 128 or book.coarse.shape[1] != p[0] or book.fine.shape[2] != p[0]:
        raise CodebookError(f"codebook {file} has inconsistent shapes")
    return book


def _kmeans(x: np.ndarray, k: int, seed: int, iters: int = 20) -> np.ndarray:
    """``k`` centres of ``x`` (n, P) float32 by OpenCV's k-means (k-means++ seeding)."""
    import cv2

    k = min(k, len(x))
    cv2.setRNGSeed(seed)
    crit = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, iters, 1e-4)
    _, _, centres = cv2.kmeans(np.ascontiguousarray(x, np.float32), k, None, crit, 1, cv2.KMEANS_PP_CENTERS)
    return centres.astype(np.float32)


def train_codebook(sift: np.ndarray, *, dims: int = 64, coarse: int = 128, fine: int = 128, seed: int = 0) -> Codebook:
    """Learn a codebook from SIFT descriptors ``(n, 128)`` (a sample of many photos)."""
    x = rootsift(sift)
    mean = x.mean(axis=0)
    cov = np.cov((x - mean).T)
    eig, vec = np.linalg.eigh(cov)
    pca = vec[:, np.argsort(eig)[::-1][:dims]].T.astype(np.float32)
    proj = project(x, mean, pca)
    step = float(np.quantile(np.abs(proj), 0.999) / 127.0)
    book0 = Codebook(
        mean.astype(np.float32), pca, step, np.zeros((1, dims), np.float32), np.zeros((1, 1, dims), np.float32)
    )
    xq = book0.decode(book0.encode(sift))
    top = _kmeans(xq, coarse, seed)
    c1 = nearest(xq, top)
    leaves = np.zeros((len(top), fine, dims), np.float32)
    for c in range(len(top)):
        members = xq[c1 == c]
        if len(members) == 0:
            leaves[c] = top[c]
            continue
        centres = _kmeans(members, fine, seed + 1 + c)
        leaves[c, : len(centres)] = centres
        leaves[c, len(centres) :] = centres[0]  # fewer members than words: repeat one centre
    return Codebook(mean.astype(np.float32), pca, step, top, leaves)
