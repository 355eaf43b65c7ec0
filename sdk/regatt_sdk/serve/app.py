"""The HTTP application of ``regatt serve`` (FastAPI; ``pip install 'regatt[serve]'``).

Endpoints: ``POST /v1/encode`` and ``POST /v1/search`` (image bytes as the raw body or a
multipart ``image`` field; ``roi``, ``top``, ``qe`` as query parameters or form fields),
``POST /v1/reload``, ``GET /healthz``, ``GET /readyz``, ``GET /metrics`` (Prometheus text),
``/openapi.json``.

A request's path: the body is read up to ``max_bytes`` (413 past it), a place in the bounded
queue is taken (503 + ``Retry-After`` when full), the image is decoded and prepared in a worker
thread (the header checks of :mod:`regatt_sdk.imageio` first: 422 with the reason for a
non-image, truncated file, bomb or pixel limit), then the :class:`~.batcher.MicroBatcher` runs
it with other same-size images; the whole wait is bounded by ``timeout_s`` (503 past it).

A store that changes while the server runs (``regatt sync``, ``encode --resume``, removals,
``regatt compact``): each request first looks, at most once per ``watch_s`` (1 s), whether the
store's committed state changed (:func:`store_signature`: a few ``stat`` calls; nothing runs
between requests). When it did, a background thread loads the new state (:class:`StoreState`:
searcher, removed rows, local features, ANN index, DBA) and swaps it in with one assignment;
each request takes the state once when it starts, so requests in flight finish on the old one
and none waits for the load. A load that fails (a store made by another model, damaged,
missing) keeps the old state, logs a warning and is reported in ``/readyz`` and ``/v1/info``
(``store.reload_error``) and ``/metrics`` (``regatt_store_reloads_total{result="failed"}``);
the same on-disk state is not tried again until it changes (or ``POST /v1/reload``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.requests import Request as StarletteRequest

from ..compose import EncoderOptions, RoiError
from ..compose import parse_roi as parse_box
from ..errors import ImageError, RegattError
from ..imageio import DEFAULT_MAX_PIXELS, SERVE_MAX_DECODED_BYTES, decode_image
from ..index.pgvector import DatabaseUnavailable
from ..names import display
from ..preprocess import prepare
from .batcher import MicroBatcher, QueueFull
from .metrics import Metrics, resident_bytes

log = logging.getLogger(__name__)

#: default upload limit (bytes)
DEFAULT_MAX_BYTES = 32 * 2**20
#: the largest ``rerank`` a search may ask for (each candidate costs ~1 ms)
MAX_RERANK = 1000
#: the largest ``top`` a search may ask for
MAX_TOP = 1000
#: seconds between two looks at whether the store changed (only when requests arrive)
WATCH_INTERVAL_S = 1.0
#: loads of a store that changed again while it was being read, before the last one is kept
RELOAD_ATTEMPTS = 3
_IMAGE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            "image/*": {"schema": {"type": "string", "format": "binary"}},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["image"],
                    "properties": {
                        "image": {"type": "string", "format": "binary"},
                        "roi": {"type": "string", "description": "x1,y1,x2,y2 in original pixels"},
                        "top": {"type": "integer"},
                        "qe": {"type": "integer"},
                        "rerank": {"type": "integer", "description": "verify the top K with local features"},
                        "where": {
                            "type": "string",
                            "description": "metadata filters separated by ';', e.g. folder=trips/2024; date>=2024-01-01",
                        },
                    },
                }
            },
        },
    }
}


@dataclass(frozen=True)
class ServeConfig:
    """What ``regatt serve`` runs: the model, an optional store / database, and the limits."""

    model: Path
    store: Path | None = None
    db: str | None = None
    table: str = "regatt"
    #: the encoder (device, engine, precision, threads, max side S, memory plan); the memory plan
    #: defaults to ``arena``, which keeps RSS flat whatever the upload sizes at onnxruntime's
    #: default speed. Query scales are refused: uploads are described as the database.
    options: EncoderOptions = field(default_factory=lambda: EncoderOptions(memory="arena"))
    max_batch: int = 8
    window_ms: float = 5.0
    max_queue: int = 64
    timeout_s: float = 30.0
    max_bytes: int = DEFAULT_MAX_BYTES
    max_pixels: int = DEFAULT_MAX_PIXELS
    #: largest decoded image (bytes, from its header, before decoding): lower than batch tools'
    max_decoded_bytes: int = SERVE_MAX_DECODED_BYTES
    #: seconds a client may take between two pieces of its request body (then 408)
    body_timeout_s: float = 10.0
    decode_workers: int = 2
    dba: int = 0
    ann: bool = True
    ef_search: int | None = None
    #: connections to the ``db`` database, opened at start; as many searches run at once
    db_pool: int = 4
    #: run one batch of ``max_batch`` square images at the prepared side before ready: the
    #: engine's arena grows to the largest batch the server can run now, not mid-load
    warmup: bool = True
    retry_after_s: int = 1
    #: the folder the store's names are relative to (thumbnails are made only from files in it;
    #: default: the folder common to the names), and a ``regatt dedup`` output shown read-only
    images: Path | None = None
    dedup: Path | None = None
    #: look (at most every ``watch_s`` seconds, on a request) whether the store's committed state
    #: changed, and reload it in the background when it did (``POST /v1/reload`` works either way)
    watch: bool = True
    watch_s: float = WATCH_INTERVAL_S


def warm_up(encoder: Any, batch: int) -> float:
    """Run one batch of ``batch`` square zero images ``(batch, side, side, 3)`` uint8 at the
    encoder's prepared side (the largest input a batch of prepared photos can be) and return the
    seconds taken, so that the engine's memory arena reaches that size before the first request."""
    side = int(encoder.prepare_side)
    t = time.perf_counter()
    encoder.encode_prepared(np.zeros((max(1, batch), side, side, 3), np.uint8))
    return time.perf_counter() - t


