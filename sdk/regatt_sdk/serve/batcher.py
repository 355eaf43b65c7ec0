"""Micro-batching: prepared images of the same size that arrive within a short window run as
one inference batch, on one inference thread, off the event loop.

Admission is bounded: :meth:`MicroBatcher.submit` raises :class:`QueueFull` when ``max_queue``
images are already waiting or running (the server answers 503 + Retry-After). Items whose
caller gave up (timeout, disconnect) are dropped before they reach the engine.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np


class QueueFull(Exception):
    """``max_queue`` images are already admitted."""


@dataclass(eq=False)
class _Item:
    image: np.ndarray  # (h, w, 3) uint8, prepared
    future: asyncio.Future
    arrived: float = field(default_factory=time.monotonic)


class MicroBatcher:
    """``MicroBatcher(run, max_batch=8, window_s=0.005, max_queue=64)``.

    ``run(batch (N, h, w, 3) uint8) -> (N, D) float32`` is called on one dedicated thread.
    ``on_batch(size, seconds)`` (optional) is told about every batch run.
    """

    def __init__(
        self,
        run: Callable[[np.ndarray], np.ndarray],
        *,
        max_batch: int = 8,
        window_s: float = 0.005,
        max_queue: int = 64,
        on_batch: Callable[[int, float], None] | None = None,
    ):
        self.run = run
        self.max_batch = max(1, int(max_batch))
        self.window_s = float(window_s)
        self.max_queue = max(1, int(max_queue))
        self.on_batch = on_batch
        self.admitted = 0
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._pending: list[_Item] = []
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="regatt-infer")
        self._task: asyncio.Task | None = None

    @property
    def depth(self) -> int:
        """Images admitted and not yet answered (waiting or running)."""
        return self.admitted

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        """Stop after the images already admitted have been answered."""
        while self.admitted:
            await asyncio.sleep(0.01)
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._executor.shutdown(wait=True)

    def admit(self) -> None:
        """Reserve a place (raise :class:`QueueFull`); pair with :meth:`release`."""
        if self.admitted >= self.max_queue:
            raise QueueFull(f"{self.admitted} images queued (limit {self.max_queue})")
        self.admitted += 1

    def release(self) -> None:
        self.admitted -= 1

    async def encode(self, image: np.ndarray) -> np.ndarray:
        """The descriptor (D,) of one prepared image; the caller has been admitted."""
        item = _Item(image, asyncio.get_running_loop().create_future())
        self._queue.put_nowait(item)
        return await item.future

    def _drain(self) -> None:
        while True:
            try:
                self._pending.append(self._queue.get_nowait())
            except asyncio.QueueEmpty:
                return

    def _next_batch(self) -> list[_Item]:
        """Up to ``max_batch`` live items of the oldest live item's shape (removed from pending)."""
        self._pending = [i for i in self._pending if not i.future.done()]
        if not self._pending:
            return []
        shape = self._pending[0].image.shape
        batch = [i for i in self._pending if i.image.shape == shape][: self.max_batch]
        chosen = set(map(id, batch))
        self._pending = [i for i in self._pending if id(i) not in chosen]
        return batch

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._pending:
                self._pending.append(await self._queue.get())
            self._drain()
            first = self._pending[0]
            deadline = first.arrived + self.window_s
            while sum(i.image.shape == first.image.shape for i in self._pending) < self.max_batch:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    self._pending.append(await asyncio.wait_for(self._queue.get(), left))
                except asyncio.TimeoutError:
                    break
                self._drain()
            batch = self._next_batch()
            if not batch:
                continue
            stack = np.stack([i.image for i in batch])
            t = time.perf_counter()
            try:
                out = await loop.run_in_executor(self._executor, self.run, stack)
            except Exception as exc:  # noqa: BLE001 - every waiter gets the engine's error
                for i in batch:
                    if not i.future.done():
                        i.future.set_exception(exc)
                continue
            if self.on_batch is not None:
                self.on_batch(len(batch), time.perf_counter() - t)
            for i, vec in zip(batch, out):
                if not i.future.done():
                    i.future.set_result(vec)
