"""Image sets for the precision variants: calibration photos, the held-out parity photos
(disjoint from them), prepared exactly as the SDK prepares them, and generated images when no
photos are given."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from regatt_sdk.card import golden_image
from regatt_sdk.files import image_suffixes
from regatt_sdk.files import list_images as files_under
from regatt_sdk.imageio import read_image
from regatt_sdk.preprocess import prepare

#: generated parity images (height, width) when no photos are available
GENERATED_PARITY_SIZES = ((240, 320), (320, 240), (256, 256), (160, 400), (200, 200), (288, 216))


class CalibrationError(ValueError):
    """The calibration or parity image set is unusable (missing, empty, unreadable)."""


def list_images(folder: str | Path) -> list[Path]:
    """Image files directly in ``folder`` or below it, sorted by path."""
    root = Path(folder)
    if not root.is_dir():
        raise CalibrationError(f"{root}: not a directory of images")
    files = files_under(root)
    if not files:
        raise CalibrationError(f"{root}: no image files ({', '.join(sorted(image_suffixes()))})")
    return files


def spread(items: Sequence[Path], count: int | None) -> list[Path]:
    """``count`` items evenly spread over ``items`` (all of them when ``count`` is None or larger)."""
    if count is None or count >= len(items):
        return list(items)
    if count < 1:
        raise CalibrationError(f"count must be at least 1, got {count}")
    picks = np.linspace(0, len(items) - 1, count).round().astype(int)
    return [items[i] for i in sorted(set(picks.tolist()))]


def split_holdout(files: Sequence[Path], holdout: int) -> tuple[list[Path], list[Path]]:
    """Every k-th file held out for parity (``holdout`` of them), the rest for calibration."""
    if len(files) < 2 or holdout < 1:
        return list(files), []
    holdout = min(holdout, len(files) // 2)
    step = len(files) / holdout
    held = {int(step * k + step / 2) for k in range(holdout)}
    return [f for i, f in enumerate(files) if i not in held], [f for i, f in enumerate(files) if i in held]


def prepared_images(files: Iterable[Path], side: int) -> list[np.ndarray]:
    """Decode and prepare each file exactly as the SDK does (``prepare`` at ``side``)."""
    out = []
    for f in files:
        out.append(prepare(read_image(f), side))
    return out


def generated_images(side: int) -> list[np.ndarray]:
    """Deterministic textured test images at a few aspect ratios, longest side ``side``."""
    out = []
    for k, (h, w) in enumerate(GENERATED_PARITY_SIZES):
        scale = side / max(h, w)
        out.append(golden_image(max(16, round(h * scale)), max(16, round(w * scale)), 500 + k))
    return out


@dataclass(frozen=True)
class ImageSet:
    """Prepared images and where they came from (for the card and the report)."""

    images: list[np.ndarray]
    source: str
    files: tuple[str, ...] = ()


def parity_set(parity_dir: str | Path | None, holdout: Sequence[Path], side: int, count: int | None = None) -> ImageSet:
    """Photos from ``parity_dir``, else the held-out calibration photos, else generated images."""
    if parity_dir is not None:
        files = spread(list_images(parity_dir), count)
        return ImageSet(prepared_images(files, side), str(Path(parity_dir).resolve()), tuple(f.name for f in files))
    if holdout:
        return ImageSet(prepared_images(holdout, side), "held-out calibration photos", tuple(f.name for f in holdout))
    return ImageSet(generated_images(side), "generated test images")


class ImageReader:
    """A ``CalibrationDataReader`` over prepared images, one ``(1, h, w, 3)`` batch at a time.

    Supports ``set_range`` so the quantizer can calibrate image by image (sizes differ, and the
    histogram methods would otherwise keep every activation of every image in memory).
    """

    def __init__(self, images: Sequence[np.ndarray], input_name: str, dtype=np.uint8):
        self.images = list(images)
        self.input_name = input_name
        self.dtype = dtype
        self.set_range(0, len(self.images))

    def __len__(self) -> int:
        return len(self.images)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._iter = iter(range(start_index, min(end_index, len(self.images))))

    def get_next(self) -> dict[str, np.ndarray] | None:
        i = next(self._iter, None)
        if i is None:
            return None
        return {self.input_name: np.ascontiguousarray(self.images[i][None], dtype=self.dtype)}

    def rewind(self) -> None:
        self.set_range(0, len(self.images))
