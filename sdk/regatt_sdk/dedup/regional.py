"""Region-to-region agreement of two images' regional descriptors, and its geometry.

The model's ``regions`` output (``regatt export --explain``) gives, per image, the whitened,
normalised R-MAC regional vectors ``(R, D)`` that the descriptor averages, and their ``boxes``
``(R, 4)`` (x1, y1, x2, y2 in the prepared image's pixels). An edited copy keeps most regions:
region by region, each finds a near-identical partner, and the partners sit where a single
scale-and-shift of the image puts them. Another photo of the same scene matches fewer regions,
less closely, and not under one consistent mapping.

:func:`region_features` returns, for one pair:

* ``agree``: mean over both images of each region's best cosine in the other image;
* ``matched``: share of regions (of the image with fewer) in a mutual best match with cosine
  at least ``match_cos``;
* ``geom``: share of those mutual matches that one axis-aligned scale-and-shift (fit by least
  squares on the matched box centres and sizes, normalised to the image sides) maps to within
  ``tol`` of their partner; 0 when fewer than 3 matches.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FEATURES = ("agree", "matched", "geom")


@dataclass(frozen=True)
class Regions:
    """One image's regional vectors ``vectors (R, D)`` float (unit rows), ``boxes (R, 4)`` float32
    x1, y1, x2, y2 in the prepared image's pixels, and that image's ``(height, width)``."""

    vectors: np.ndarray
    boxes: np.ndarray
    size: tuple[int, int]

    def normalised_boxes(self) -> np.ndarray:
        """``(R, 4)`` centre x, centre y, width, height as fractions of the image sides."""
        h, w = self.size
        b = self.boxes.astype(np.float64)
        return np.stack([(b[:, 0] + b[:, 2] + 1) / (2 * w), (b[:, 1] + b[:, 3] + 1) / (2 * h),
                         (b[:, 2] - b[:, 0] + 1) / w, (b[:, 3] - b[:, 1] + 1) / h], axis=1)  # fmt: skip


def _fit_axis(src: np.ndarray, dst: np.ndarray, size_src: np.ndarray, size_dst: np.ndarray):
    """Least-squares ``dst ~ s * src + t`` from centres, with sizes constraining ``s``."""
    x = np.concatenate([src, size_src])
    y = np.concatenate([dst, size_dst])
    ones = np.concatenate([np.ones_like(src), np.zeros_like(size_src)])
    a = np.stack([x, ones], axis=1)
    (s, t), *_ = np.linalg.lstsq(a, y, rcond=None)
    return float(s), float(t)


def region_features(a: Regions, b: Regions, *, match_cos: float = 0.8, tol: float = 0.08) -> dict[str, float]:
    """``{"agree", "matched", "geom"}`` for images ``a`` and ``b`` (see the module docstring)."""
    va = np.asarray(a.vectors, np.float32)
    vb = np.asarray(b.vectors, np.float32)
    if va.shape[0] == 0 or vb.shape[0] == 0:
        return {"agree": 0.0, "matched": 0.0, "geom": 0.0}
    s = va @ vb.T  # (Ra, Rb)
    best_b = s.argmax(1)
    best_a = s.argmax(0)
    agree = 0.5 * (float(s.max(1).mean()) + float(s.max(0).mean()))
    ia = np.arange(va.shape[0])
    mutual = (best_a[best_b] == ia) & (s[ia, best_b] >= match_cos)
    ma, mb = ia[mutual], best_b[mutual]
    matched = ma.size / min(va.shape[0], vb.shape[0])
    geom = 0.0
    if ma.size >= 3:
        na, nb = a.normalised_boxes()[ma], b.normalised_boxes()[mb]
        sx, tx = _fit_axis(na[:, 0], nb[:, 0], na[:, 2], nb[:, 2])
        sy, ty = _fit_axis(na[:, 1], nb[:, 1], na[:, 3], nb[:, 3])
        err = np.maximum(np.abs(sx * na[:, 0] + tx - nb[:, 0]), np.abs(sy * na[:, 1] + ty - nb[:, 1]))
        plausible = 0.25 <= sx <= 4.0 and 0.25 <= sy <= 4.0 and 0.5 <= sx / sy <= 2.0
        geom = float(np.mean(err <= tol)) if plausible else 0.0
    return {"agree": agree, "matched": float(matched), "geom": geom}


def has_regions(encoder) -> bool:
    """True when ``encoder``'s model has the ``regions`` and ``boxes`` outputs (``--explain``)."""
    return {"regions", "boxes"} <= set(encoder.card.outputs)


def encode_with_regions(encoder, image) -> tuple[np.ndarray, Regions, np.ndarray]:
    """``(descriptor (D,), Regions, prepared image (h, w, 3))`` of one image (path or BGR array)
    with an :class:`~regatt_sdk.encoder.Encoder` whose model has the ``regions`` output."""
    from ..errors import ModelError

    if not has_regions(encoder):
        raise ModelError(
            f"{encoder.model_path}: exported without the regional outputs that dedup's copy check "
            "uses: re-export it with  regatt export --explain"
        )
    prepared = encoder.load(image)
    feed = np.ascontiguousarray(prepared[None], dtype=np.uint8 if encoder.card.input_dtype == "uint8" else np.float32)
    outs = encoder.engine.run(feed, ["descriptor", "boxes", "valid", "regions"])
    desc, boxes, valid, regions = (outs[k] for k in ("descriptor", "boxes", "valid", "regions"))
    keep = valid.astype(bool)
    reg = Regions(vectors=regions[0][keep], boxes=boxes[keep].astype(np.float32), size=prepared.shape[:2])
    return desc[0], reg, prepared


@dataclass(frozen=True)
class RegionTable:
    """The regions of ``N`` images in flat arrays: ``vectors (T, d)`` (float16 or float32, e.g. a
    memory map), ``boxes (T, 4)``, ``offsets (N + 1,)`` (image ``k`` owns rows
    ``offsets[k]:offsets[k+1]``), ``sizes (N, 2)`` prepared (height, width)."""

    vectors: np.ndarray
    boxes: np.ndarray
    offsets: np.ndarray
    sizes: np.ndarray

    def __len__(self) -> int:
        return int(self.offsets.size - 1)

    def get(self, k: int) -> Regions:
        a, b = int(self.offsets[k]), int(self.offsets[k + 1])
        v = np.asarray(self.vectors[a:b], dtype=np.float32)
        v /= np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
        return Regions(v, np.asarray(self.boxes[a:b], np.float32), (int(self.sizes[k, 0]), int(self.sizes[k, 1])))


def table_features(table: RegionTable, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """:func:`region_features` of pairs ``(i[p], j[p])``: ``(P, 3)`` in :data:`FEATURES` order."""
    out = np.zeros((i.size, len(FEATURES)), dtype=np.float64)
    cache: dict[int, Regions] = {}
    order = np.argsort(i, kind="stable")
    last = -1
    for p in order.tolist():
        a = int(i[p])
        if a != last:
            cache.clear()
            ra = table.get(a)
            last = a
        f = region_features(ra, table.get(int(j[p])))
        out[p] = [f[k] for k in FEATURES]
    return out
