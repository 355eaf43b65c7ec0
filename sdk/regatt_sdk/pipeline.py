"""Encoding a collection of images into a feature store, robustly and in bounded memory.

:func:`encode_to_store` streams the sources: worker threads read, decode and resize images
(:func:`regatt_sdk.imageio.read_image`, :func:`regatt_sdk.preprocess.prepare`) a bounded number
ahead of the main thread, which runs the encoder on same-size batches and commits rows to the
:class:`~regatt_sdk.store.FeatureStore` every ``chunk_rows`` rows. Whatever the collection
size, memory holds at most ``window + batch_size + 2 * workers`` prepared images (``window =
4 * batch_size``: same-size images are grouped into batches within a window), ``workers`` full
decoded images, and ``chunk_rows + window`` descriptors.

A file that cannot be read, decoded or encoded becomes a failure record (name + reason) in the
store's ``failures.jsonl``; the run goes on. Rows and failures are committed together, at
window boundaries only, so a run resumed after a crash (``resume=True``) skips exactly the
committed names and then sees the same windows, hence the same batches and bit-identical
descriptors, as an uninterrupted run.
"""

from __future__ import annotations

import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from .errors import ImageError, RegattError
from .imageio import DEFAULT_MAX_PIXELS, DEFAULT_MIN_SIDE, read_image
from .preprocess import Box, prepare
from .sources import SourceItem, iter_sources
from .store import Failure, FeatureStore, StoreError


class EncoderLike(Protocol):
    """What the pipeline needs of :class:`regatt_sdk.encoder.Encoder`."""

    card: Any  # has .hash (str)
    dim: int
    max_side: int  # S, recorded in the store's manifest
    # optional ``prepare_side: int``: the longest side images are prepared at (default max_side)

    def encode_prepared(self, batch: np.ndarray) -> np.ndarray:
        """uint8 ``(N, h, w, 3)`` same-size prepared images → float32 ``(N, D)``."""
        ...


@dataclass
class EncodeReport:
    """Outcome of one :func:`encode_to_store` run.

    ``encoded``/``failed`` count this run's new rows and failures; ``skipped`` the inputs
    already in the store (resume); ``rows`` the store's rows afterwards.
    """

    store: str
    dim: int
    encoded: int = 0
    failed: int = 0
    skipped: int = 0
    rows: int = 0
    elapsed_s: float = 0.0
    failures: list[Failure] = field(default_factory=list)
    local_added: int = 0  # stored rows that got their local features in this run

    @property
    def ok(self) -> bool:
        """True when no input failed in this run."""
        return self.failed == 0

    @property
    def exit_code(self) -> int:
        """0 when everything was encoded, 1 when some inputs failed."""
        return 0 if self.ok else 1

    def summary(self) -> str:
        """One line: what was encoded, what failed, where it went, how fast."""
        rate = self.encoded / self.elapsed_s if self.elapsed_s > 0 else 0.0
        parts = [f"encoded {self.encoded} image{'s' if self.encoded != 1 else ''}"]
        if self.skipped:
            parts.append(f"skipped {self.skipped} already in the store")
        parts.append(f"{self.failed} failed")
        line = (
            ", ".join(parts)
            + f" in {self.elapsed_s:.1f} s ({rate:.1f} img/s); store {self.store}: "
            + f"{self.rows} rows x {self.dim}"
        )
        if self.local_added:
            line += f"; local features added to {self.local_added} stored rows"
        if self.failed:
            line += f"; failures listed in {os.path.join(self.store, 'failures.jsonl')}"
        return line


@dataclass
class Slot:
    """One input travelling through the pipeline, in source order."""

    item: SourceItem
    future: Future | None = None
    image: np.ndarray | None = None
    vector: np.ndarray | None = None
    reason: str | None = None
    local: Any = None  # LocalFeatures when local features are extracted


