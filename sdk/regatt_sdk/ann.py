"""A feature store's ANN index on disk: built with FAISS (:class:`~regatt_sdk.index.faiss_index.FaissIndex`,
``pip install 'regatt[faiss]'``), kept next to the store, refused when stale.

The kind of index is chosen by the store's size ``N`` (or forced with ``kind``): ``flat``
(``N < 10,000``), ``hnsw`` (``N < 100,000``), ``ivfpq`` (larger); see
:mod:`regatt_sdk.index.faiss_index` for what each is and how it is searched.

The index lives next to the store: ``<store>.ann.faiss`` (``faiss.write_index``) and
``<store>.ann.json`` (kind, factory string, the store's row count and card hash at build time,
default ``nprobe``/``rerank``). :func:`load_store_index` refuses to use an index that is stale
(the store gained rows since) or made for another model: it returns ``None`` with the reason.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .index.faiss_index import KINDS, FaissIndex, IndexBuildError, check_kind, import_faiss

__all__ = [
    "INDEX_SUFFIX", "KINDS", "META_KIND", "META_SUFFIX", "AnnError", "build_store_index", "check_kind",
    "describe", "index_paths", "load_store_index", "save_index", "update_store_index",
]  # fmt: skip

INDEX_SUFFIX = ".ann.faiss"
META_SUFFIX = ".ann.json"
META_KIND = "regatt.ann"
#: an ANN index cannot be built, saved or loaded
AnnError = IndexBuildError


def index_paths(store_path: str | os.PathLike) -> tuple[Path, Path]:
    """``(index file, metadata file)`` next to the store: ``STORE.ann.faiss``, ``STORE.ann.json``."""
    base = Path(os.path.normpath(os.fspath(store_path)))
    return base.with_name(base.name + INDEX_SUFFIX), base.with_name(base.name + META_SUFFIX)


def save_index(ann: FaissIndex, store_path: str | os.PathLike, *, card_hash: str = "") -> Path:
    """Write ``STORE.ann.faiss`` and ``STORE.ann.json`` (atomically replaced); returns the index path."""
    index_file, meta_file = index_paths(store_path)
    return ann.save(index_file, meta_file, format=1, kind_of_file=META_KIND, card_hash=str(card_hash))


def build_store_index(store_path: str | os.PathLike, kind: str = "auto", **options: object) -> FaissIndex:
    """Build the ANN index of the feature store at ``store_path`` and save it next to the store.

    ``options`` go to :meth:`FaissIndex.build` (``nlist``, ``pq_bytes``, ``train_rows``, ...).
    """
    from .store import FeatureStore

    store = FeatureStore.open(store_path)
    if store.count == 0:
        raise AnnError(f"feature store {store_path} is empty: nothing to index")
    ann = FaissIndex.build(store.vectors, kind, **options)  # type: ignore[arg-type]
    save_index(ann, store_path, card_hash=store.card_hash)
    return ann


def update_store_index(store_path: str | os.PathLike, kind: str = "auto", **options: object) -> tuple[FaissIndex, str]:
    """Bring the store's ANN index in step with the store: the rows appended since it was built
    are added to it (its graph or trained lists kept: what ``regatt sync --faiss`` does after a
    sync), or it is built (none yet, another model's, or more rows than the store). Removed rows
    stay in it and are skipped at search time (compact the store to drop them). Returns the
    index and what was done (``"added N rows"`` / ``"built"`` / ``"up to date"``)."""
    from .store import FeatureStore

    index_file, meta_file = index_paths(store_path)
    store = FeatureStore.open(store_path)
    meta = None
    if index_file.is_file() and meta_file.is_file():
        try:
            meta = json.loads(meta_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            meta = None
    usable = (
        meta is not None
        and meta.get("dim") == store.dim
        and meta.get("card_hash", store.card_hash) == store.card_hash
        and isinstance(meta.get("count"), int)
        and 0 < meta["count"] <= store.count
    )
    if not usable:
        return build_store_index(store_path, kind, **options), "built"
    import_faiss()
    ann = FaissIndex.load(index_file, store.vectors, meta_file)
    old = int(meta["count"])
    if ann.ntotal != old:
        return build_store_index(store_path, kind, **options), "built"
    if old == store.count:
        return ann, "up to date"
    ann._add_rows(store.vectors[old:])
    ann.meta["count"] = ann.ntotal
    save_index(ann, store_path, card_hash=store.card_hash)
    return ann, f"added {store.count - old} rows"


def load_store_index(store_path: str | os.PathLike) -> tuple[FaissIndex | None, str]:
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
        return None, (
            f"{index_file} covers {meta.get('count')} rows but the store now has "
            f"{store.count}: rebuild it with  regatt index ... --faiss"
        )
    if meta.get("card_hash") and meta["card_hash"] != store.card_hash:
        return None, f"{index_file} was built for another model: rebuild it"
    import_faiss()
    try:
        return FaissIndex.load(index_file, store.vectors, meta_file), ""
    except AnnError as exc:
        return None, str(exc)


def describe(ann: FaissIndex, store_path: str | os.PathLike) -> str:
    """One line: what was built, from how many rows, in how long, where it went."""
    m = ann.meta
    took = float(m.get("train_s", 0)) + float(m.get("add_s", 0))
    extra = f", trained on {m['train_rows']} rows, nprobe {m['nprobe']}" if "train_rows" in m else ""
    return (
        f"ANN index {m['kind']} ({m['factory']}) over {m['count']} rows x {m['dim']}{extra} "
        f"in {took:.1f} s: {index_paths(store_path)[0]}"
    )
