"""Encoding a collection on a Ray cluster (``pip install 'regatt[ray]'``), into one feature store.

:func:`encode_with_ray` expands the sources on the driver (same order as
:func:`regatt_sdk.pipeline.encode_to_store`), makes a Ray Dataset of ``(idx, name, path)`` rows
and runs ``map_batches`` with a pool of actors (:class:`EncodeActor`), each holding one
onnxruntime session (on a GPU when the cluster has GPUs). Each actor decodes its rows with the
pipeline's defensive reader, encodes them in same-size batches and appends them to its own
shard: a feature store ``part-<id>`` under ``shard_dir`` (default ``STORE.shards/`` next to the
output). When the dataset is done, :func:`merge_stores` copies the shards' rows and failure
records into the output store in source order, so the result is the store a single-process
``regatt encode`` makes: same format, same row order, same failure records. Files that cannot be
read or encoded are failures (``failures.jsonl``), never fatal.

On a multi-node cluster the images, the model file and ``shard_dir`` must be on storage every
node sees at the same path (NFS, a bucket mount), and ``regatt`` must be installed on the nodes.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from .compose import EncoderOptions
from .errors import ImageError, RegattError
from .imageio import DEFAULT_MAX_PIXELS, DEFAULT_MIN_SIDE
from .optional import require
from .pipeline import EncodeReport, Slot, encode_window, make_loader, model_info, short_reason
from .sources import SourceItem, iter_sources
from .store import Failure, FeatureStore, StoreError

#: rows copied per step while merging shards (bounds the merge's memory: rows x D floats)
MERGE_CHUNK_ROWS = 4096


def import_ray():
    """``ray`` (with Ray Data), or a :class:`MissingExtraError` naming ``pip install 'regatt[ray]'``."""
    ray = require("ray", extra="ray", package="ray[data]", strict=False)
    require("ray.data", extra="ray", package="ray[data]", strict=False)  # the [data] extra: pyarrow, pandas
    return ray


def _encode_text(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")  # names may hold undecodable bytes


def _decode_text(data: bytes | str) -> str:
    return data if isinstance(data, str) else bytes(data).decode("utf-8", "surrogateescape")


class EncodeActor:
    """A Ray Data actor: one :class:`~regatt_sdk.encoder.Encoder` and one shard store.

    Called with a batch ``{"idx" (B,) int64, "name" (B,) bytes, "path" (B,) bytes, "error" (B,)
    bytes}``; appends the encoded rows and the failures to its shard and returns
    ``{"idx" (B,) int64, "ok" (B,) bool}``.
    """

    def __init__(
        self,
        model: str,
        shard_dir: str,
        *,
        device: str = "cpu",
        threads: int | None = None,
        max_side: int | None = None,
        engine: str | None = None,
        precision: str = "fp32",
        memory: str = "pattern",
        card_hash: str | None = None,
        batch_size: int = 8,
        decode_threads: int = 2,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        min_side: int = DEFAULT_MIN_SIDE,
        upscale_small: bool = False,
        rois: Mapping[str, tuple[float, float, float, float]] | None = None,
    ):
        from .compose import EncoderOptions, open_encoder

        options = EncoderOptions(
            device=device, threads=threads, max_side=max_side, engine=engine, precision=precision, memory=memory
        )
        self.encoder = open_encoder(model, options)
        #: the hash the shards record: the output store's (a legacy hash of this model's card on resume)
        self.card_hash = card_hash or str(self.encoder.card.hash)
        self.batch_size = batch_size
        self.load = make_loader(int(self.encoder.prepare_side), max_pixels=max_pixels, min_side=min_side,
                            upscale_small=upscale_small, rois=rois)  # fmt: skip
        self.pool = ThreadPoolExecutor(max_workers=decode_threads, thread_name_prefix="regatt-decode")
        self.shard_dir = Path(shard_dir)
        self.store: FeatureStore | None = None

    def _shard(self) -> FeatureStore:
        if self.store is None:
            enc = self.encoder
            self.store = FeatureStore.create(
                self.shard_dir / f"part-{uuid.uuid4().hex[:16]}", card_hash=self.card_hash,
                dim=int(enc.dim), model=model_info(enc, int(enc.max_side)),
            )  # fmt: skip
        return self.store

    def _read(self, item: SourceItem) -> tuple[np.ndarray | None, str | None]:
        try:
            return self.load(item), None
        except ImageError as exc:
            return None, exc.reason
        except Exception as exc:  # noqa: BLE001 - per-file failure, run goes on
            return None, f"could not load it: {short_reason(exc)}"

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        items = [
            SourceItem(_decode_text(n), _decode_text(p), _decode_text(e) or None)
            for n, p, e in zip(batch["name"], batch["path"], batch["error"])
        ]
        slots = [Slot(item, reason=item.error) for item in items]
        readable = [s for s in slots if s.reason is None]
        for slot, (image, reason) in zip(readable, self.pool.map(self._read, [s.item for s in readable])):
            slot.image, slot.reason = image, reason
        encode_window(self.encoder, slots, self.batch_size)
        ok = np.array([s.vector is not None for s in slots], dtype=bool)
        names = [s.item.name for s in slots if s.vector is not None]
        vectors = np.stack([s.vector for s in slots if s.vector is not None]) if names else (
            np.zeros((0, self.encoder.dim), np.float32))  # fmt: skip
        failures = [Failure(s.item.name, s.reason or "unknown failure") for s in slots if s.vector is None]
        self._shard().append(names, vectors, failures)
        return {"idx": np.asarray(batch["idx"], dtype=np.int64), "ok": ok}


def merge_stores(
    shards: Sequence[str | os.PathLike],
    out: FeatureStore,
    *,
    order: Sequence[str] | None = None,
    chunk_rows: int = MERGE_CHUNK_ROWS,
) -> tuple[int, list[Failure]]:
    """Append the rows and failures of the ``shards`` (feature-store paths) to the open ``out``.

    With ``order`` (names), rows and failures are appended in that order, one record per name
    (a name found in several shards, e.g. after a retried task, is taken once; a name in no
    shard becomes the failure "lost"). Without it, the shards are concatenated as given. Every
    shard must come from the model of ``out`` (card hash and dimension). Memory: one chunk of
    ``chunk_rows`` vectors. Returns ``(rows appended, failures appended)``.
    """
    if out.side_meta.get("local"):
        raise StoreError(
            f"{out.path} keeps local features for every row, which Ray workers do not extract yet: "
            "add to it without --ray"
        )
    stores = [FeatureStore.open(p) for p in shards]
    for s in stores:
        if s.card_hash != out.card_hash or s.dim != out.dim:
            raise StoreError(f"shard {s.path} was made with another model than {out.path}")
    where: dict[str, tuple[int, int]] = {}
    reasons: dict[str, str] = {}
    for si, s in enumerate(stores):
        for row, name in enumerate(s.names):
            where.setdefault(name, (si, row))
        for f in s.failures:
            reasons.setdefault(f.name, f.reason)
    if order is None:
        order = [n for s in stores for n in s.names] + [f.name for s in stores for f in s.failures]
    vectors = [s.vectors for s in stores]
    done: set[str] = set()
    rows_added = 0
    failures_added: list[Failure] = []
    for start in range(0, len(order), chunk_rows):
        names: list[str] = []
        slots: list[tuple[int, int]] = []
        failures: list[Failure] = []
        for name in order[start : start + chunk_rows]:
            if name in done:
                continue
            done.add(name)
            if name in where:
                names.append(name)
                slots.append(where[name])
            else:
                failures.append(Failure(name, reasons.get(name, "lost: no worker returned it")))
        block = np.empty((len(names), out.dim), dtype=np.float32)
        picks = np.array(slots, dtype=np.int64).reshape(-1, 2)
        for si in np.unique(picks[:, 0]):
            mine = np.flatnonzero(picks[:, 0] == si)
            rows = picks[mine, 1]
            sort = np.argsort(rows)  # ascending reads from the memory map
            block[mine[sort]] = vectors[si][rows[sort]]
        out.append(names, block, failures)
        rows_added += len(names)
        failures_added += failures
    return rows_added, failures_added


def _init_ray(ray, address: str | None) -> bool:
    """Connect to (or start) a cluster unless one is connected; True when this call did it."""
    if ray.is_initialized():
        return False
    kwargs: dict = {"include_dashboard": False, "logging_level": logging.WARNING,
                    "log_to_driver": False}  # fmt: skip
    try:
        ray.init(address=None if address in (None, "", "local") else address, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise RegattError(f"cannot reach the Ray cluster at {address}: {short_reason(exc)}") from None
    return True


def encode_with_ray(
    model: str | os.PathLike,
    sources: Iterable[str | os.PathLike | SourceItem],
    store: str | os.PathLike,
    *,
    address: str | None = None,
    num_actors: int | None = None,
    batch_size: int = 8,
    use_gpu: bool | None = None,
    device: str = "auto",
    resume: bool = False,
    threads: int | None = None,
    max_side: int | None = None,
    rows_per_call: int | None = None,
    decode_threads: int = 2,
    shard_dir: str | os.PathLike | None = None,
    keep_shards: bool = False,
    progress: bool = True,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_side: int = DEFAULT_MIN_SIDE,
    upscale_small: bool = False,
    rois: Mapping[str, tuple[float, float, float, float]] | None = None,
    extensions: str | Iterable[str] | None = None,
    list_files: Iterable[str | os.PathLike] = (),
    options: EncoderOptions | None = None,
) -> EncodeReport:
    """Encode ``sources`` into the feature store ``store`` on a Ray cluster; see the module docs.

    ``address``: the cluster (``None``/``"local"``: ``RAY_ADDRESS`` or a new local one;
    ``"auto"``: the running one; ``"ray://host:10001"``: a remote one); a cluster already
    connected with ``ray.init`` is used as is. ``num_actors``: encoder actors (default: one per
    GPU with ``use_gpu``, else one per ``threads`` CPUs); ``use_gpu``: ``None`` = when the
    cluster has GPUs; ``device``: as for :class:`~regatt_sdk.encoder.Encoder` (see
    :func:`actor_device`); ``rows_per_call``: rows per actor call (default ``4 * batch_size``, one
    pipeline window). ``options``: the actors' :class:`~regatt_sdk.compose.EncoderOptions` in
    place of ``device``/``threads``/``max_side`` (engine, precision and memory plan reach every
    actor; a named engine or precision is gated here first, on the CPU device an actor would
    use, and refused with the reason; OpenVINO on GPU actors is refused). Other options as in
    :func:`regatt_sdk.pipeline.encode_to_store`.
    Returns the :class:`~regatt_sdk.pipeline.EncodeReport`; the result's rows are in source
    order, as a single-process run would write them.
    """
    ray = import_ray()
    if batch_size < 1 or decode_threads < 1 or (num_actors is not None and num_actors < 1):
        raise RegattError("batch size, decode threads and actors must be at least 1")
    from .compose import OptionError, encoder_for_store, open_encoder

    if options is None:
        options = EncoderOptions(device=device, threads=threads, max_side=max_side)
    elif (device, threads, max_side) != ("auto", None, None):
        raise OptionError("give device, threads and max_side in options, not beside them")
    if options.query_scales is not None:
        raise OptionError("query scales describe queries: encoding a store takes none")
    if options.engine == "openvino" and use_gpu:
        raise OptionError("the openvino engine runs on CPU actors: drop use_gpu (or the engine)")
    device, threads, max_side = options.device, options.threads, options.max_side
    start = time.monotonic()
    model = os.path.abspath(os.fspath(model))
    # gated here (an engine or precision that cannot run is refused before any actor starts)
    gated = options.engine is not None or options.precision != "fp32"
    probe = open_encoder(model, options.replace(device=actor_device(device, False) if gated else "cpu", threads=1))
    probe = encoder_for_store(probe, store) if resume else probe
    side, dim = int(probe.max_side), int(probe.dim)
    out = FeatureStore.open_for_append(store, card_hash=str(probe.card.hash), dim=dim,
                                       resume=resume, model=model_info(probe, side))  # fmt: skip
    del probe
    report = EncodeReport(store=os.fspath(store), dim=dim)
    started = False
    shards_root = Path(shard_dir) if shard_dir else Path(os.path.normpath(os.fspath(store)) + ".shards")
    try:
        stored_side = out.manifest.get("model", {}).get("max_side")
        if stored_side is not None and int(stored_side) != side:
            raise StoreError(f"{store} was encoded with max side {stored_side}, not {side}; "
                             "use the same --max-side or a new output path")  # fmt: skip
        done = out.done_names() if resume else set()
        items = []
        for item in iter_sources(sources, extensions=extensions, list_files=list_files):
            if item.name in done:
                report.skipped += 1
            else:
                items.append(item)
        if items:
            started = _init_ray(ray, address)
            run_dir = shards_root / f"run-{uuid.uuid4().hex[:8]}"
            run_dir.mkdir(parents=True, exist_ok=True)
            _run_actors(ray, items, model, run_dir, num_actors=num_actors, batch_size=batch_size,
                        use_gpu=use_gpu, device=device, threads=threads, max_side=side,
                        rows_per_call=rows_per_call or 4 * batch_size,
                        decode_threads=decode_threads, progress=progress,
                        actor_options={"max_pixels": max_pixels, "min_side": min_side,
                                       "upscale_small": upscale_small, "rois": rois,
                                       "engine": options.engine, "precision": options.precision,
                                       "memory": options.memory, "card_hash": out.card_hash})  # fmt: skip
            shards = sorted(p for p in run_dir.iterdir() if p.is_dir())
            rows, failures = merge_stores(shards, out, order=[i.name for i in items])
            report.encoded, report.failed, report.failures = rows, len(failures), failures
            if not keep_shards:
                shutil.rmtree(run_dir, ignore_errors=True)
                if shards_root.is_dir() and not any(shards_root.iterdir()):
                    shards_root.rmdir()
        report.rows = out.count
        report.elapsed_s = time.monotonic() - start
        return report
    finally:
        out.close()
        if started:
            ray.shutdown()


def actor_device(device: str, gpu: bool) -> str:
    """The device an encoder actor opens: on a GPU actor ``cuda`` (or ``tensorrt``) with no index
    (Ray gives each actor one GPU, which it sees as index 0); on a CPU actor ``cpu``, or the
    ``openvino[:TARGET]`` device when that was asked for."""
    from .engines import parse_device

    dev = parse_device(device)
    if gpu:
        return "tensorrt" if dev.kind == "tensorrt" else "cuda"
    return str(dev) if dev.kind == "openvino" else "cpu"


def _run_actors(ray, items: list[SourceItem], model: str, run_dir: Path, *, num_actors: int | None,
                batch_size: int, use_gpu: bool | None, device: str, threads: int | None, max_side: int,
                rows_per_call: int, decode_threads: int, progress: bool,
                actor_options: dict) -> None:  # fmt: skip
    """Run the actor pool over ``items``; each actor writes its shard under ``run_dir``."""
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    gpu = gpus > 0 if use_gpu is None else bool(use_gpu)
    if gpu and gpus == 0:
        raise RegattError("use_gpu was asked for but the Ray cluster has no GPUs")
    cpus_each = max(1, int(threads or 1))
    actors = num_actors or (gpus if gpu else max(1, int(resources.get("CPU", 1)) // cpus_each))
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = progress
    if not progress:  # also quiet Ray Data's notice that the bars are off
        logging.getLogger("ray.data").setLevel(logging.ERROR)
    ctx.execution_options.preserve_order = False  # merge_stores restores the source order
    rows = [{"idx": i, "name": _encode_text(it.name), "path": _encode_text(it.path),
             "error": _encode_text(it.error or "")} for i, it in enumerate(items)]  # fmt: skip
    calls = -(-len(rows) // rows_per_call)  # every actor gets input; at most 8 blocks each
    blocks = max(1, min(len(rows), max(actors, min(calls, 8 * actors))))
    ds = ray.data.from_items(rows, override_num_blocks=blocks)
    ds = ds.map_batches(
        EncodeActor,
        batch_size=rows_per_call,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_gpus=1 if gpu else 0,
        num_cpus=cpus_each,
        fn_constructor_args=(model, str(run_dir)),
        fn_constructor_kwargs=dict(
            device=actor_device(device, gpu),
            threads=cpus_each,
            max_side=max_side,
            batch_size=batch_size,
            decode_threads=decode_threads,
            **actor_options,
        ),  # fmt: skip
    )
    for _ in ds.iter_batches(batch_size=None, batch_format="numpy"):
        pass  # the shards hold the results; iterating drives the execution
