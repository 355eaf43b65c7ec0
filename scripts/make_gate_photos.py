"""Write the retrieval gate's photos (``sdk/regatt_sdk/engines/gate_photos/``) from scikit-image's
bundled samples (all public domain or CC0: see the README written beside them).

Each photo is centre-cropped to 4:3 and resized to 256x192 (W x H), so the gate runs one input
shape (one compiled graph on OpenVINO), and stored as JPEG quality 95. Run it with the dev
extra (scikit-image) installed; the runtime only reads the files:

    .venv/bin/python scripts/make_gate_photos.py
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

OUT = Path(__file__).resolve().parents[1] / "sdk" / "regatt_sdk" / "engines" / "gate_photos"
#: name -> licence line (from scikit-image's docstrings)
PHOTOS = {
    "astronaut": "NASA, public domain",
    "camera": "CC0, Lav Varshney",
    "chelsea": "CC0, Stefan van der Walt",
    "coffee": "CC0, Rachel Michetti",
    "rocket": "SpaceX, public domain",
    "hubble_deep_field": "NASA, public domain",
    "immunohistochemistry": "no known copyright restrictions",
    "retina": "CC0 (Wikimedia Commons, Fundus photograph of normal left eye)",
}
WIDTH, HEIGHT = 256, 192


def to_bgr(img: np.ndarray) -> np.ndarray:
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    return np.ascontiguousarray(img[:, :, :3][:, :, ::-1])


def crop_4_3(img: np.ndarray) -> np.ndarray:
    h, w = img.shape[:2]
    if w * 3 > h * 4:  # too wide: cut the sides
        cw = h * 4 // 3
        x = (w - cw) // 2
        return img[:, x : x + cw]
    ch = w * 3 // 4
    y = (h - ch) // 2
    return img[y : y + ch]


def main() -> None:
    from skimage import data

    OUT.mkdir(parents=True, exist_ok=True)
    lines = [
        "# The retrieval gate's photos",
        "",
        "Made by `scripts/make_gate_photos.py` from scikit-image's bundled samples: centre-cropped to 4:3,",
        f"resized to {WIDTH}x{HEIGHT}, JPEG quality 95. Read by `regatt_sdk.engines.retrieval`.",
        "",
        "| file | source (scikit-image `data.*`) | licence |",
        "| --- | --- | --- |",
    ]
    for name, licence in PHOTOS.items():
        img = crop_4_3(to_bgr(getattr(data, name)()))
        img = cv2.resize(img, (WIDTH, HEIGHT), interpolation=cv2.INTER_AREA)
        path = OUT / f"{name}.jpg"
        cv2.imwrite(str(path), img, [cv2.IMWRITE_JPEG_QUALITY, 95])
        lines.append(f"| {path.name} | `{name}` | {licence} |")
    (OUT / "README.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {len(PHOTOS)} photos to {OUT}")


if __name__ == "__main__":
    main()
