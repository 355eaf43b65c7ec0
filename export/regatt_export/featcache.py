"""On-disk cache of frozen-backbone feature maps, one ``.npy`` per (image, view).

The backbone is frozen during attention training and whitening, so its feature map of a given
view never changes: it is computed once and stored as ``(C, h, w)`` float16 (or float32) under
``<cache>/<key>/``, where ``key`` hashes the backbone, its weights and the view recipe. A file
is named by a hash of the image's path, size and modification time plus the view number, so
an edited photo is recomputed. Only ``np.save``/``np.load(allow_pickle=False)`` touch the disk.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from .datasets import Item

#: bump when the stored content changes meaning
CACHE_VERSION = 1


@dataclass
class CacheStats:
    """How many maps were computed vs read back, and the seconds each took."""

    computed: int = 0
    loaded: int = 0
    compute_s: float = 0.0
    load_s: float = 0.0
    per_view_s: list[float] = field(default_factory=list)

    @property
    def compute_per_view_s(self) -> float:
        return self.compute_s / self.computed if self.computed else float("nan")


def cache_key(**facts: object) -> str:
    """A short stable hash of ``facts`` (JSON-serialisable) and the cache version."""
    blob = json.dumps({"v": CACHE_VERSION, **facts}, sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def weights_fact(weights: str | None) -> str:
    """Identify backbone weights for the cache key (a file by its size and mtime)."""
    if weights in (None, "random"):
        return str(weights)
    p = Path(weights)
    st = p.stat()
    return f"{p.resolve()}:{st.st_size}:{st.st_mtime_ns}"


def _file_id(path: Path) -> str:
    st = path.stat()
    return hashlib.sha1(f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:20]


class FeatureCache:
    """Feature maps of ``(item, view)`` pairs under ``root/key``.

    ``producer(item, view) -> (H, W, 3)`` BGR uint8 makes the view; ``features(bgr) -> (C, h, w)``
    runs the frozen backbone. ``root=None`` keeps nothing on disk (everything is computed).
    """

    def __init__(
        self,
        root: str | Path | None,
        key: str,
        producer: Callable[[Item, int], np.ndarray],
        features: Callable[[np.ndarray], torch.Tensor],
        dtype: str = "float16",
    ):
        if dtype not in ("float16", "float32"):
            raise ValueError(f"cache dtype must be float16 or float32, got {dtype}")
        self.dir = Path(root) / key if root is not None else None
        self.producer = producer
        self.features = features
        self.dtype = np.dtype(dtype)
        self.stats = CacheStats()
        if self.dir is not None:
            self.dir.mkdir(parents=True, exist_ok=True)

    def path(self, item: Item, view: int) -> Path | None:
        return self.dir / f"{_file_id(item.path)}_v{view}.npy" if self.dir is not None else None

    def get(self, item: Item, view: int) -> np.ndarray:
        """``(C, h, w)`` feature map of ``view`` of ``item`` in the cache dtype."""
        return self.get_sized(item, view, need_size=False)[0]

    def get_sized(self, item: Item, view: int, need_size: bool = True) -> tuple[np.ndarray, tuple[int, int]]:
        """``((C, h, w) map, (H, W) size of the view image)``; the size sits in a sidecar .npy
        (``(0, 0)`` when not ``need_size`` and it is missing)."""
        p = self.path(item, view)
        if p is not None and p.is_file():
            t0 = time.perf_counter()
            try:
                arr = np.load(p, allow_pickle=False)
                side = p.with_suffix(".size.npy")
                if need_size or side.is_file():
                    size = np.load(side, allow_pickle=False)
                else:
                    size = np.zeros(2, dtype=np.int64)
                self.stats.loaded += 1
                self.stats.load_s += time.perf_counter() - t0
                return arr, (int(size[0]), int(size[1]))
            except (ValueError, OSError):
                pass  # a torn or missing file from an interrupted run: recompute it
        t0 = time.perf_counter()
        with torch.inference_mode():
            image = self.producer(item, view)
            arr = self.features(image).numpy().astype(self.dtype)
        dt = time.perf_counter() - t0
        self.stats.computed += 1
        self.stats.compute_s += dt
        size = (int(image.shape[0]), int(image.shape[1]))
        if p is not None:
            for target, data in ((p.with_suffix(".size.npy"), np.asarray(size, dtype=np.int64)), (p, arr)):
                tmp = target.with_name(f"{target.name}.tmp{os.getpid()}.npy")
                np.save(tmp, data, allow_pickle=False)
                os.replace(tmp, target)
        return arr, size

    def get_many(
        self, pairs: Sequence[tuple[Item, int]], progress: Callable[[int, int], None] | None = None
    ) -> list[np.ndarray]:
        """Feature maps of every ``(item, view)`` pair, in order; ``progress(done, total)``."""
        out = []
        for i, (item, view) in enumerate(pairs):
            out.append(self.get(item, view))
            if progress is not None:
                progress(i + 1, len(pairs))
        return out


def backbone_features(encoder: torch.nn.Module) -> Callable[[np.ndarray], torch.Tensor]:
    """``bgr (H, W, 3) uint8 -> (C, h, w)`` float32 through ``encoder``'s normalisation and
    frozen backbone (the exact path of inference)."""

    def run(bgr: np.ndarray) -> torch.Tensor:
        x = encoder.normalize_input(torch.from_numpy(np.ascontiguousarray(bgr))[None])
        return encoder.backbone(x)[0].float()

    return run


def region_cells(
    encoder: torch.nn.Module, height: int, width: int, feat_h: int, feat_w: int
) -> list[tuple[int, int, int, int]]:
    """Feature cells ``(y0, y1, x0, x1)`` (end exclusive) of the real regions of an
    ``height x width`` input, from the encoder's own R-MAC boxes and cell rounding."""
    from .pooling import box_cells

    boxes = encoder.boxes(torch.empty((1, height, width, 0)))
    i64 = torch.int64
    y0, y1, x0, x1 = box_cells(
        boxes, encoder.spec.stride, torch.scalar_tensor(feat_h, dtype=i64), torch.scalar_tensor(feat_w, dtype=i64)
    )
    return list(zip(y0.tolist(), y1.tolist(), x0.tolist(), x1.tolist()))


def pool_regions(
    encoder: torch.nn.Module, feat: torch.Tensor, height: int, width: int, with_mean: bool = True
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Regional max (and mean) of ``feat (N, C, h, w)`` over the real R-MAC regions of
    ``height x width`` inputs: ``rmax (N, R, C)``, ``rmean (N, R, C)``, ``gmean (N, C)``.

    The same cells as ``RegionalAttentionEncoder.regional`` (whose output keeps all slots and a
    ``valid`` mask), computed by slicing, which is much cheaper in eager PyTorch for a batch of
    equal-sized inputs. Max is exact; means agree to float rounding.
    """
    feat = feat.float()
    cells = region_cells(encoder, height, width, feat.shape[2], feat.shape[3])
    rmax = torch.stack([feat[:, :, a:b, c:d].amax(dim=(2, 3)) for a, b, c, d in cells], dim=1)
    if not with_mean:
        return rmax, None, None
    rmean = torch.stack([feat[:, :, a:b, c:d].mean(dim=(2, 3)) for a, b, c, d in cells], dim=1)
    return rmax, rmean, feat.mean(dim=(2, 3))