class ApiError(Exception):
    """An HTTP error answer: ``status``, a one-line ``message``, extra ``headers``."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def parse_roi(text: str | None) -> tuple[float, float, float, float] | None:
    """``"x1,y1,x2,y2"`` -> a box (:func:`regatt_sdk.compose.parse_roi`), else :class:`ApiError` 422."""
    try:
        return parse_box(None if text is None else str(text), "roi")
    except RoiError as exc:
        raise ApiError(422, str(exc)) from None


def parse_int(text: Any, name: str, default: int, low: int, high: int) -> int:
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except (TypeError, ValueError):
        raise ApiError(422, f"{name} {text!r}: expected an integer") from None
    if not low <= value <= high:
        raise ApiError(422, f"{name} {value}: expected {low} .. {high}")
    return value


def decode_and_prepare(
    data: bytes,
    max_side: int,
    roi,
    max_pixels: int,
    max_decoded_bytes: int = SERVE_MAX_DECODED_BYTES,
    local: Any = None,
) -> tuple[np.ndarray, tuple[int, int]] | tuple[np.ndarray, tuple[int, int], Any]:
    """Upload bytes -> (prepared BGR uint8 (h, w, 3), original (width, height)); 422 on bad input.
    With ``local`` (a function of the photo cropped to ``roi``), its result is returned third."""
    try:
        bgr = decode_image(data, "upload", max_pixels=max_pixels, max_decoded_bytes=max_decoded_bytes)
        prepared = prepare(bgr, max_side, roi)
        if local is not None:
            from ..index.searcher import read_query

            return prepared, (int(bgr.shape[1]), int(bgr.shape[0])), local(read_query(bgr, roi))
        return prepared, (int(bgr.shape[1]), int(bgr.shape[0]))
    except ImageError as exc:
        raise ApiError(422, f"not a usable image: {exc.reason}") from None
    except ValueError as exc:
        raise ApiError(422, f"cannot use this image: {exc}") from None


def store_signature(path: str | os.PathLike) -> tuple:
    """What changes whenever the store at ``path`` commits: its manifest (replaced by a rename at
    every commit, so its inode, mtime and size; a compaction swaps in another directory) and the
    ANN index files beside it (``None`` for a file that is missing). A few ``stat`` calls."""
    from ..ann import index_paths
    from ..store import MANIFEST

    out: list[tuple[int, int, int] | None] = []
    for file in (Path(path) / MANIFEST, *index_paths(path)):
        try:
            st = os.stat(file)
        except OSError:
            out.append(None)
        else:
            out.append((st.st_ino, st.st_mtime_ns, st.st_size))
    return tuple(out)


def _iso(t: float | None) -> str | None:
    return None if t is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


@dataclass
class StoreState:
    """What the server searches, loaded together and swapped as one: the searcher (index with
    removed rows masked, names, local features) and what it was loaded from. A request takes the
    current one once (:meth:`Service.current`) and uses only it."""

    searcher: Any
    #: :func:`store_signature` of the store before it was read (``None`` with ``--db``)
    signature: tuple | None = None
    #: the server's count of loads: 1 at start, +1 at each reload swapped in
    generation: int = 1
    #: the store's commit counter, card hash and compaction id (``side_meta["generation"]``)
    commits: int | None = None
    card_hash: str | None = None
    compaction: str | None = None
    removed: int = 0
    local: bool = False
    loaded_at: float = field(default_factory=time.time)
    #: per-state caches (filtered indexes, thumbnails), made on first use under ``lock``
    cache: dict = field(default_factory=dict)
    filtered: dict = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def rows(self) -> int:
        return len(self.searcher.names)


class Service:
    """The loaded model, the searcher, the batcher and the metrics of one server."""

    def __init__(self, config: ServeConfig):
        self.config = config
        self.metrics = Metrics()
        self.ready = False
        self.encoder: Any = None
        #: what searches use now (None without a store or database); replaced whole by a reload
        self.state: StoreState | None = None
        self.batcher: MicroBatcher | None = None
        self.golden_diff: float | None = None
        self.loaded = False
        self.decode_pool = ThreadPoolExecutor(max(1, config.decode_workers), thread_name_prefix="regatt-decode")
        # a database answers several searches at once (one connection each); an in-memory index one
        searchers = max(1, config.db_pool) if config.db is not None else 1
        self.search_pool = ThreadPoolExecutor(searchers, thread_name_prefix="regatt-search")
        # reloading (see the module docstring): one load at a time
        self._reload_lock = threading.Lock()
        self._pending = False  # a background reload was started and has not finished
        self._checked = 0.0  # monotonic time of the last look at the store
        self._failed: tuple | None = None  # the signature whose load failed (not retried until it changes)
        self.checked_at: float | None = None
        self.reloaded_at: float | None = None
        self.reload_error: str | None = None
        self.reload_failed_at: float | None = None

    @property
    def searcher(self) -> Any:
        """The current state's searcher (``None`` without a store or database)."""
        return None if self.state is None else self.state.searcher

    def current(self) -> StoreState | None:
        """The state a request uses from start to end (a reload swaps in another for later ones)."""
        return self.state

    def load(self) -> None:
        """Open the model (golden check), the store or database, and apply DBA once."""
        from ..compose import OptionError, open_encoder

        c = self.config
        if c.options.query_scales is not None:
            raise OptionError("regatt serve describes uploads as the database: query scales are not supported")
        self.encoder = open_encoder(c.model, c.options)
        self.golden_diff = self.encoder.verify()
        self.warmup_s = warm_up(self.encoder, c.max_batch) if c.warmup else None
        if c.store is not None or c.db is not None:
            self.state = self.open_state(1)
            self.checked_at = time.time()
        self.metrics.gauge(
            "regatt_queue_depth",
            "Images admitted and not yet answered.",
            lambda: self.batcher.depth if self.batcher else 0,
        )
        self.metrics.gauge("regatt_process_resident_bytes", "Resident memory of the server process.", resident_bytes)
        self.metrics.gauge(
            "regatt_ready", "1 when the model is loaded and its golden check passed.", lambda: float(self.ready)
        )
        if c.store is not None:
            self.metrics.counter(
                "regatt_store_reloads_total", "Reloads of the store after it changed (or POST /v1/reload).",
                [(("result", "ok"),), (("result", "failed"),)],
            )  # fmt: skip
            self.metrics.gauge(
                "regatt_store_generation", "Loads of the store swapped in (1 at start).",
                lambda: float(self.state.generation if self.state else 0),
            )  # fmt: skip
            self.metrics.gauge(
                "regatt_store_rows", "Rows of the store searched now (removed ones included).",
                lambda: float(self.state.rows if self.state else 0),
            )  # fmt: skip
            self.metrics.gauge(
                "regatt_store_reload_failing", "1 when the last reload failed (the older state is served).",
                lambda: float(self.reload_error is not None),
            )  # fmt: skip
        self.loaded = True

    def open_state(self, generation: int) -> StoreState:
        """Load the store (or database) as a :class:`StoreState`: a store of another model, an
        empty or damaged one is refused with its error (at start: the CLI's one line)."""
        from ..index.searcher import Searcher

        c = self.config
        if c.store is not None:
            from ..collection import Collection

            signature = store_signature(c.store)
            collection = Collection.open(c.store, self.encoder)  # a store of another model is refused
            if len(collection) == 0:
                raise RegattError(f"feature store {c.store} is empty")
            store = collection.store
            meta = store.side_meta
            searcher = collection.searcher(ann=c.ann)
            if meta.get("local"):
                searcher.reranker().ivf  # noqa: B018 - open the local features and the inverted file now
            exclude = getattr(searcher, "exclude", None)
            state = StoreState(
                searcher, signature, generation, commits=int(store.manifest.get("commits", 0)),
                card_hash=store.card_hash, compaction=meta.get("generation"), local=bool(meta.get("local")),
                removed=0 if exclude is None else int(exclude.sum()),
            )  # fmt: skip
        else:
            searcher = Searcher.for_db(
                c.db, self.encoder, table=c.table, ef_search=c.ef_search, pool_size=max(1, c.db_pool)
            )
            state = StoreState(searcher, generation=generation)
        if c.dba > 0:
            state.searcher = self._augmented(state.searcher)
        if getattr(state.searcher.index, "dim", self.encoder.dim) != self.encoder.dim:
            raise RegattError(f"the index has {state.searcher.index.dim}-d rows, the model {self.encoder.dim}-d")
        return state

    def _augmented(self, searcher: Any) -> Any:
        """``searcher`` with database-side augmentation (``--dba K``) applied to its rows."""
        from ..expansion import DatabaseAugmentation
        from ..index.searcher import Searcher

        _, index = DatabaseAugmentation(k=self.config.dba).apply(
            np.zeros((1, self.encoder.dim), np.float32), getattr(searcher.index, "inner", searcher.index)
        )
        close = getattr(searcher.index, "close", None)
        if close is not None and index is not searcher.index:
            close()  # the augmented rows are searched in memory: no more database calls
        if getattr(searcher, "exclude", None) is not None:  # removed rows stay out
            from ..index.masked import MaskedIndex

            index = MaskedIndex(index, searcher.exclude)
        out = Searcher(index, searcher.names, self.encoder)
        out.store_path, out.exclude, out._reranker = searcher.store_path, searcher.exclude, searcher._reranker
        return out

    # ------------------------------------------------------------------ reloading

    def poll(self) -> None:
        """On a request (event loop): at most once per ``watch_s``, look whether the store's
        committed state changed; if so, start a background reload. Never waits for one."""
        c = self.config
        if not (c.watch and c.store is not None and self.ready) or self._pending:
            return
        now = time.monotonic()
        if now - self._checked < c.watch_s:
            return
        self._checked = now
        self.checked_at = time.time()
        signature = store_signature(c.store)
        if self.state is not None and signature == self.state.signature and self.reload_error is not None:
            # the store on disk is again the one served (e.g. a replaced store put back): no error
            log.warning("%s is again the store being served; the last reload's error is cleared", c.store)
            self._failed, self.reload_error, self.reload_failed_at = None, None, None
        if self.state is None or signature == self.state.signature or signature == self._failed:
            return
        self._pending = True
        try:
            threading.Thread(target=self._background, name="regatt-reload", daemon=True).start()
        except BaseException:
            self._pending = False
            raise

    def _background(self) -> None:
        try:
            self.reload("the store changed")
        finally:
            self._pending = False

    def reload(self, why: str = "requested") -> bool:
        """Load the store again and swap the new state in (requests in flight keep the old one);
        on failure keep the old state and record the error. One load at a time. True when swapped."""
        c = self.config
        if c.store is None:
            return False
        with self._reload_lock:
            old = self.state
            generation = (old.generation if old else 0) + 1
            try:
                for _ in range(RELOAD_ATTEMPTS):  # a store that changed while read: read it again
                    state = self.open_state(generation)
                    if store_signature(c.store) == state.signature:
                        break
            except Exception as exc:  # noqa: BLE001 - whatever breaks the load, the old state serves on
                self._failed = store_signature(c.store)
                self.reload_error = f"{type(exc).__name__}: {exc}" if not isinstance(exc, RegattError) else str(exc)
                self.reload_failed_at = time.time()
                self.metrics.inc("regatt_store_reloads_total", (("result", "failed"),))
                kept = f"{old.rows} rows loaded at {_iso(old.loaded_at)}" if old else "nothing"
                log.warning("reloading %s (%s) failed, still serving %s: %s", c.store, why, kept, self.reload_error)
                return False
            self.state = state  # one assignment: the next request sees the new state
            self._failed, self.reload_error, self.reload_failed_at = None, None, None
            self.reloaded_at = state.loaded_at
            self.metrics.inc("regatt_store_reloads_total", (("result", "ok"),))
            log.info("reloaded %s (%s): generation %d, %d rows (%d removed)", c.store, why, generation, state.rows,
                     state.removed)  # fmt: skip
            return True

    def store_info(self) -> dict[str, Any] | None:
        """The store part of ``/readyz`` and ``/v1/info`` (``None`` without a store)."""
        st = self.state
        if self.config.store is None or st is None:
            return None
        return {
            "path": str(self.config.store),
            "store_generation": st.generation,
            "rows": st.rows,
            "removed": st.removed,
            "commits": st.commits,
            "compaction": st.compaction,
            "loaded_at": _iso(st.loaded_at),
            "reloaded_at": _iso(self.reloaded_at),
            "checked_at": _iso(self.checked_at),
            "reload_error": self.reload_error,
            "reload_failed_at": _iso(self.reload_failed_at),
            "watch": self.config.watch,
        }

    async def start(self) -> None:
        c = self.config
        self.batcher = MicroBatcher(
            self.encoder.encode_prepared, max_batch=c.max_batch, window_s=c.window_ms / 1000.0,
            max_queue=c.max_queue, on_batch=self.metrics.batch,
        )  # fmt: skip
        self.batcher.start()
        self.ready = True

    async def stop(self) -> None:
        self.ready = False
        if self.batcher is not None:
            await self.batcher.stop()
        self.decode_pool.shutdown(wait=True)
        self.search_pool.shutdown(wait=True)
        close = getattr(getattr(self.searcher, "index", None), "close", None)
        if close is not None:
            close()

    async def describe(
        self, data: bytes, roi, *, local: bool = False, state: StoreState | None = None
    ) -> tuple[np.ndarray, tuple[int, int], tuple[int, int]]:
        """``(descriptor (D,), original (w, h), used (w, h))`` of one upload, through the queue;
        with ``local``, the upload's local features (cropped to ``roi``, by ``state``'s store,
        default the current one) are a fourth item."""
        assert self.batcher is not None
        try:
            self.batcher.admit()
        except QueueFull as exc:
            raise ApiError(
                503, f"server busy: {exc}; retry later", {"Retry-After": str(self.config.retry_after_s)}
            ) from None
        c = self.config
        st = state or self.current()
        extract = None
        if local:

            def extract(photo: np.ndarray) -> Any:
                return self.extract_local(photo, st)

        async def work():
            loop = asyncio.get_running_loop()
            out = await loop.run_in_executor(
                self.decode_pool, decode_and_prepare, data, self.encoder.prepare_side, roi, c.max_pixels,
                c.max_decoded_bytes, extract,
            )  # fmt: skip
            prepared, size = out[0], out[1]
            vec = await self.batcher.encode(prepared)
            used = (int(prepared.shape[1]), int(prepared.shape[0]))
            return (vec, size, used, out[2]) if local else (vec, size, used)

        try:
            return await asyncio.wait_for(work(), c.timeout_s)
        except asyncio.TimeoutError:
            raise ApiError(
                503, f"timed out after {c.timeout_s:g} s waiting for the encoder; retry later",
                {"Retry-After": str(c.retry_after_s)},
            ) from None  # fmt: skip
        finally:
            self.batcher.release()

    def extract_local(self, photo: np.ndarray, state: StoreState | None = None) -> Any:
        """Local features of an upload (cropped to its roi), as queries get them."""
        st = state or self.current()
        assert st is not None
        return st.searcher.reranker().describe_query(photo)

    def can_rerank(self, state: StoreState | None = None) -> None:
        """Refuse (422) re-ranking on a server whose index has no local features."""
        from ..local.storage import LocalFeaturesMissing

        st = state or self.current()
        if st is None or st.searcher.store_path is None:
            raise ApiError(422, "rerank needs a feature store with local features (regatt serve MODEL --store STORE)")
        try:
            st.searcher.reranker()
        except LocalFeaturesMissing as exc:
            why = "a store given local features is reloaded by a --watch server, or on POST /v1/reload"
            raise ApiError(422, f"rerank is not available: {exc} ({why})") from None

    def filtered(self, where: tuple[str, ...], state: StoreState | None = None) -> tuple[Any, Any]:
        """``(index, exclude)`` of ``state``'s searcher restricted to the rows ``where`` keeps
        (cached with the state)."""
        st = state or self.current()
        assert st is not None
        with st.lock:
            if where not in st.filtered:
                st.filtered[where] = self._filter(st, where)
                while len(st.filtered) > 64:
                    st.filtered.pop(next(iter(st.filtered)))
            return st.filtered[where]

    def _filter(self, st: StoreState, where: tuple[str, ...]) -> tuple[Any, Any]:
        s = st.searcher
        inner = getattr(s.index, "inner", s.index)
        if s.store_path is None:  # a database: the filters go into its SQL
            from ..filters import sql_where

            return _WhereIndex(inner, sql_where(list(where))), None
        from ..compose import open_store
        from ..filters import filter_mask
        from ..index.masked import MaskedIndex

        # rows never change between compactions: the metadata of the store on disk now holds
        # this state's rows as a prefix, unless it was compacted or replaced since
        store = open_store(s.store_path)
        if (
            store.card_hash != st.card_hash
            or store.side_meta.get("generation") != st.compaction
            or store.count < inner.size
        ):
            raise ApiError(
                503, "the store on disk is no longer the one being searched (compacted or replaced; see "
                "store.reload_error in /readyz): filters are read from it once it has been reloaded; retry",
                {"Retry-After": str(self.config.retry_after_s)},
            )  # fmt: skip
        exclude = ~filter_mask(store, list(where))[: inner.size]
        if getattr(s, "exclude", None) is not None:
            exclude |= s.exclude
        return MaskedIndex(inner, exclude), exclude

    def search(
        self, vec: np.ndarray, top: int, qe: int, rerank: int = 0, local: Any = None, where: tuple[str, ...] = (),
        state: StoreState | None = None,
    ) -> list[dict[str, Any]]:  # fmt: skip
        from ..expansion import QueryExpansion
        from ..index.searcher import Searcher

        st = state or self.current()
        assert st is not None
        s = st.searcher
        index, exclude = self.filtered(where, st) if where else (s.index, getattr(s, "exclude", None))
        # with rerank, qe counts verified hits (QE after verification; < 0: the default)
        searcher = Searcher(index, s.names, steps=[QueryExpansion(k=qe)] if qe > 0 and not rerank else [])
        searcher.exclude = exclude
        if rerank:
            searcher.store_path, searcher._reranker = s.store_path, s.reranker()
            hits = searcher.search_local(vec, local, top, rerank, qe=None if qe < 0 else qe).hits
        else:
            scores, rows = searcher.search_vectors(vec, top)
            hits = searcher.hits(scores[0], rows[0])
        out = []
        for h in hits:
            hit = {"rank": h.rank, "name": display(h.name), "score": h.score, "row": h.row}
            if rerank:
                hit["inliers"] = h.inliers
            out.append(hit)
        return out


