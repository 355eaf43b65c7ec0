"""Keypoints and compact descriptors of one photo (OpenCV SIFT -> RootSIFT -> PCA int8).

OpenCV's SIFT doubles its input before building the pyramid, so a photo resized to a longest
side of ``config.side`` is described at twice that resolution; keypoints are kept in the
coordinates of the resized photo, and ``scale`` maps them back to the original pixels.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass

import cv2
import numpy as np

from .codec import Codebook, load_codebook

_local = threading.local()


@dataclass(frozen=True)
class LocalConfig:
    """How local features are extracted: the longest side photos are resized to (``side``,
    px, before SIFT's own doubling) and at most ``keypoints`` per photo (the strongest)."""

    side: int = 320
    keypoints: int = 500
    method: str = "sift-rootsift-pca-int8"

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: dict) -> LocalConfig:
        return cls(side=int(raw["side"]), keypoints=int(raw["keypoints"]), method=str(raw["method"]))


@dataclass(frozen=True)
class LocalFeatures:
    """One photo's local features. ``kp`` (n, 4) float32: x, y (pixels of the resized photo),
    size, angle (degrees); ``desc`` (n, P) int8; ``words`` (n,) visual words; ``scale``:
    original pixels per resized pixel; ``width``, ``height``: the original photo's size."""

    kp: np.ndarray
    desc: np.ndarray
    words: np.ndarray
    scale: float
    width: int
    height: int

    def __len__(self) -> int:
        return int(len(self.kp))

    def points(self, original: bool = False) -> np.ndarray:
        """Keypoint positions ``(n, 2)`` float32, in the resized photo or the original's pixels."""
        xy = self.kp[:, :2].astype(np.float32)
        return xy * np.float32(self.scale) if original else xy


def _sift(keypoints: int) -> cv2.SIFT:
    cache = getattr(_local, "sift", None)
    if cache is None or cache[0] != keypoints:
        cache = (keypoints, cv2.SIFT_create(nfeatures=keypoints))
        _local.sift = cache
    return cache[1]


def detect(image: np.ndarray, config: LocalConfig = LocalConfig()) -> tuple[np.ndarray, np.ndarray, float]:
    """SIFT of a BGR (or grey) uint8 photo: ``(kp (n, 4) float32, sift (n, 128) float32,
    scale)``, strongest first, at most ``config.keypoints``. Thread-safe."""
    gray = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    h, w = gray.shape[:2]
    f = min(1.0, config.side / max(h, w))
    if f < 1.0:
        size = (max(1, round(w * f)), max(1, round(h * f)))
        gray = cv2.resize(gray, size, interpolation=cv2.INTER_AREA)
    kps, sift = _sift(config.keypoints).detectAndCompute(gray, None)
    if sift is None or not kps:
        return np.zeros((0, 4), np.float32), np.zeros((0, 128), np.float32), float(1.0 / f)
    kp = np.array([(k.pt[0], k.pt[1], k.size, k.angle) for k in kps], np.float32)
    # nfeatures keeps the strongest, but OpenCV may return a few more (ties): keep at most
    # `keypoints`, strongest first
    order = np.argsort([-k.response for k in kps], kind="stable")[: config.keypoints]
    return kp[order], np.asarray(sift, np.float32)[order], float(1.0 / f)


def extract(image: np.ndarray, config: LocalConfig = LocalConfig(), codebook: Codebook | None = None) -> LocalFeatures:
    """Local features of a BGR (or grey) uint8 photo ``(H, W[, 3])``. Thread-safe."""
    book = codebook or load_codebook()
    kp, sift, scale = detect(image, config)
    desc = book.encode(sift)
    h, w = image.shape[:2]
    return LocalFeatures(kp, desc, book.assign(desc), scale, int(w), int(h))
