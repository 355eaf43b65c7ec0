"""Write a small retrieval collection made from scikit-image's bundled photos, for the pictures
in this folder (see pictures.md).

    .venv/bin/python docs/make_sample_photos.py OUT_DIR

``OUT_DIR/<group>/{0,1,2}.jpg``: each photo as is (0), mirrored and cropped (1), and rotated by
12 degrees with a brightness/contrast change (2); the motorcycle group holds the left and right
views of scikit-image's stereo pair instead. ``regatt eval --dataset generic --root OUT_DIR``
treats each sub-folder as a group: every image is a query, the rest of its group its positives.
"""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
from skimage import data

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "camera", "retina", "immunohistochemistry")


def bgr(rgb: np.ndarray) -> np.ndarray:
    """scikit-image RGB (or gray) uint8 -> OpenCV BGR uint8 (H, W, 3)."""
    if rgb.ndim == 2:
        rgb = np.stack([rgb] * 3, axis=-1)
    return np.ascontiguousarray(rgb[:, :, 2::-1])


def variants(img: np.ndarray) -> list[np.ndarray]:
    """The photo, a mirrored 80 % crop, and a rotated, re-lit copy (all BGR uint8)."""
    h, w = img.shape[:2]
    crop = cv2.flip(img, 1)[int(0.1 * h) : int(0.9 * h), int(0.12 * w) : int(0.92 * w)]
    rot = cv2.warpAffine(img, cv2.getRotationMatrix2D((w / 2, h / 2), 12, 1.1), (w, h),
                         borderMode=cv2.BORDER_REFLECT)  # fmt: skip
    lit = cv2.convertScaleAbs(rot, alpha=0.85, beta=30)
    return [img, crop, lit]


def main(out: Path) -> None:
    for name in PHOTOS:
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        for i, image in enumerate(variants(bgr(getattr(data, name)()))):
            cv2.imwrite(str(folder / f"{i}.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, 92])
    left, right, _ = data.stereo_motorcycle()
    (out / "motorcycle").mkdir(parents=True, exist_ok=True)
    for i, image in enumerate((left, right)):
        cv2.imwrite(str(out / "motorcycle" / f"{i}.jpg"), bgr(image), [cv2.IMWRITE_JPEG_QUALITY, 92])
    print(f"wrote {sum(1 for _ in out.rglob('*.jpg'))} photos in {len(PHOTOS) + 1} groups to {out}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(Path(sys.argv[1]))
