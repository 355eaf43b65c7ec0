"""Approximate nearest-neighbour search over a feature store with FAISS (``pip install 'regatt[faiss]'``).

The kind of index is chosen by the store's size ``N`` (or forced with ``kind``):

* ``flat`` (``N < 10,000``): exact inner product (``IndexFlatIP``); nothing to gain below that.
* ``hnsw`` (``N < 100,000``): an HNSW graph (``HNSW32``) over the full float32 vectors; no
  training, high recall, memory ``N x (4 D + ~260)`` bytes.
* ``ivfpq`` (larger): an inverted file of ``nlist ~ 2 sqrt(N)`` lists (power of two) with
  product-quantised codes (``PQ m``, ``m`` bytes a vector, ``D / m`` dimensions a sub-vector).
  Trained on a random sample of the store (``40 x nlist`` rows, at most 200,000), then every
  row is added in blocks read from the store's memory map. Searches visit ``nprobe`` lists and
  re-rank the best ``rerank`` candidates exactly with the store's own float32 vectors, so the
  compressed codes only have to find the neighbourhood, not order it.

The index lives next to the store: ``<store>.ann.faiss`` (``faiss.write_index``) and
``<store>.ann.json`` (kind, factory string, the store's row count and card hash at build time,
default ``nprobe``/``rerank``). :func:`load_store_index` refuses to use an index that is stale
(the store gained rows since) or made for another model: it returns ``None`` with the reason.

Shapes: queries ``(Q, D)`` float32 (or one ``(D,)``); results ``(scores (Q, k) float32,
indices (Q, k) int64)`` best first, ``-1`` indices (score ``-inf``) when fewer than ``k`` found.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import RegattError
from .search import as_queries, check_compatible, import_faiss

KINDS = ("auto", "flat", "hnsw", "ivfpq")
#: below this many rows ``auto`` keeps exact search
FLAT_MAX_ROWS = 10_000
#: below this many rows ``auto`` builds HNSW; at and above it, IVF-PQ
HNSW_MAX_ROWS = 100_000
#: the most rows IVF-PQ is trained on
MAX_TRAIN_ROWS = 200_000
INDEX_SUFFIX = ".ann.faiss"
META_SUFFIX = ".ann.json"
META_KIND = "regatt.ann"


class AnnError(RegattError):
    """An ANN index cannot be built, saved or loaded."""


def index_paths(store_path: str | os.PathLike) -> tuple[Path, Path]:
    """``(index file, metadata file)`` next to the store: ``STORE.ann.faiss``, ``STORE.ann.json``."""
    base = Path(os.path.normpath(os.fspath(store_path)))
    return base.with_name(base.name + INDEX_SUFFIX), base.with_name(base.name + META_SUFFIX)


def choose_kind(n: int) -> str:
    """``flat``, ``hnsw`` or ``ivfpq`` for a store of ``n`` rows (see the module docstring)."""
    if n < FLAT_MAX_ROWS:
        return "flat"
    if n < HNSW_MAX_ROWS:
        return "hnsw"
    return "ivfpq"


def default_nlist(n: int) -> int:
    """Inverted lists for ``n`` rows: the power of two nearest ``2 sqrt(n)``, within [64, 65536]."""
    target = 2.0 * math.sqrt(max(n, 1))
    return int(min(65536, max(64, 2 ** round(math.log2(target)))))


def default_pq_bytes(dim: int) -> int:
    """PQ sub-quantisers (bytes per vector): ``dim / 8`` (8 dims each), a divisor of ``dim``."""
    target = max(1, dim // 8)
    for m in range(target, 0, -1):
        if dim % m == 0:
            return m
    return 1


def factory_string(kind: str, n: int, dim: int, *, nlist: int | None = None,
                   pq_bytes: int | None = None, hnsw_m: int = 32) -> str:  # fmt: skip
    """The ``faiss.index_factory`` description of ``kind`` for ``n`` rows of ``dim``."""
    if kind == "flat":
        return "Flat"
    if kind == "hnsw":
        return f"HNSW{hnsw_m}"
    if kind == "ivfpq":
        m = pq_bytes or default_pq_bytes(dim)
        if dim % m:
            raise AnnError(f"PQ bytes {m} must divide the descriptor dimension {dim}")
        return f"IVF{nlist or default_nlist(n)},PQ{m}"
    raise AnnError(f"unknown index kind '{kind}': use one of {', '.join(KINDS)}")


@dataclass
class AnnIndex:
    """A FAISS index over ``database`` (N, D) (the store's vectors, used for exact re-ranking).

    ``meta`` holds ``kind``, ``factory``, ``count``, ``dim``, ``nprobe``, ``rerank`` and build
    details; :meth:`search` uses its ``nprobe``/``rerank`` unless given others.
    """

    index: object
    database: np.ndarray
    meta: dict = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return str(self.meta.get("kind", "flat"))

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    @property
    def dim(self) -> int:
        return int(self.index.d)

    def search(
        self, queries: np.ndarray, k: int, *, nprobe: int | None = None, rerank: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` by inner product: ``(scores (Q, k) float32, indices (Q, k) int64)``.

        ``nprobe``: inverted lists visited (IVF); ``rerank``: candidates fetched from the index
        and re-scored with the exact vectors (IVF-PQ; 0 returns the PQ scores as they are).
        """
        q = as_queries(queries)
        check_compatible(q, self.database, "ANN index")
        k = min(int(k), self.ntotal)
        if k <= 0:
            raise ValueError(f"k must be at least 1, got {k}")
        faiss = import_faiss()
        kind = self.kind
        if kind == "ivfpq":
            ivf = faiss.extract_index_ivf(self.index)
            ivf.nprobe = int(nprobe or self.meta.get("nprobe", 32))
            depth = int(self.meta.get("rerank", 100) if rerank is None else rerank)
            fetch = min(self.ntotal, max(k, depth))
            scores, ids = self.index.search(q, fetch)
            if depth > 0:
                scores, ids = rerank_exact(q, self.database, ids, k)
            return scores[:, :k].astype(np.float32, copy=False), ids[:, :k].astype(np.int64)
        if kind == "hnsw":
            self.index.hnsw.efSearch = max(int(self.meta.get("ef_search", 128)), 2 * k)
        scores, ids = self.index.search(q, k)
        return scores.astype(np.float32, copy=False), ids.astype(np.int64, copy=False)


def rerank_exact(
    queries: np.ndarray, database: np.ndarray, candidates: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Re-score ``candidates`` (Q, C) row ids (``-1`` = none) exactly against ``database`` (N, D).

    Returns the best ``k``: ``(scores (Q, k) float32, indices (Q, k) int64)``; rows are read from
    the (memory-mapped) database in ascending order.
    """
    q = as_queries(queries)
    out_s = np.full((q.shape[0], k), -np.inf, dtype=np.float32)
    out_i = np.full((q.shape[0], k), -1, dtype=np.int64)
    for r in range(q.shape[0]):
        ids = np.unique(candidates[r][candidates[r] >= 0])
        if ids.size == 0:
            continue
        scores = np.asarray(database[ids], dtype=np.float32) @ q[r]
        order = np.lexsort((ids, -scores))[:k]
        out_s[r, : order.size] = scores[order]
        out_i[r, : order.size] = ids[order]
    return out_s, out_i


def train_sample(database: np.ndarray, size: int, seed: int = 0) -> np.ndarray:
    """``size`` distinct random rows of ``database`` (N, D), read in ascending order: (size, D)."""
    n = database.shape[0]
    if size >= n:
        return np.ascontiguousarray(database[:], dtype=np.float32)
    rows = np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))
    out = np.empty((size, database.shape[1]), dtype=np.float32)
    for start in range(0, size, 65536):
        out[start : start + 65536] = database[rows[start : start + 65536]]
    return out


def build_index(
    database: np.ndarray,
    kind: str = "auto",
    *,
    nlist: int | None = None,
    pq_bytes: int | None = None,
    hnsw_m: int = 32,
    train_rows: int | None = None,
    nprobe: int | None = None,
    rerank: int = 100,
    seed: int = 0,
    chunk_rows: int = 65536,
) -> AnnIndex:
    """Build an :class:`AnnIndex` over ``database`` (N, D) float32 unit rows (e.g. a memmap).

    ``kind``: ``auto`` (by N), ``flat``, ``hnsw`` or ``ivfpq``. IVF-PQ is trained on
    ``train_rows`` random rows (default ``min(N, max(40 nlist, 10 000), 200 000)``).
    Rows are added ``chunk_rows`` at a time, so only one block is in memory besides the index.
    """
    faiss = import_faiss()
    if database.ndim != 2 or database.shape[0] == 0:
        raise AnnError(f"need a non-empty (N, D) database, got shape {tuple(database.shape)}")
    if kind not in KINDS:
        raise AnnError(f"unknown index kind '{kind}': use one of {', '.join(KINDS)}")
    n, dim = (int(s) for s in database.shape)
    kind = choose_kind(n) if kind == "auto" else kind
    lists = nlist or default_nlist(n)
    if kind == "ivfpq" and n < lists:
        raise AnnError(f"IVF with {lists} lists needs at least {lists} rows, the store has {n}")
    factory = factory_string(kind, n, dim, nlist=lists, pq_bytes=pq_bytes, hnsw_m=hnsw_m)
    index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    if kind == "ivfpq":
        _tune_training(faiss, index)
    meta: dict = {"kind": kind, "factory": factory, "count": n, "dim": dim}
    t0 = time.perf_counter()
    if not index.is_trained:
        rows = min(n, train_rows or min(max(40 * lists, 10_000), MAX_TRAIN_ROWS))
        index.train(train_sample(database, rows, seed))
        meta.update(train_rows=rows, nlist=lists, nprobe=int(nprobe or max(8, lists // 64)),
                    rerank=int(rerank))  # fmt: skip
    meta["train_s"] = round(time.perf_counter() - t0, 3)
    if kind == "hnsw":
        index.hnsw.efConstruction = 80
        meta["ef_search"] = 128
    t1 = time.perf_counter()
    for start in range(0, n, chunk_rows):
        index.add(np.ascontiguousarray(database[start : start + chunk_rows], dtype=np.float32))
    meta["add_s"] = round(time.perf_counter() - t1, 3)
    return AnnIndex(index=index, database=database, meta=meta)


def _tune_training(faiss, index) -> None:
    """IVF-PQ training settings: 10 k-means iterations for the coarse lists and the PQ
    codebooks, 64 points per PQ centroid, and no polysemous training (its code reordering is
    unused here and costs ten times the rest of the training)."""
    ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
    ivf.cp.niter = 10
    ivf.do_polysemous_training = False
    ivf.pq.cp.niter = 10
    ivf.pq.cp.max_points_per_centroid = 64


def save_index(ann: AnnIndex, store_path: str | os.PathLike, *, card_hash: str = "") -> Path:
    """Write ``STORE.ann.faiss`` and ``STORE.ann.json`` (atomically replaced); returns the index path."""
    faiss = import_faiss()
    index_file, meta_file = index_paths(store_path)
    meta = dict(ann.meta, format=1, kind_of_file=META_KIND, card_hash=str(card_hash),
                faiss=getattr(faiss, "__version__", "?"), index_file=index_file.name)  # fmt: skip
    tmp = index_file.with_name(index_file.name + f".tmp{os.getpid()}")
    faiss.write_index(ann.index, str(tmp))
    os.replace(tmp, index_file)
    tmp_meta = meta_file.with_name(meta_file.name + f".tmp{os.getpid()}")
    tmp_meta.write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp_meta, meta_file)
    ann.meta = meta
    return index_file


def build_store_index(
    store_path: str | os.PathLike, kind: str = "auto", **options: object
) -> AnnIndex:
    """Build the ANN index of the feature store at ``store_path`` and save it next to the store.

    ``options`` go to :func:`build_index` (``nlist``, ``pq_bytes``, ``train_rows``, ...).
    """
    from .store import FeatureStore

    store = FeatureStore.open(store_path)
    if store.count == 0:
        raise AnnError(f"feature store {store_path} is empty: nothing to index")
    ann = build_index(store.vectors, kind, **options)  # type: ignore[arg-type]
    save_index(ann, store_path, card_hash=store.card_hash)
    return ann


def load_store_index(store_path: str | os.PathLike) -> tuple[AnnIndex | None, str]:
    """``(index, "")`` when a usable index sits next to the store, else ``(None, why not)``.

    "why not" is empty when there is simply no index; otherwise it says what is wrong (stale,
    another model, unreadable) so the caller can warn and fall back to exact search.
    """
    from .store import FeatureStore

    index_file, meta_file = index_paths(store_path)
    if not index_file.is_file() or not meta_file.is_file():
        return None, ""
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return None, f"{meta_file} is unreadable ({exc})"
    store = FeatureStore.open(store_path)
    if meta.get("count") != store.count or meta.get("dim") != store.dim:
        return None, (f"{index_file} covers {meta.get('count')} rows but the store now has "
                      f"{store.count}: rebuild it with  regatt index ... --faiss")  # fmt: skip
    if meta.get("card_hash") and meta["card_hash"] != store.card_hash:
        return None, f"{index_file} was built for another model: rebuild it"
    faiss = import_faiss()
    try:
        index = faiss.read_index(str(index_file))
    except RuntimeError as exc:
        return None, f"{index_file} is unreadable ({str(exc).strip().splitlines()[-1]})"
    return AnnIndex(index=index, database=store.vectors, meta=meta), ""


def search_with_expansion(
    ann: AnnIndex, queries: np.ndarray, top: int, qe: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``top`` through the ANN index, after average query expansion over the top ``qe``.

    Returns ``(scores (Q, top), indices (Q, top))``.
    """
    from .expansion import average_query_expansion

    q = as_queries(queries)
    if qe > 0:
        _, ids = ann.search(q, qe)
        q = average_query_expansion(q, ann.database, np.where(ids < 0, 0, ids), k=ids.shape[1])
    return ann.search(q, top)


def check_kind(kind: str) -> str:
    """``kind`` if it is one of :data:`KINDS`, else :class:`AnnError` (before any work starts)."""
    if kind not in KINDS:
        raise AnnError(f"unknown index kind '{kind}': use one of {', '.join(KINDS)}")
    return kind


def describe(ann: AnnIndex, store_path: str | os.PathLike) -> str:
    """One line: what was built, from how many rows, in how long, where it went."""
    m = ann.meta
    took = float(m.get("train_s", 0)) + float(m.get("add_s", 0))
    extra = f", trained on {m['train_rows']} rows, nprobe {m['nprobe']}" if "train_rows" in m else ""
    return (f"ANN index {m['kind']} ({m['factory']}) over {m['count']} rows x {m['dim']}{extra} "
            f"in {took:.1f} s: {index_paths(store_path)[0]}")  # fmt: skip
