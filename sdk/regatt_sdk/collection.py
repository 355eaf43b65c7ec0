"""A collection: a feature store of images and the model that describes them, searched and
deduplicated from Python with no other plumbing.

    from regatt_sdk import Collection

    col = Collection.create("photos.store", "model.onnx")       # or Collection.open(path, model)
    report = col.add(["photos/"])                                # crash-safe; rerun to resume
    for hit in col.search("query.jpg", top=5, roi=(10, 20, 300, 400)):
        print(hit.rank, hit.score, hit.name)
    dups = col.duplicates(threshold=0.9)                         # groups + keep/remove
    col.vectors, col.names, len(col)

The store is :mod:`regatt_sdk.store` (written through :func:`regatt_sdk.pipeline.encode_to_store`:
append-only, committed in windows, resumable); searches go through
:class:`regatt_sdk.index.searcher.Searcher` over the store's FAISS ANN index when it has a
usable one (``regatt index --faiss``; FAISS installed), else exact search. A model and a store go
together by one rule (:func:`regatt_sdk.compose.check_compatible`): the store's card hash is the
model's (or the model's hash from before tool versions left it).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .compose import EncoderOptions, Roi, check_compatible, encoder_for_store, open_encoder, open_store, parse_roi
from .errors import RegattError

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from .dedup.run import DuplicateReport
    from .encoder import Encoder
    from .index.searcher import Hit, Searcher, SearchResult
    from .pipeline import EncodeReport
    from .store import FeatureStore


class CollectionError(RegattError):
    """A collection operation that cannot run as asked (no model to encode with, a feature not
    available yet...)."""


class Collection:
    """A feature store at ``path`` and (optionally) the :class:`~regatt_sdk.encoder.Encoder` of
    the model that made it. Make one with :meth:`create` or :meth:`open`.

    Backends: searches run on the store's FAISS ANN index when it has a usable one, else exactly
    over the store; with ``db`` (a PostgreSQL URL, ``pip install 'regatt[postgres]'``) on the
    pgvector ``table`` there, which :meth:`add` keeps in step with the store (only the rows the
    table lacks are copied; a table of another model is refused)."""

    def __init__(
        self,
        path: str | os.PathLike,
        encoder: Encoder | None = None,
        *,
        db: str | None = None,
        table: str = "regatt",
    ):
        self.path = Path(path)
        self.encoder = encoder
        self.db = db
        self.table = table
        self._searchers: dict[tuple, Searcher] = {}
        self._store: FeatureStore | None = None
        self._store = open_store(self.path, encoder, allow_empty=True)

    # -- making one --------------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        path: str | os.PathLike,
        model: str | os.PathLike | Encoder,
        options: EncoderOptions | None = None,
        *,
        local: bool | Any = False,
        db: str | None = None,
        table: str = "regatt",
    ) -> Collection:
        """A new, empty collection at ``path`` (a new or empty directory) for ``model`` (an
        ``.onnx`` file opened with ``options``, or an open encoder). ``local``: keep local
        features of every image (``True`` or a :class:`~regatt_sdk.local.LocalConfig`), for
        ``search(..., rerank=K)``. ``db`` / ``table``: search a pgvector table (see the class)."""
        from .pipeline import model_info
        from .store import FeatureStore

        encoder = _encoder(model, options)
        store = FeatureStore.create(
            path, card_hash=str(encoder.card.hash), dim=int(encoder.dim), model=model_info(encoder, encoder.max_side)
        )
        try:
            if local:
                from .local.storage import start_local

                start_local(store, None if local is True else local)
        finally:
            store.close()
        return cls(path, encoder, db=db, table=table)

    @classmethod
    def open(
        cls,
        path: str | os.PathLike,
        model: str | os.PathLike | Encoder | None = None,
        options: EncoderOptions | None = None,
        *,
        db: str | None = None,
        table: str = "regatt",
    ) -> Collection:
        """The collection at ``path``; with ``model`` (needed to add images or search by
        image) checked to be the model that made it (:class:`~regatt_sdk.store.StoreError`).
        ``db`` / ``table``: search a pgvector table (see the class)."""
        if model is None:
            if options is not None:
                raise CollectionError("encoder options need a model: Collection.open(path, model, options)")
            return cls(path, db=db, table=table)
        from .card import read_card

        if not isinstance(model, (str, os.PathLike)):
            return cls(path, _encoder(model, options), db=db, table=table)
        store = open_store(path, allow_empty=True)  # refuse a foreign store before opening the model
        check_compatible(read_card(model), store.card_hash, store.dim, f"feature store {path}", model)
        return cls(path, _encoder(model, options), db=db, table=table)

    # -- reading -----------------------------------------------------------------------------
    @property
    def store(self) -> FeatureStore:
        """The store, read-only, as last committed when opened or after the last :meth:`add`."""
        assert self._store is not None
        return self._store

    @property
    def card_hash(self) -> str:
        return self.store.card_hash

    @property
    def dim(self) -> int:
        return self.store.dim

    @property
    def vectors(self) -> np.ndarray:
        """The descriptors ``(N, D)`` float32 (memory-mapped, read-only)."""
        return self.store.vectors

    @property
    def names(self) -> list[str]:
        """The name of each row, in row order."""
        return self.store.names

    def __len__(self) -> int:
        return self.store.count

    def __repr__(self) -> str:
        model = f", model={str(self.encoder.model_path)!r}" if self.encoder is not None else ""
        return f"Collection({str(self.path)!r}, rows={len(self)}, dim={self.dim}{model})"

    # -- writing -----------------------------------------------------------------------------
    def add(
        self, sources: str | os.PathLike | Iterable[Any], *, local: bool | None = None, **options: Any
    ) -> EncodeReport:
        """Encode the images ``sources`` names (files, folders, ``@list`` files; a string or a
        list) into the collection, skipping names it already holds: crash-safe (rows are
        committed in windows) and resumable (call again after an interruption). ``options``: as
        :func:`regatt_sdk.pipeline.encode_to_store` (``batch_size``, ``workers``, ``progress``
        (default off here), ``max_pixels``, ``min_side``, ``upscale_small``, ``extensions``,
        ``list_files``, ``rois``, ``chunk_rows``). ``local``: ``None`` keeps local features when
        the collection has them; ``True`` adds them (and to the rows that lack them, reading
        their images again from ``sources``). Returns the
        :class:`~regatt_sdk.pipeline.EncodeReport`."""
        from .pipeline import encode_to_store

        if "resume" in options:
            raise CollectionError("add() always resumes: it skips the names the collection holds")
        encoder = self._need_encoder("add images")
        if isinstance(sources, (str, os.PathLike)):
            sources = [sources]
        options.setdefault("progress", False)
        self._close()
        try:
            report = encode_to_store(
                encoder_for_store(encoder, self.path), list(sources), self.path, resume=True, local=local, **options
            )
            log.info("%s", report.summary())
        finally:
            self._store = open_store(self.path, encoder, allow_empty=True)
        if self.db is not None:
            self.sync()
        return report

    def sync(self, sources: str | os.PathLike | Iterable[Any] | None = None, *, local: bool | None = None,
             **options: Any) -> Any:  # fmt: skip
        """With ``sources`` (folders, files, ``@list`` files): bring the collection in step with
        them (:func:`regatt_sdk.sync.sync`: new and changed photos encoded, removed ones
        tombstoned, metadata recorded; idempotent, crash-safe), then the ``db`` table if any;
        returns the :class:`~regatt_sdk.sync.SyncReport`. ``options``: ``extensions``,
        ``list_files``, ``batch_size``, ``workers``, ``chunk_rows``, ``progress``, ...

        Without ``sources``: copy the store's rows that the ``db`` table lacks into it and delete
        the removed ones (idempotent; the table made if missing, refused if another model's);
        :meth:`add` calls it. Returns what was done (:func:`regatt_sdk.index.pgvector.load_store`)."""
        from .index.pgvector import load_store, redact

        if sources is not None:
            from .sync import sync as sync_folders

            encoder = self._need_encoder("sync photos")
            if isinstance(sources, (str, os.PathLike)):
                sources = [sources]
            self._close()
            try:
                report = sync_folders(encoder_for_store(encoder, self.path), list(sources), self.path,
                                      local=local, **options)  # fmt: skip
                log.info("%s", report.summary())
            finally:
                self._store = open_store(self.path, encoder, allow_empty=True)
            if self.db is not None:
                self.sync()
            return report
        if self.db is None:
            raise CollectionError("this collection has no database: open it with db=URL")
        self._close_searchers()
        done = load_store(self.path, self.db, table=self.table)
        log.info("%s table %s: %d rows added, %d in all", redact(self.db), self.table, done["added"], done["rows"])
        return done

    # -- searching ---------------------------------------------------------------------------
    def searcher(
        self,
        *,
        qe: int = 0,
        backend: str = "exact",
        ann: bool = True,
        nprobe: int | None = None,
        ef_search: int | None = None,
        filters: Any = None,
    ) -> Searcher:
        """The :class:`~regatt_sdk.index.searcher.Searcher` over this collection (cached per
        arguments until the next :meth:`add`): with ``db``, the pgvector table (``ef_search``
        HNSW candidates); else the store's ANN index when it has a usable one (``ann``; a stale
        one is skipped with a ``RuntimeWarning``), else a ``backend`` index; ``qe``: average
        query expansion over the top ``qe`` (0: off); ``filters``: only rows whose photo
        metadata they keep (:mod:`regatt_sdk.filters`: ``["folder=trips", "date>=2024-01-01"]``
        or ``{"camera": "Canon EOS R6"}``). Removed rows are never returned."""
        from .expansion import QueryExpansion
        from .index.searcher import Searcher

        if len(self) == 0:
            raise CollectionError(f"collection {self.path} is empty: add images first")
        if self.db is not None and (backend != "exact" or nprobe is not None):
            raise CollectionError("backend and nprobe choose a store index: a collection with db= searches its table")
        if self.db is None and ef_search is not None:
            raise CollectionError("ef_search is for a pgvector table: open the collection with db=URL")
        from .filters import parse_filters

        where = tuple(f.text for f in parse_filters(filters))
        key = (int(qe), backend, bool(ann), nprobe, ef_search, where)
        if key not in self._searchers:
            steps = [QueryExpansion(k=qe)] if qe > 0 else []
            if self.db is not None:
                self._searchers[key] = Searcher.for_db(
                    self.db, self.encoder, table=self.table, ef_search=ef_search, steps=steps, filters=list(where)
                )
            else:
                self._searchers[key] = Searcher.for_store(
                    self.path, self.encoder, backend=backend, ann=ann, nprobe=nprobe, steps=steps, filters=list(where)
                )
            index = self._searchers[key].index
            log.debug("%s: %s index over %d rows", self.path, type(index).__name__, len(self))
        return self._searchers[key]

    def search(
        self,
        image: str | os.PathLike | np.ndarray,
        top: int = 10,
        roi: Roi | str | None = None,
        qe: int | None = None,
        *,
        rerank: int = 0,
        backend: str = "exact",
        ann: bool = True,
        nprobe: int | None = None,
        filters: Any = None,
    ) -> list[Hit]:
        """The ``top`` rows most similar to ``image`` (a path or a BGR uint8 array), cropped to
        ``roi`` (``(x1, y1, x2, y2)`` or ``"x1,y1,x2,y2"`` in original pixels) before it is
        described, as :class:`~regatt_sdk.index.searcher.Hit` s (rank, name, score, row).
        ``rerank=K``: verify the global top ``K`` and the visual-word candidates with local
        features and geometry (needs a collection with local features); hits then carry
        ``inliers``. ``qe``: average query expansion over the top ``qe`` (default off); with
        ``rerank``, over the best ``qe`` *verified* hits only (default 1, chosen on val; 0: off). ``filters``: only photos whose metadata they keep (see :meth:`searcher`);
        exact search returns the true filtered top ``top``."""
        return self.search_full(
            image, top, roi, qe, rerank=rerank, backend=backend, ann=ann, nprobe=nprobe, filters=filters
        ).hits

    def search_full(
        self,
        image: str | os.PathLike | np.ndarray,
        top: int = 10,
        roi: Roi | str | None = None,
        qe: int | None = None,
        *,
        rerank: int = 0,
        backend: str = "exact",
        ann: bool = True,
        nprobe: int | None = None,
        filters: Any = None,
    ) -> SearchResult:
        """:meth:`search` with what the second stage found: the query's local features and each
        verified hit's matches and geometry (what ``regatt search --show`` draws)."""
        self._need_encoder("search by image")
        box = parse_roi(roi, "roi") if isinstance(roi, str) else roi
        query = os.fspath(image) if isinstance(image, os.PathLike) else image
        if rerank:  # query expansion after verification only
            searcher = self.searcher(backend=backend, ann=ann, nprobe=nprobe, filters=filters)
            return searcher.search_full(query, roi=box, top=top, rerank=rerank, qe=qe)
        searcher = self.searcher(qe=qe or 0, backend=backend, ann=ann, nprobe=nprobe, filters=filters)
        return searcher.search_full(query, roi=box, top=top)

    def search_vectors(
        self, queries: np.ndarray, top: int = 10, qe: int = 0, *, filters: Any = None
    ) -> list[list[Hit]]:
        """The ``top`` hits of each query descriptor (``(D,)`` or ``(Q, D)``): one list per query."""
        s = self.searcher(qe=qe, filters=filters)
        q = np.asarray(queries, np.float32)
        if q.ndim == 1:
            q = q[None]
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise CollectionError(f"queries of shape {np.shape(queries)}: expected (D,) or (Q, D) with D = {self.dim}")
        scores, rows = s.search_vectors(q, top)
        return [s.hits(scores[k], rows[k]) for k in range(len(q))]

    def duplicates(
        self,
        threshold: float | None = None,
        *,
        preset: str | None = None,
        group: str = "components",
        keep: str = "largest",
        images: str | os.PathLike | None = None,
        backend: str = "auto",
    ) -> DuplicateReport:
        """Groups of duplicates among the rows and what to keep in each
        (:func:`regatt_sdk.dedup.run.find_duplicates`): ``threshold`` alone groups by descriptor
        cosine; ``preset`` ``exact`` | ``near`` (the copy check: needs the model (any export)
        and the files: names are paths or relative to ``images``; uses the collection's local
        features when it keeps them, else extracts them from the files) | ``scene``.
        Neither: the ``near`` preset. Never moves or deletes anything."""
        from .dedup.run import find_duplicates

        if len(self) == 0:
            raise CollectionError(f"collection {self.path} is empty: add images first")
        from .tombstones import deleted_mask

        removed = deleted_mask(self.store)
        vectors = self.vectors
        if removed is not None and removed.any():
            vectors = np.array(vectors)
            vectors[removed] = 0.0  # a removed row pairs with nothing by cosine
            if backend == "index":
                backend = "auto"  # the ANN index still holds removed rows' vectors
        report = find_duplicates(
            vectors,
            self.names,
            encoder=self.encoder,
            preset=preset,
            threshold=threshold,
            group=group,
            keep=keep,
            images=images,
            backend=backend,
            index=lambda: self.searcher().index,
            store=self.store,
        )
        return report if removed is None or not removed.any() else _without_rows(report, removed)

    def duplicates_of(
        self,
        sources: str | os.PathLike | Iterable[str],
        *,
        preset: str | None = None,
        threshold: float | None = None,
        top: int = 10,
        images: str | os.PathLike | None = None,
    ) -> Any:
        """Duplicates in this collection of the new photos ``sources`` names, without changing
        or re-grouping it (:func:`regatt_sdk.dedup.against.find_in_collection`: ``preset``
        ``exact`` | ``near`` (default; the copy check) | ``scene``, or ``threshold`` alone on
        descriptor cosine; ``top`` candidates per photo). Returns an
        :class:`~regatt_sdk.dedup.against.AgainstReport`."""
        from .dedup.against import find_in_collection

        if len(self) == 0:
            raise CollectionError(f"collection {self.path} is empty: add images first")
        if isinstance(sources, (str, os.PathLike)):
            sources = [sources]
        return find_in_collection(self, [os.fspath(s) for s in sources], preset=preset, threshold=threshold,
                                  top=top, images=None if images is None else os.fspath(images))  # fmt: skip

    # -- helpers -----------------------------------------------------------------------------
    def _need_encoder(self, what: str) -> Encoder:
        if self.encoder is None:
            raise CollectionError(
                f"to {what}, open the collection with its model: Collection.open({str(self.path)!r}, model)"
            )
        return self.encoder

    def _close_searchers(self) -> None:
        for searcher in self._searchers.values():
            close = getattr(searcher.index, "close", None)  # a database index holds connections
            if close is not None:
                close()
        self._searchers.clear()

    def close(self) -> None:
        """Release the database connections of cached searchers (the store needs none)."""
        self._close_searchers()

    def _close(self) -> None:
        self._close_searchers()
        if self._store is not None:
            self._store.close()
            self._store = None


def _without_rows(report: DuplicateReport, removed: np.ndarray) -> DuplicateReport:
    """``report`` without the members ``removed`` (N,) bool marks (a changed photo's old row can
    still match its file by hash): groups left with one member are dropped, groups renumbered,
    and a group whose kept member was removed keeps its first remaining one."""
    from dataclasses import replace

    groups: dict[int, list] = {}
    for r in report.rows:
        if not removed[r.member]:
            groups.setdefault(r.group, []).append(r)
    rows = []
    for number, members in enumerate((m for m in groups.values() if len(m) > 1), start=1):
        has_keep = any(m.action == "keep" for m in members)
        for k, m in enumerate(members):
            action = m.action if has_keep else ("keep" if k == 0 else "remove")
            rows.append(replace(m, group=number, action=action))
    return replace(report, rows=rows)


def _encoder(model: str | os.PathLike | Encoder, options: EncoderOptions | None) -> Encoder:
    if isinstance(model, (str, os.PathLike)):
        return open_encoder(model, options)
    if options is not None:
        raise CollectionError("options apply to a model file: pass the .onnx path, or an encoder without options")
    return model
