"""Write a small demo photo collection: scikit-image's bundled photos plus transformed copies
(crops, rotations, brightness changes), so search has true matches to find."""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np


def main(out: str) -> None:
    from skimage import data

    d = Path(out)
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in ("astronaut", "coffee", "chelsea", "rocket", "camera", "coins", "page", "immunohistochemistry"):
        img = getattr(data, name)()
        if img.ndim == 2:
            img = np.stack([img] * 3, axis=-1)
        bgr = np.ascontiguousarray(img[:, :, ::-1])
        cv2.imwrite(str(d / f"{name}.jpg"), bgr)
        h, w = bgr.shape[:2]
        y, x = rng.integers(0, h // 5), rng.integers(0, w // 5)
        cv2.imwrite(str(d / f"{name}_crop.jpg"), bgr[y : y + 3 * h // 4, x : x + 3 * w // 4])
        m = cv2.getRotationMatrix2D((w / 2, h / 2), 8, 1.1)
        cv2.imwrite(str(d / f"{name}_rot.jpg"), cv2.warpAffine(bgr, m, (w, h), borderMode=cv2.BORDER_REFLECT))
        cv2.imwrite(str(d / f"{name}_dark.jpg"), cv2.convertScaleAbs(bgr, alpha=0.6, beta=10))
    print(f"wrote {len(list(d.glob('*.jpg')))} photos to {d}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "out/demo/photos")