class _Progress:
    """Progress on stderr: a rewritten line on a terminal, a line every 30 s otherwise."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.tty = enabled and sys.stderr.isatty()
        self.start = time.monotonic()
        self.last = self.start

    def update(self, done: int, failed: int, force: bool = False) -> None:
        if not self.enabled or (force and not self.tty):
            return  # off, or a log: the caller's summary line reports the end
        now = time.monotonic()
        if not force and now - self.last < (0.5 if self.tty else 30.0):
            return
        self.last = now
        rate = done / max(now - self.start, 1e-9)
        text = f"encoded {done}, failed {failed} ({rate:.1f} img/s)"
        print(("\r" + text) if self.tty else text, end="" if self.tty else "\n",
              file=sys.stderr, flush=True)  # fmt: skip

    def close(self) -> None:
        if self.tty:
            print(file=sys.stderr, flush=True)


def short_reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def make_loader(
    max_side: int,
    *,
    max_pixels: int,
    min_side: int,
    upscale_small: bool,
    rois: Mapping[str, Box] | None,
    local: Callable[[np.ndarray], Any] | None = None,
) -> Callable[[SourceItem], np.ndarray | tuple[np.ndarray, Any]]:
    """The worker function: ``SourceItem`` → prepared BGR uint8 ``(h, w, 3)``; with ``local``
    (a function of the decoded photo, cropped to its roi), ``(prepared, local(photo))``."""

    def load(item: SourceItem) -> np.ndarray | tuple[np.ndarray, Any]:
        image = read_image(item.path, max_pixels=max_pixels, min_side=min_side, upscale_small=upscale_small)
        roi = None
        if rois is not None:
            roi = rois.get(item.name, rois.get(item.path))
        try:
            prepared = prepare(image, max_side, roi)
        except ValueError as exc:
            raise ImageError(item.path, str(exc)) from None
        if local is None:
            return prepared
        if roi is not None:
            x1, y1, x2, y2 = (int(round(v)) for v in roi)
            image = image[max(0, y1) : max(0, y2), max(0, x1) : max(0, x2)]
        return prepared, local(image)

    return load


def encode_window(encoder: EncoderLike, slots: list[Slot], batch_size: int) -> None:
    """Fill ``slot.vector`` (or ``slot.reason``) for every decoded slot of one window.

    Same-size images are batched together in source order; a batch that raises is retried one
    image at a time so that only the offending image fails.
    """
    groups: dict[tuple[int, ...], list[Slot]] = {}
    for slot in slots:
        if slot.image is not None:
            groups.setdefault(slot.image.shape, []).append(slot)
    dim = int(encoder.dim)
    for group in groups.values():
        for start in range(0, len(group), batch_size):
            batch = group[start : start + batch_size]
            try:
                out = _run(encoder, [s.image for s in batch], dim)
            except Exception:  # noqa: BLE001 - isolate the failing image below
                out = None
            if out is not None:
                for slot, vec in zip(batch, out):
                    slot.vector = vec
            else:
                for slot in batch:
                    try:
                        slot.vector = _run(encoder, [slot.image], dim)[0]
                    except Exception as exc:  # noqa: BLE001 - per-file failure, run goes on
                        slot.reason = f"encoder failed: {short_reason(exc)}"
            for slot in batch:
                slot.image = None  # free the pixels as soon as possible


def _run(encoder: EncoderLike, images: list[np.ndarray], dim: int) -> np.ndarray:
    out = np.asarray(encoder.encode_prepared(np.stack(images)))
    if out.shape != (len(images), dim):
        raise RuntimeError(f"encoder returned shape {out.shape}, expected ({len(images)}, {dim})")
    out = out.astype(np.float32, copy=False)
    if not np.all(np.isfinite(out)):
        raise FloatingPointError("encoder returned non-finite values")
    return out


def model_info(encoder: EncoderLike, max_side: int) -> dict:
    card = encoder.card
    info = {"card_hash": str(card.hash), "max_side": int(max_side)}
    for key in ("backbone", "preset", "precision", "whitening"):
        value = getattr(card, key, None)
        if isinstance(value, str):
            info[key] = value
    return info


def encode_to_store(
    encoder: EncoderLike,
    sources: Iterable[str | os.PathLike | SourceItem],
    store_path: str | os.PathLike,
    *,
    resume: bool = False,
    batch_size: int = 8,
    workers: int = 2,
    progress: bool = True,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    chunk_rows: int = 256,
    rois: Mapping[str, Box] | None = None,
    min_side: int = DEFAULT_MIN_SIDE,
    upscale_small: bool = False,
    extensions: str | Iterable[str] | None = None,
    list_files: Iterable[str | os.PathLike] = (),
    local: bool | Any | None = None,
    skip: set[str] | None = None,
    row_side: Callable[[FeatureStore, list[str]], tuple[dict, dict]] | None = None,
) -> EncodeReport:
    """Encode every image named by ``sources`` into the store at ``store_path``.

    ``local``: also store local features (:mod:`regatt_sdk.local`) for the second stage of
    retrieval: ``True`` (default settings) or a :class:`~regatt_sdk.local.LocalConfig`; rows
    already in the store without them get them first (their images are read again from
    ``sources``). ``None`` (default): as the store does (on when it holds local features).
    ``False`` on a store that holds them is refused (its rows must all have them).

    ``sources`` are specs as on the command line (files, folders, ``@list``, ``-``) or
    :class:`~regatt_sdk.sources.SourceItem` s, expanded by
    :func:`regatt_sdk.sources.iter_sources` with ``extensions`` and ``list_files``. ``rois``
    maps names (or paths) to query boxes ``(x1, y1, x2, y2)`` in original pixels.

    Creates the store, or with ``resume`` continues it (refusing one made with another model or
    ``max_side``), skipping the names it already holds or lists as failed (``skip``: these names
    instead). ``row_side(store, names) -> (side, side_meta)``: more side-file bytes committed
    with each chunk of new rows (:mod:`regatt_sdk.sync`: their metadata, the tombstones of the
    rows they replace). Returns an :class:`EncodeReport`; per-file problems never raise, they
    are recorded.
    """
    if batch_size < 1 or workers < 1 or chunk_rows < 1:
        raise RegattError("batch size, workers and chunk rows must be at least 1")
    if max_pixels < 1 or min_side < 1:
        raise RegattError("max pixels and min side must be at least 1")
    start = time.monotonic()
    max_side = int(encoder.max_side)
    dim = int(encoder.dim)
    model = model_info(encoder, max_side)
    store = FeatureStore.open_for_append(
        store_path, card_hash=str(encoder.card.hash), dim=dim, resume=resume, model=model
    )
    try:
        stored_side = store.manifest.get("model", {}).get("max_side")
        if stored_side is not None and int(stored_side) != max_side:
            raise StoreError(
                f"{store_path} was encoded with max side {stored_side}, not {max_side}; "
                "use the same --max-side or a new output path"
            )
        report = EncodeReport(store=os.fspath(store_path), dim=dim)
        extractor = _local_extractor(store, local)
        if extractor is not None:
            report.local_added = _backfill_local(store, extractor, iter_sources(sources, extensions=extensions, list_files=list_files),
                            rois, workers, chunk_rows, max_pixels, min_side, upscale_small)  # fmt: skip
        done = (store.done_names() if resume else set()) if skip is None else skip
        if skip is None and resume and store.side_meta.get("deleted"):  # a removed photo is not done
            from .tombstones import live_rows

            done = set(live_rows(store)) | {f.name for f in store.failures}
        items = iter_sources(sources, extensions=extensions, list_files=list_files)

        def todo() -> Iterator[SourceItem]:
            for item in items:
                if item.name in done:
                    report.skipped += 1
                else:
                    yield item

        load = make_loader(
            int(getattr(encoder, "prepare_side", max_side)), max_pixels=max_pixels, min_side=min_side, upscale_small=upscale_small,
            rois=rois, local=extractor.extract if extractor else None,
        )  # fmt: skip
        _stream(encoder, todo(), load, store, report, batch_size, workers, chunk_rows, progress, extractor, row_side)
        report.rows = store.count
        report.elapsed_s = time.monotonic() - start
        return report
    finally:
        store.close()


def _stream(
    encoder: EncoderLike,
    items: Iterator[SourceItem],
    load: Callable[[SourceItem], np.ndarray],
    store: FeatureStore,
    report: EncodeReport,
    batch_size: int,
    workers: int,
    chunk_rows: int,
    progress: bool,
    extractor: _LocalExtractor | None = None,
    row_side: Callable[[FeatureStore, list[str]], tuple[dict, dict]] | None = None,
) -> None:
    """The main loop: prefetch → windows → batches → commits (see the module docstring)."""
    window = 4 * batch_size
    ahead = batch_size + 2 * workers  # decoded or decoding beyond the window being gathered
    names: list[str] = []
    vectors: list[np.ndarray] = []
    failures: list[Failure] = []
    locals_: list[Any] = []
    bar = _Progress(progress)

    def commit() -> None:
        block = np.stack(vectors) if vectors else np.zeros((0, store.dim), np.float32)
        side, meta = extractor.side(store, locals_) if extractor and names else (None, None)
        if row_side is not None and names:
            more, more_meta = row_side(store, list(names))
            side, meta = {**(side or {}), **more}, {**(meta or {}), **more_meta}
        store.append(names, block, failures, side=side, side_meta=meta)
        report.encoded += len(names)
        report.failed += len(failures)
        report.failures.extend(failures)
        names.clear()
        vectors.clear()
        failures.clear()
        locals_.clear()

    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="regatt-decode")
    queue: deque[Slot] = deque()
    exhausted = False
    mark: tuple[int, int] | None = None

    def refill() -> None:
        nonlocal exhausted
        while not exhausted and len(queue) < ahead:
            item = next(items, None)
            if item is None:
                exhausted = True
                break
            slot = Slot(item)
            if item.error is None:
                slot.future = pool.submit(load, item)
            else:
                slot.reason = item.error
            queue.append(slot)

    try:
        while True:
            refill()
            if not queue:
                break
            slots: list[Slot] = []
            while queue and len(slots) < window:
                slot = queue.popleft()
                if slot.future is not None:
                    try:
                        result = slot.future.result()
                        if isinstance(result, tuple):
                            slot.image, slot.local = result
                        else:
                            slot.image = result
                    except ImageError as exc:
                        slot.reason = exc.reason
                    except Exception as exc:  # noqa: BLE001 - per-file failure, run goes on
                        slot.reason = f"could not load it: {short_reason(exc)}"
                    slot.future = None
                slots.append(slot)
                refill()
            encode_window(encoder, slots, batch_size)
            mark = (len(names), len(failures))  # an interrupt here must not split a window
            for slot in slots:
                if slot.vector is not None:
                    names.append(slot.item.name)
                    vectors.append(slot.vector)
                    if extractor is not None:
                        locals_.append(slot.local)
                else:
                    failures.append(Failure(slot.item.name, slot.reason or "unknown failure"))
            mark = None
            if len(names) >= chunk_rows or len(failures) >= chunk_rows:
                commit()
            bar.update(report.encoded + len(names), report.failed + len(failures))
        commit()
        bar.update(report.encoded, report.failed, force=True)
    except KeyboardInterrupt:
        if mark is not None:  # drop the half-recorded window
            del names[mark[0] :], vectors[mark[0] :], failures[mark[1] :], locals_[mark[0] :]
        commit()  # keep the complete windows already encoded; resume picks up after them
        raise
    finally:
        bar.close()
        for slot in queue:
            if slot.future is not None:
                slot.future.cancel()
        pool.shutdown(wait=True, cancel_futures=True)


class _LocalExtractor:
    """Local features for the store's side files: one config and codebook for a whole run."""

    def __init__(self, config: Any):
        from .local.codec import load_codebook

        self.config = config
        self.book = load_codebook()

    def extract(self, image: np.ndarray) -> Any:
        from .local.extract import extract

        return extract(image, self.config, self.book)

    def side(self, store: FeatureStore, features: list[Any]) -> tuple[dict[str, bytes], dict]:
        from .local.storage import META, meta_after, pack

        start = int((store.side_meta.get(META) or {}).get("keypoints", 0))
        return pack(features, start), meta_after(store, features, self.config, self.book)


