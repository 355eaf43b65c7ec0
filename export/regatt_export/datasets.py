"""Image lists for training and whitening: unlabelled folders, ImageFolder trees, and files
named by WordNet id (``n01440764_tench.JPEG``), labelled with the ImageNet class index.

The class index is the position of the WordNet id in the sorted list of the 1000 ILSVRC-2012
synsets (the order every ImageNet classifier uses; timm ships the list).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from regatt_sdk.files import image_suffixes
from regatt_sdk.files import list_images as image_files

#: the one list of image suffixes (every format the runtime decodes)
IMAGE_SUFFIXES = image_suffixes()
WNID = re.compile(r"^(n\d{8})")


class DataError(ValueError):
    """A training or whitening folder cannot be used as given (the message says why)."""


@dataclass(frozen=True)
class Item:
    """One image: its path, a stable name (relative path) and its class index (-1: none)."""

    path: Path
    name: str
    label: int = -1


def imagenet_wnids() -> list[str]:
    """The 1000 ILSVRC-2012 WordNet ids in class-index order (sorted)."""
    from timm.data import ImageNetInfo

    wnids = list(ImageNetInfo().label_names())
    if len(wnids) != 1000 or wnids != sorted(wnids):
        raise RuntimeError("timm's ImageNet synset list is not the sorted 1000 ILSVRC-2012 ids")
    return wnids


def list_images(folder: str | Path) -> list[Item]:
    """Every image under ``folder`` (recursive, sorted by relative path), unlabelled."""
    root = Path(folder)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder")
    items = [Item(p, p.relative_to(root).as_posix()) for p in image_files(root)]
    if not items:
        raise DataError(f"{root}: no images found (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    return items


def _label_of(token: str, index: dict[str, int], classes: int, source: str) -> int:
    """Class index of a WordNet id or a decimal class number; raises naming ``source``."""
    m = WNID.match(token)
    if m:
        wnid = m.group(1)
        if wnid not in index:
            raise DataError(f"{source}: WordNet id {wnid} is not one of the classifier's {classes} ImageNet classes")
        return index[wnid]
    if token.isdigit():
        label = int(token)
        if label >= classes:
            raise DataError(f"{source}: class {label} is outside the classifier's {classes} classes")
        return label
    raise DataError(
        f"{source}: cannot tell the class; name files by WordNet id (n01440764_tench.JPEG) or use "
        "class folders named by WordNet id or class number"
    )


def labelled_images(folder: str | Path, classes: int = 1000) -> list[Item]:
    """Images of ``folder`` with ImageNet class indices.

    Layout: an ImageFolder tree (``<wnid or class number>/<image>``), or flat files whose name
    starts with a WordNet id. ``classes`` is the classifier's output size; only the 1000-way
    ImageNet classifier is understood.
    """
    items = list_images(folder)
    if classes != 1000:
        raise DataError(f"the backbone's classifier has {classes} classes; labels are ImageNet-1k WordNet ids")
    index = {w: i for i, w in enumerate(imagenet_wnids())}
    out = []
    for it in items:
        parts = Path(it.name).parts
        token = parts[0] if len(parts) > 1 else Path(it.name).name
        out.append(Item(it.path, it.name, _label_of(token, index, classes, str(it.path))))
    return out


def split_items(items: list[Item], val_fraction: float, seed: int) -> tuple[list[Item], list[Item]]:
    """Deterministic held-out split: ``round(len * val_fraction)`` items for validation."""
    import numpy as np

    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"validation fraction must be in [0, 1), got {val_fraction}")
    n_val = int(round(len(items) * val_fraction))
    if len(items) - n_val < 1:
        raise DataError(f"{len(items)} images leave nothing to train on")
    order = np.random.default_rng(seed).permutation(len(items))
    val = sorted(order[:n_val].tolist())
    train = sorted(order[n_val:].tolist())
    return [items[i] for i in train], [items[i] for i in val]
