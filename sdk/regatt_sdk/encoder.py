"""The runtime encoder: image files or arrays in, unit-length descriptors out (no torch)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Iterable, Sequence, Union

import numpy as np

from .card import ModelCard, golden_image, read_card
from .engines import Device, Engine, parse_device
from .engines.choose import EngineChoice, select
from .errors import ImageError, ModelError
from .imageio import read_image
from .preprocess import Box, prepare
from .progress import Progress
from .scales import ScaleSpec, parse_scales, scaled_longest

ImageLike = Union[str, Path, np.ndarray]
MIN_SIDE = 1

__all__ = ["Encoder", "ImageLike", "ModelCard", "as_bgr", "read_card"]


class Encoder:
    """Encode images with an exported regatt model.

    ``Encoder(model_path, device="auto", max_side=None, threads=None, engine=None,
    precision="fp32", memory="pattern")``; ``device`` is any form :func:`regatt_sdk.engines.parse_device` accepts
    (``cpu``, ``cuda:1``, ``openvino:GPU``...). ``engine``: ``"onnxruntime"``, ``"openvino"``,
    ``"auto"`` (the fastest engine that passes its gate here, probed once and cached; ``.choice``
    says which and why), ``None`` (the device's engine), or any
    :class:`~regatt_sdk.engines.Engine` object (used as given, ungated). ``memory``: the
    onnxruntime session's memory plan (:data:`regatt_sdk.engines.ort.MEMORY_PLANS`: ``"pattern"``,
    onnxruntime's default, or ``"arena"``, whose RSS settles whatever the image sizes, as a
    long-running server needs, or ``"lean"``). ``precision``:
    ``"fp32"``, ``"bf16"`` (OpenVINO on CPUs with BF16) or ``"auto"`` (the fastest engine x
    precision that passes the retrieval gate here; fp32 on CPUs without a bf16 unit; ``.choice``
    says which and why). A named engine and precision are gated (:mod:`regatt_sdk.engines.gate`,
    :mod:`regatt_sdk.engines.retrieval`) before use and refused with the reason
    (:class:`ModelError`) when they fail. The encoder keeps the model card, the preprocessing
    and the batching; the graph runs on ``.engine``.
    ``max_side`` overrides the card's longest side S (default 1024); ``.prepare_side`` is the
    longest side images are prepared at: S, or ``round(max(scales) * S)`` for a multi-scale
    model with a scale > 1 (its graph resizes to each scale, so every scale sees the photo's own
    pixels; the card's ``input_side``). ``encode(image)`` takes a
    path or a BGR uint8 array ``(H, W, 3)`` and returns float32 ``(D,)``; ``encode(list)``
    returns ``(N, D)`` in input order. ``query_scales`` (e.g. ``(1.5,)`` or ``"1,1.5"``):
    :meth:`encode_query` prepares queries at longest side ``round(q * prepare_side)`` for each
    ``q`` (``round(q * S)`` for a one-scale model) and sums the descriptors (then L2), so small
    objects in queries meet the database's scale.
    """

    def __init__(
        self,
        model_path: str | Path,
        device: str | Device = "auto",
        max_side: int | None = None,
        threads: int | None = None,
        *,
        engine: str | Engine | None = None,
        precision: str = "fp32",
        query_scales: ScaleSpec | None = None,
        memory: str = "pattern",
    ):
        self.model_path = Path(model_path)
        self.card = read_card(self.model_path)
        self.choice: EngineChoice | None = None
        self.engine_asked = engine if isinstance(engine, str) else None
        #: the precision asked for (``auto``: ``.choice.precision`` is what runs)
        self.precision_asked = precision
        if engine is None or isinstance(engine, str):
            dev = parse_device(device)
            # precision="auto" without an engine: every engine of a CPU device competes (bf16 is
            # OpenVINO's); otherwise the device's engine
            name = engine or ("auto" if precision == "auto" and dev.kind in ("auto", "cpu") else dev.engine)
            self.engine, self.choice = select(self.model_path, self.card, device, name, precision, threads, memory)
        else:
            self.engine = engine
        self.max_side = int(max_side or self.card.max_side)
        if self.max_side < 16:
            raise ModelError(f"max_side {self.max_side} is too small: use at least 16")
        #: the longest side images are prepared at (the card's ``input_side`` rule at this S)
        self.prepare_side = self.card.prepare_side_for(max_side)
        self.device = device
        #: multiples of S at which :meth:`encode_query` describes queries (None: as the database)
        self.query_scales = None if query_scales is None else parse_scales(query_scales, self.max_side, "query_scales")
        self._dtype = np.uint8 if self.card.input_dtype == "uint8" else np.float32

    @property
    def dim(self) -> int:
        return self.card.dim

    @property
    def providers(self) -> list[str]:
        return self.engine.providers

    def __repr__(self) -> str:
        c = self.card
        side = f", prepare_side={self.prepare_side}" if self.prepare_side != self.max_side else ""
        return (
            f"Encoder({str(self.model_path)!r}, backbone={c.backbone}, attention={c.attention}, "
            f"dim={c.dim}, max_side={self.max_side}{side}, providers={self.providers})"
        )

    # -- single steps -----------------------------------------------------------------------
    def load(self, image: ImageLike, roi: Box | None = None, max_side: int | None = None) -> np.ndarray:
        """Decode (if a path) and prepare one image: resized BGR uint8 ``(h, w, 3)``.

        ``max_side``: the prepared longest side (default :attr:`prepare_side`)."""
        if isinstance(image, (str, Path)):
            bgr = read_image(image)
            source = str(image)
        elif isinstance(image, np.ndarray):
            bgr = as_bgr(image)
            source = "array"
        else:
            raise TypeError(f"expected a path or a numpy array, got {type(image).__name__}")
        try:
            return prepare(bgr, max_side or self.prepare_side, roi)
        except ValueError as exc:
            raise ImageError(source, str(exc)) from None

    def encode_prepared(self, batch: np.ndarray) -> np.ndarray:
        """Run the graph on prepared same-size images ``(N, h, w, 3)`` -> ``(N, D)`` float32."""
        if batch.ndim != 4 or batch.shape[-1] != 3:
            raise ValueError(f"expected (N, H, W, 3) images, got shape {batch.shape}")
        feed = np.ascontiguousarray(batch, dtype=self._dtype)
        name = self.card.output_name
        return self.engine.run(feed, [name])[name]

    def explain(self, image: ImageLike, roi: Box | None = None) -> dict[str, np.ndarray]:
        """Descriptor plus the regions and their attention weights (needs ``--explain`` export).

        Returns ``descriptor (D,)``, ``boxes (R, 4)`` in the resized image's pixels (inclusive
        x1, y1, x2, y2), ``weights (R,)``, and ``scale`` (resized / original size).
        """
        if "boxes" not in self.card.outputs:
            raise ModelError(
                f"{self.model_path}: exported without region outputs: re-export with  regatt export --explain"
            )
        prepared = self.load(image, roi)
        feed = np.ascontiguousarray(prepared[None], dtype=self._dtype)
        outs = self.engine.run(feed, ["descriptor", "boxes", "valid", "weights"])
        desc, boxes, valid, weights = (outs[k] for k in ("descriptor", "boxes", "valid", "weights"))
        keep = valid.astype(bool)
        return {"descriptor": desc[0], "boxes": boxes[keep], "weights": weights[0][keep], "image": prepared}

    # -- the public entry point -------------------------------------------------------------
    def encode(
        self,
        images: ImageLike | Sequence[ImageLike],
        roi: Box | None = None,
        *,
        rois: Sequence[Box | None] | None = None,
        batch_size: int = 8,
        progress: bool = False,
        max_side: int | None = None,
    ) -> np.ndarray:
        """One image -> ``(D,)``; a list -> ``(N, D)`` (same-size images batched together).

        ``max_side`` overrides the encoder's S for this call (prepared by the card's rule).
        """
        side = None if max_side is None else self.card.prepare_side_for(max_side)
        return self._encode_at(images, roi, rois, batch_size, progress, side)

    def encode_query(
        self,
        images: ImageLike | Sequence[ImageLike],
        roi: Box | None = None,
        *,
        rois: Sequence[Box | None] | None = None,
        batch_size: int = 8,
        progress: bool = False,
    ) -> np.ndarray:
        """:meth:`encode` for queries: at each of ``query_scales`` (summed, then L2) if set.

        One image -> ``(D,)``; a list -> ``(N, D)``. Without ``query_scales``, same as ``encode``.
        """
        if not self.query_scales:
            return self._encode_at(images, roi, rois, batch_size, progress, None)
        parts = [
            self._encode_at(images, roi, rois, batch_size, progress, scaled_longest(self.prepare_side, q))
            for q in self.query_scales
        ]
        g = np.sum(parts, axis=0, dtype=np.float32)
        return (g / np.linalg.norm(g, axis=-1, keepdims=True)).astype(np.float32)

    def _encode_at(
        self,
        images: ImageLike | Sequence[ImageLike],
        roi: Box | None,
        rois: Sequence[Box | None] | None,
        batch_size: int,
        progress: bool,
        max_side: int | None,
    ) -> np.ndarray:
        """The one path behind :meth:`encode` and :meth:`encode_query`: images prepared at
        longest side ``max_side`` (None: :attr:`prepare_side`) -> ``(D,)`` for one, ``(N, D)`` for a list."""
        if isinstance(images, (str, Path, np.ndarray)):
            if isinstance(images, np.ndarray) and images.ndim == 4:
                raise ValueError("pass a list of (H, W, 3) arrays, or use encode_prepared for a batch")
            return self.encode_prepared(self.load(images, roi, max_side)[None])[0]
        items = list(images)
        if rois is not None and len(rois) != len(items):
            raise ValueError(f"{len(rois)} rois for {len(items)} images")
        out = np.empty((len(items), self.dim), dtype=np.float32)
        groups: dict[tuple[int, int], list[tuple[int, np.ndarray]]] = defaultdict(list)
        bar = Progress(len(items), "encoding") if progress else None

        def flush(shape: tuple[int, int]) -> None:
            members = groups.pop(shape)
            vecs = self.encode_prepared(np.stack([m[1] for m in members]))
            for (idx, _), vec in zip(members, vecs):
                out[idx] = vec
            if bar is not None:
                bar.advance(len(members))

        for i, item in enumerate(items):
            prepared = self.load(item, rois[i] if rois is not None else roi, max_side)
            shape = prepared.shape[:2]
            groups[shape].append((i, prepared))
            if len(groups[shape]) >= batch_size:
                flush(shape)
        for shape in list(groups):
            flush(shape)
        if bar is not None:
            bar.close()
        return out

    # -- checks ---------------------------------------------------------------------------------
    def verify(self) -> float:
        """Run the card's golden input; return max |diff| or raise if it exceeds the card's atol
        (an exact variant), or, for a variant the gate passed by cosine (bf16 compute, an INT8 or
        fp16 file on another engine than onnxruntime), if its cosine falls below the gate's."""
        from .engines import gate

        g = self.card.golden
        if g is None:
            raise ModelError(f"{self.model_path}: the model card has no golden vector")
        image = golden_image(g.height, g.width, g.seed)[None]
        got = self.encode_prepared(image)[0]
        want = np.asarray(g.vector, dtype=np.float32)
        diff = float(np.abs(got - want).max())
        c = self.choice
        by_cosine = c is not None and (
            c.precision != "fp32" or (self.card.precision != "fp32" and c.engine != "onnxruntime")
        )
        if by_cosine:
            cos = float(got @ want / max(float(np.linalg.norm(got) * np.linalg.norm(want)), 1e-12))
            if not cos >= gate.BF16_MIN_COSINE:
                raise ModelError(
                    f"{self.model_path}: golden check failed on {self.providers[0]} {c.precision} "
                    f"(cosine {cos:.6f} < {gate.BF16_MIN_COSINE})"
                )
        elif not diff <= max(g.atol, 1e-4):
            raise ModelError(f"{self.model_path}: golden check failed on {self.providers[0]} (max |diff| {diff:.2e})")
        return diff

    def warmup(self, sizes: Iterable[tuple[int, int]] = ((768, 1024),)) -> None:
        """Run once at each ``(h, w)`` so later calls at those sizes skip first-call costs."""
        for h, w in sizes:
            self.encode_prepared(np.zeros((1, h, w, 3), dtype=np.uint8))


def as_bgr(image: np.ndarray) -> np.ndarray:
    """Accept ``(H, W)`` gray, ``(H, W, 3)`` BGR or ``(H, W, 4)`` BGRA; uint8 or uint16."""
    import cv2

    if image.dtype == np.uint16:
        image = (image / 257.0 + 0.5).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise ImageError("array", f"expected uint8 pixels, got {image.dtype}")
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.ndim == 3 and image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    if image.ndim == 3 and image.shape[2] == 3:
        return image
    raise ImageError("array", f"expected (H, W), (H, W, 3) or (H, W, 4), got shape {image.shape}")