def _local_extractor(store: FeatureStore, local: bool | Any | None) -> _LocalExtractor | None:
    """The run's local-feature extractor, or None (see ``encode_to_store``'s ``local``)."""
    from .local.extract import LocalConfig
    from .local.storage import META, check_compatible

    meta = store.side_meta.get(META)
    if local is None:
        if not meta:
            return None
        config = LocalConfig.from_json(meta["config"])
    elif local is False:
        if meta:
            raise StoreError(
                f"{store.path} keeps local features for every row; encode into it with them (drop --no-local)"
            )
        return None
    else:
        config = local if isinstance(local, LocalConfig) else (
            LocalConfig.from_json(meta["config"]) if meta else LocalConfig())  # fmt: skip
    extractor = _LocalExtractor(config)
    check_compatible(store, config, extractor.book)
    return extractor


def _backfill_local(
    store: FeatureStore,
    extractor: _LocalExtractor,
    items: Iterable[SourceItem],
    rois: Mapping[str, Box] | None,
    workers: int,
    chunk_rows: int,
    max_pixels: int,
    min_side: int,
    upscale_small: bool,
) -> int:
    """Add local features to the rows that lack them (a store encoded before ``--local``),
    reading their images again from ``items``; returns how many rows got them. A row whose
    image cannot be read again is refused with its name (the rows must stay aligned)."""
    from .local.storage import META

    have = int((store.side_meta.get(META) or {}).get("count", 0))
    if have >= store.count:
        return 0
    names = store.names[have:]
    wanted = {n: i for i, n in enumerate(names)}
    paths: list[str | None] = [None] * len(names)
    for item in items:
        i = wanted.get(item.name)
        if i is not None and item.error is None:
            paths[i] = item.path
    from .tombstones import deleted_rows

    removed = set((deleted_rows(store) - have).tolist())  # their photos may be gone: no features
    missing = [n for k, (n, p) in enumerate(zip(names, paths)) if p is None and k not in removed]
    if missing:
        raise StoreError(
            f"{len(missing)} stored row(s) need local features but their images are not among the sources "
            f"(first: {missing[0]}); give the same sources as when they were encoded"
        )

    def load(i: int) -> Any:
        if i in removed:  # a removed row keeps its place in the side files, with no keypoints
            from .local.extract import LocalFeatures

            dims = extractor.book.dims
            return LocalFeatures(np.zeros((0, 4), np.float32), np.zeros((0, dims), np.int8),
                                 np.zeros(0, np.uint16), 1.0, 0, 0)  # fmt: skip
        image = read_image(paths[i], max_pixels=max_pixels, min_side=min_side, upscale_small=upscale_small)
        roi = rois.get(names[i], rois.get(paths[i])) if rois else None
        if roi is not None:
            x1, y1, x2, y2 = (int(round(v)) for v in roi)
            image = image[max(0, y1) : max(0, y2), max(0, x1) : max(0, x2)]
        return extractor.extract(image)

    done = 0
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="regatt-local") as pool:
        for start in range(0, len(names), chunk_rows):
            try:
                feats = list(pool.map(load, range(start, min(start + chunk_rows, len(names)))))
            except ImageError as exc:
                raise StoreError(
                    f"{exc.path}: {exc.reason}; a stored row needs its image to get local features"
                ) from None
            side, meta = extractor.side(store, feats)
            store.append([], np.zeros((0, store.dim), np.float32), side=side, side_meta=meta)
            done += len(feats)
    return done
