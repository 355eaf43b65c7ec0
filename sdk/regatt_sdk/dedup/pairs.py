"""Every pair of stored descriptors above a similarity threshold (range search).

``vectors`` is ``(N, D)`` float32 with unit rows (an array or the memory map of a feature store).
Two backends, same answer format: ``(i (P,) int64, j (P,) int64, score (P,) float32)`` with
``i < j``, each pair once, sorted by ``(i, j)``.

* ``exact``: blocks of rows against all later rows in numpy, ``block x N`` scores at a time
  (memory: one block of scores plus the pairs found). Cost ``N^2 D / 2``: right for small sets.
* ``ivf``: a FAISS inverted file with 8-bit scalar-quantised codes (``IVF{nlist},SQ8``, a
  quarter of the float32 size) searched with ``range_search`` at ``threshold - margin``, then
  every candidate pair re-scored exactly from ``vectors`` and kept only at ``>= threshold``. The
  inverted file only has to find the neighbourhood; the reported scores are exact. A pair whose
  two members fall in lists more than ``nprobe`` apart can be missed (recall is measured in
  ``benchmarks/dedup_bench.py``).

``auto`` picks ``exact`` below :data:`EXACT_MAX_ROWS` rows, else ``ivf``. Any other
:class:`~regatt_sdk.index.VectorIndex` (e.g. a store's FAISS ANN index) works through
:func:`pairs_from_index`, which grows ``k`` until every row's ``k``-th hit is below the
threshold.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import RegattError
from ..index.faiss_index import import_faiss

BACKENDS = ("auto", "exact", "ivf")
#: ``auto`` uses the exact backend below this many rows
EXACT_MAX_ROWS = 20_000
#: rows per block of the exact backend and per FAISS search batch
BLOCK_ROWS = 2048
#: how far below the threshold the quantised index searches before exact re-scoring
SQ8_MARGIN = 0.05

Pairs = tuple[np.ndarray, np.ndarray, np.ndarray]


def check_threshold(threshold: float) -> float:
    """``threshold`` as a float in [-1, 1] (cosine of unit vectors), else :class:`RegattError`."""
    t = float(threshold)
    if not (-1.0 <= t <= 1.0) or math.isnan(t):
        raise RegattError(
            f"similarity threshold {threshold} is outside [-1, 1]: descriptors are unit vectors, "
            "so their cosine lies in [-1, 1] (e.g. 0.9 for near copies)"
        )
    return t


def check_vectors(vectors: np.ndarray) -> None:
    """Raise :class:`RegattError` unless ``vectors`` is a non-empty ``(N, D)`` float matrix."""
    if vectors.ndim != 2 or vectors.shape[0] == 0 or vectors.shape[1] == 0:
        raise RegattError(
            f"expected a non-empty (N, D) matrix of descriptors, got shape {tuple(vectors.shape)}: "
            "encode some images first"
        )


def _empty() -> Pairs:
    return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)


def _sorted(i: list[np.ndarray], j: list[np.ndarray], s: list[np.ndarray]) -> Pairs:
    if not i:
        return _empty()
    ii, jj, ss = np.concatenate(i), np.concatenate(j), np.concatenate(s)
    order = np.lexsort((jj, ii))
    return ii[order].astype(np.int64), jj[order].astype(np.int64), ss[order].astype(np.float32)


def pairs_exact(vectors: np.ndarray, threshold: float, *, block_rows: int = BLOCK_ROWS) -> Pairs:
    """All pairs ``i < j`` with ``vectors[i] . vectors[j] >= threshold`` (numpy, exact)."""
    check_vectors(vectors)
    t = check_threshold(threshold)
    n = vectors.shape[0]
    out_i, out_j, out_s = [], [], []
    for start in range(0, n, block_rows):
        block = np.asarray(vectors[start : start + block_rows], dtype=np.float32)
        for other in range(start, n, 8 * block_rows):  # bounded score blocks
            rest = np.asarray(vectors[other : other + 8 * block_rows], dtype=np.float32)
            scores = block @ rest.T  # (b, r)
            bi, rj = np.nonzero(scores >= t)
            gi, gj = bi + start, rj + other
            keep = gi < gj
            out_i.append(gi[keep])
            out_j.append(gj[keep])
            out_s.append(scores[bi[keep], rj[keep]])
    return _sorted(out_i, out_j, out_s)


def default_nlist(n: int) -> int:
    """Inverted lists for ``n`` rows: a power of two near ``sqrt(n)``, within [16, 4096]."""
    return int(min(4096, max(16, 2 ** round(math.log2(max(math.sqrt(n), 1.0))))))


def rescore(vectors: np.ndarray, i: np.ndarray, j: np.ndarray, *, block: int = 65536) -> np.ndarray:
    """Exact ``vectors[i] . vectors[j]`` ``(P,)`` float32 for pair lists ``i``, ``j`` ``(P,)``."""
    out = np.empty(i.shape[0], dtype=np.float32)
    for s in range(0, i.shape[0], block):
        a = np.asarray(vectors[i[s : s + block]], dtype=np.float32)
        b = np.asarray(vectors[j[s : s + block]], dtype=np.float32)
        out[s : s + block] = np.einsum("pd,pd->p", a, b)
    return out


def pairs_ivf(
    vectors: np.ndarray,
    threshold: float,
    *,
    nlist: int | None = None,
    nprobe: int = 16,
    train_rows: int = 50_000,
    margin: float = SQ8_MARGIN,
    block_rows: int = BLOCK_ROWS,
    seed: int = 0,
) -> Pairs:
    """Pairs above ``threshold`` through a FAISS ``IVF,SQ8`` range search, re-scored exactly."""
    check_vectors(vectors)
    t = check_threshold(threshold)
    faiss = import_faiss()
    n, d = vectors.shape
    nlist = int(nlist or default_nlist(n))
    index = faiss.index_factory(int(d), f"IVF{nlist},SQ8", faiss.METRIC_INNER_PRODUCT)
    rows = np.sort(np.random.default_rng(seed).choice(n, size=min(n, max(train_rows, 40 * nlist)), replace=False))
    index.train(np.ascontiguousarray(vectors[rows], dtype=np.float32))
    for start in range(0, n, 65536):
        index.add(np.ascontiguousarray(vectors[start : start + 65536], dtype=np.float32))
    faiss.extract_index_ivf(index).nprobe = int(min(nprobe, nlist))
    out_i, out_j = [], []
    for start in range(0, n, block_rows):
        q = np.ascontiguousarray(vectors[start : start + block_rows], dtype=np.float32)
        lims, _, ids = index.range_search(q, float(t - margin))
        rows_of = np.repeat(np.arange(q.shape[0], dtype=np.int64) + start, np.diff(lims).astype(np.int64))
        keep = rows_of < ids
        out_i.append(rows_of[keep])
        out_j.append(ids[keep].astype(np.int64))
    if not out_i:
        return _empty()
    ii, jj = np.concatenate(out_i), np.concatenate(out_j)
    ss = rescore(vectors, ii, jj)
    keep = ss >= t
    return _sorted([ii[keep]], [jj[keep]], [ss[keep]])


def similar_pairs(vectors: np.ndarray, threshold: float, backend: str = "auto", **options) -> Pairs:
    """Pairs ``(i, j, score)`` with ``i < j`` and cosine ``>= threshold``; see the module docstring."""
    check_vectors(vectors)
    check_threshold(threshold)
    if backend == "auto":
        backend = "exact" if vectors.shape[0] < EXACT_MAX_ROWS else "ivf"
    if backend == "exact":
        return pairs_exact(vectors, threshold, **{k: v for k, v in options.items() if k == "block_rows"})
    if backend == "ivf":
        return pairs_ivf(vectors, threshold, **options)
    raise RegattError(f"unknown range-search backend '{backend}': use one of {', '.join(BACKENDS)}")


def pairs_from_index(index, threshold: float, *, k: int = 32, block_rows: int = BLOCK_ROWS) -> Pairs:
    """Pairs above ``threshold`` from any :class:`~regatt_sdk.index.VectorIndex` holding the
    collection itself (rows ``0..size-1``): top-``k`` per row, ``k`` doubled for the rows whose
    ``k``-th hit is still above the threshold (so nothing above it is cut off)."""
    t = check_threshold(threshold)
    n = int(index.size)
    out_i, out_j, out_s = [], [], []
    for start in range(0, n, block_rows):
        rows = np.arange(start, min(n, start + block_rows))
        kk = min(n, k)
        while rows.size:
            scores, ids = index.search(index.vectors(rows), kk)
            full = (scores[:, -1] >= t) & (kk < n)
            done = ~full
            r, c = np.nonzero((scores[done] >= t) & (ids[done] >= 0))
            src, dst = rows[done][r], ids[done][r, c]
            keep = src < dst
            out_i.append(src[keep])
            out_j.append(dst[keep])
            out_s.append(scores[done][r, c][keep])
            rows, kk = rows[full], min(n, 2 * kk)
    return _sorted(out_i, out_j, out_s)
