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
) -> Callable[[SourceItem], np.ndarray]:
    """The worker function: ``SourceItem`` → prepared BGR uint8 ``(h, w, 3)``."""

    def load(item: SourceItem) -> np.ndarray:
        image = read_image(item.path, max_pixels=max_pixels, min_side=min_side, upscale_small=upscale_small)
        roi = None
        if rois is not None:
            roi = rois.get(item.name, rois.get(item.path))
        try:
            return prepare(image, max_side, roi)
        except ValueError as exc:
            raise ImageError(item.path, str(exc)) from None

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
) -> EncodeReport:
    """Encode every image named by ``sources`` into the store at ``store_path``.

    ``sources`` are specs as on the command line (files, folders, ``@list``, ``-``) or
    :class:`~regatt_sdk.sources.SourceItem` s, expanded by
    :func:`regatt_sdk.sources.iter_sources` with ``extensions`` and ``list_files``. ``rois``
    maps names (or paths) to query boxes ``(x1, y1, x2, y2)`` in original pixels.

    Creates the store, or with ``resume`` continues it (refusing one made with another model or
    ``max_side``), skipping the names it already holds or lists as failed. Returns an
    :class:`EncodeReport`; per-file problems never raise, they are recorded.
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
        done = store.done_names() if resume else set()
        items = iter_sources(sources, extensions=extensions, list_files=list_files)

        def todo() -> Iterator[SourceItem]:
            for item in items:
                if item.name in done:
                    report.skipped += 1
                else:
                    yield item

        load = make_loader(
            int(getattr(encoder, "prepare_side", max_side)), max_pixels=max_pixels, min_side=min_side, upscale_small=upscale_small,
            rois=rois,
        )  # fmt: skip
        _stream(encoder, todo(), load, store, report, batch_size, workers, chunk_rows, progress)
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
) -> None:
    """The main loop: prefetch → windows → batches → commits (see the module docstring)."""
    window = 4 * batch_size
    ahead = batch_size + 2 * workers  # decoded or decoding beyond the window being gathered
    names: list[str] = []
    vectors: list[np.ndarray] = []
    failures: list[Failure] = []
    bar = _Progress(progress)

    def commit() -> None:
        block = np.stack(vectors) if vectors else np.zeros((0, store.dim), np.float32)
        store.append(names, block, failures)
        report.encoded += len(names)
        report.failed += len(failures)
        report.failures.extend(failures)
        names.clear()
        vectors.clear()
        failures.clear()

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
                        slot.image = slot.future.result()
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
            del names[mark[0] :], vectors[mark[0] :], failures[mark[1] :]
        commit()  # keep the complete windows already encoded; resume picks up after them
        raise
    finally:
        bar.close()
        for slot in queue:
            if slot.future is not None:
                slot.future.cancel()
        pool.shutdown(wait=True, cancel_futures=True)