def parse_where(text: Any) -> tuple[str, ...]:
    """The ``where`` field (filters separated by ``;``) as canonical filter texts; 422 naming a
    bad one (:mod:`regatt_sdk.filters`)."""
    from ..filters import FilterError, parse_filters

    if not text:
        return ()
    try:
        return tuple(f.text for f in parse_filters([p for p in str(text).split(";") if p.strip()]))
    except FilterError as exc:
        raise ApiError(422, str(exc)) from None


class _WhereIndex:
    """A pgvector index searched with one set of filters (the shared index is not changed)."""

    def __init__(self, index: Any, where: tuple[str, list]):
        self.index, self.where = index, where
        self.backend, self.size, self.dim = index.backend, index.size, index.dim

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self.index.search_where(queries, k, self.where)

    def vectors(self, ids: np.ndarray) -> np.ndarray:
        return self.index.vectors(ids)


#: after its first ``--body-timeout`` seconds a body must keep arriving at this average rate
#: (bytes/s), so that a client dripping a byte now and then cannot hold a connection either
MIN_BODY_RATE = 8 * 1024


async def read_body(receive, headers: dict[str, str], max_bytes: int, timeout_s: float | None = None) -> bytes:
    """The request body, refused with 413 from ``Content-Length`` or once it grows past
    ``max_bytes``, and with 408 (connection closed) when ``timeout_s`` pass between two pieces or
    the body falls behind ``timeout_s + received / MIN_BODY_RATE`` seconds in all."""
    length = headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > max_bytes:
        raise ApiError(413, f"upload of {int(length)} bytes is over the limit of {max_bytes} bytes (--max-bytes)")
    chunks: list[bytes] = []
    total = 0
    loop = asyncio.get_running_loop()
    start = loop.time()
    while True:
        wait = None
        if timeout_s is not None:
            wait = max(0.0, min(timeout_s, start + timeout_s + total / MIN_BODY_RATE - loop.time()))
        try:
            message = await asyncio.wait_for(receive(), wait)
        except asyncio.TimeoutError:
            elapsed = loop.time() - start
            raise ApiError(
                408, f"request body too slow: {total} bytes in {elapsed:.1f} s (a body may pause at most {timeout_s:g} s, "
                f"--body-timeout, and must average {MIN_BODY_RATE // 1024} KiB/s after that)", {"Connection": "close"},
            ) from None  # fmt: skip
        if message["type"] == "http.disconnect":
            raise ApiError(400, "client disconnected")
        chunk = message.get("body", b"")
        total += len(chunk)
        if total > max_bytes:
            raise ApiError(413, f"upload is over the limit of {max_bytes} bytes (--max-bytes)")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def create_app(config: ServeConfig, service: Service | None = None):
    """The FastAPI application for ``config`` (the model loads in the lifespan, before serving)."""
    from .. import __version__

    svc = service or Service(config)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        if not svc.loaded:  # run() loads before uvicorn starts, so a bad store is one line
            await asyncio.get_running_loop().run_in_executor(None, svc.load)
        await svc.start()
        yield
        await svc.stop()

    app = FastAPI(
        title="regatt", version=__version__, lifespan=lifespan,
        description="Image descriptors (Kim & Yoon, BMVC 2018) and similarity search over HTTP.",
    )  # fmt: skip
    app.state.service = svc

    @app.exception_handler(ApiError)
    async def _api_error(request, exc: ApiError):
        return JSONResponse({"error": exc.message, "status": exc.status}, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(DatabaseUnavailable)
    async def _db_down(request, exc: DatabaseUnavailable):
        headers = {"Retry-After": str(config.retry_after_s)}
        return JSONResponse({"error": f"database unavailable: {exc}; retry later", "status": 503}, 503, headers)

    @app.exception_handler(Exception)
    async def _unexpected(request, exc: Exception):
        return JSONResponse({"error": f"internal error: {type(exc).__name__}: {exc}", "status": 500}, status_code=500)

    @app.middleware("http")
    async def _measure(request, call_next):
        t = time.perf_counter()
        try:
            svc.poll()  # at most once a second: has the store changed? (reloads in the background)
        except Exception as exc:  # noqa: BLE001 - a look at the store never fails a request
            log.warning("looking for changes to %s failed: %s", config.store, exc)
        response = await call_next(request)
        route = request.scope.get("route")
        endpoint = getattr(route, "path", "other")
        svc.metrics.request(endpoint, response.status_code, time.perf_counter() - t)
        return response

    async def upload(request: Request) -> tuple[bytes, dict[str, Any]]:
        """``(image bytes, fields)`` from a raw or multipart body; query parameters are fields too."""
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in request.scope["headers"]}
        body = await read_body(request.receive, headers, config.max_bytes, config.body_timeout_s)
        fields: dict[str, Any] = dict(request.query_params)
        if headers.get("content-type", "").startswith("multipart/form-data"):
            sent = False

            async def replay():
                nonlocal sent
                if sent:
                    return {"type": "http.disconnect"}
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}

            try:
                form = await StarletteRequest(request.scope, replay).form(max_part_size=config.max_bytes)
            except Exception as exc:  # noqa: BLE001 - malformed multipart is the client's error
                raise ApiError(422, f"malformed multipart body: {exc}") from None
            image = form.get("image")
            if image is None or isinstance(image, str):
                raise ApiError(422, "multipart upload without an 'image' file field")
            data = await image.read()
            fields.update({k: v for k, v in form.items() if isinstance(v, str)})
        else:
            data = body
        if not data:
            raise ApiError(422, "empty upload: send the image bytes as the body or a multipart 'image' field")
        return data, fields

    @app.post("/v1/encode", openapi_extra=_IMAGE_BODY, summary="Descriptor of one image")
    async def encode(request: Request):
        """The image's descriptor (JSON floats, or raw little-endian float32 with
        ``Accept: application/octet-stream``), the model card hash and the image sizes."""
        data, fields = await upload(request)
        vec, size, used = await svc.describe(data, parse_roi(fields.get("roi")))
        card = str(svc.encoder.card.hash)
        if "application/octet-stream" in request.headers.get("accept", ""):
            return Response(
                np.ascontiguousarray(vec, dtype="<f4").tobytes(), media_type="application/octet-stream",
                headers={"X-Regatt-Card-Hash": card, "X-Regatt-Dim": str(vec.shape[0]),
                         "X-Regatt-Image-Size": f"{size[0]}x{size[1]}", "X-Regatt-Used-Size": f"{used[0]}x{used[1]}"},
            )  # fmt: skip
        return {"descriptor": vec.tolist(), "dim": int(vec.shape[0]), "card_hash": card,
                "image_size": list(size), "used_size": list(used)}  # fmt: skip

    @app.post("/v1/search", openapi_extra=_IMAGE_BODY, summary="Top-k matches of one image")
    async def search(request: Request):
        """Top ``top`` (default 10) names and scores from the store, FAISS index or database,
        with average query expansion over ``qe`` neighbours (default 0: off); ``rerank=K`` verifies the
        global top K and the visual-word candidates with local features (a store encoded with
        ``--local``): verified hits first, each with its ``inliers``; with ``rerank``, ``qe``
        counts verified hits only (query expansion after verification; default 1, 0: off)."""
        st = svc.current()  # this request searches this state to the end, whatever reloads meanwhile
        if st is None:
            raise ApiError(404, "this server has no database: start it with --store STORE or --db URL")
        data, fields = await upload(request)
        top = parse_int(fields.get("top"), "top", 10, 1, MAX_TOP)
        qe = parse_int(fields.get("qe"), "qe", -1, 0, 100)  # -1: not given
        rerank = parse_int(fields.get("rerank"), "rerank", 0, 0, MAX_RERANK)
        where = parse_where(fields.get("where"))
        if where:
            from ..filters import FilterError

            if st.searcher.store_path is None and not hasattr(st.searcher.index, "search_where"):
                raise ApiError(422, "where filters need a store kept by regatt sync, or its pgvector table")
            try:
                await asyncio.get_running_loop().run_in_executor(None, svc.filtered, where, st)
            except FilterError as exc:
                raise ApiError(422, str(exc)) from None
        local = None
        if rerank:
            svc.can_rerank(st)
            vec, size, used, local = await svc.describe(data, parse_roi(fields.get("roi")), local=True, state=st)
        else:
            vec, size, used = await svc.describe(data, parse_roi(fields.get("roi")))
        hits = await asyncio.get_running_loop().run_in_executor(
            svc.search_pool, svc.search, vec, top, qe, rerank, local, where, st
        )
        return {
            "hits": hits,
            "card_hash": str(svc.encoder.card.hash),
            "image_size": list(size),
            "used_size": list(used),
        }

    @app.get("/healthz", summary="Liveness")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz", summary="Model loaded and its golden check passed")
    async def readyz():
        if not svc.ready:
            return JSONResponse({"ready": False}, status_code=503)
        ping = getattr(getattr(svc.searcher, "index", None), "ping", None)
        database = None
        if ping is not None:  # a --db server is ready only while its database answers
            reason = await asyncio.get_running_loop().run_in_executor(None, ping)
            if reason is not None:
                return JSONResponse({"ready": False, "database": f"unreachable: {reason}"}, status_code=503)
            database = "ok"
        c = svc.encoder.card
        st = svc.current()
        return {
            "database": database, "store": svc.store_info(),
            "ready": True, "model": str(config.model), "card_hash": str(c.hash), "dim": c.dim,
            "max_side": svc.encoder.max_side, "prepare_side": svc.encoder.prepare_side, "providers": svc.encoder.providers, "golden_max_diff": svc.golden_diff, "warmup_s": svc.warmup_s,
            "memory": getattr(svc.encoder.engine, "memory", None),
            "index": None if st is None else {"backend": st.searcher.index.backend, "rows": st.rows},
        }  # fmt: skip

    @app.post("/v1/reload", summary="Load the store again now")
    async def reload():
        """Load the feature store again (as the server does by itself within about a second of a
        change, unless started with ``--no-watch``) and swap it in; requests in flight finish on
        the old state. 409 with the reason when it cannot be loaded (the old state is kept)."""
        if config.store is None:
            raise ApiError(404, "reload needs a feature store: this server was started without --store")
        ok = await asyncio.get_running_loop().run_in_executor(None, svc.reload, "POST /v1/reload")
        info = svc.store_info()
        if not ok:
            message = f"the store could not be loaded, the previous state is still served: {svc.reload_error}"
            return JSONResponse({"error": message, "status": 409, "store": info}, status_code=409)
        return {"reloaded": True, "store": info}

    @app.get("/metrics", summary="Prometheus metrics")
    async def metrics():
        return PlainTextResponse(svc.metrics.render(), media_type="text/plain; version=0.0.4")

    from .web import register as register_page

    register_page(app, svc, config)  # the search page, thumbnails, duplicates (serve/web.py)
    return app


def run(config: ServeConfig, host: str = "127.0.0.1", port: int = 8080, *, log_level: str = "info",
        graceful_s: float = 30.0) -> None:  # fmt: skip
    """Serve ``config`` with uvicorn until SIGINT/SIGTERM (requests in flight are finished)."""
    import uvicorn

    service = Service(config)
    # before uvicorn: a damaged store, a bad --table or an unreachable database is a RegattError
    # the CLI prints as one line (in the lifespan it was uvicorn's "Application startup failed")
    service.load()
    uvicorn.run(
        create_app(config, service), host=host, port=port, log_level=log_level, access_log=False,
        timeout_graceful_shutdown=graceful_s,
    )  # fmt: skip


__all__: Sequence[str] = ("ApiError", "ServeConfig", "Service", "create_app", "run")
