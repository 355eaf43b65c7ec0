"""Learn the shipped local-feature codebook (PCA-64 int8 + a 128 x 128 vocabulary tree).

Photos: the ImageNet sample and ImageNet extra folders of ../shared/data (object photos of the
1000 ImageNet classes), independent of every held-out check (landmarks-train, Paris) and of
any user's collection. Up to ``--per-image`` SIFT descriptors from each photo (random, seeded).

    python benchmarks/local_codebook.py --out sdk/regatt_sdk/local/codebook.npz
"""

from __future__ import annotations

import argparse
import hashlib
import time
from pathlib import Path

import cv2
import numpy as np

from regatt_sdk.local.codec import train_codebook
from regatt_sdk.local.extract import LocalConfig, detect

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("sdk/regatt_sdk/local/codebook.npz"))
    ap.add_argument("--folders", nargs="+", default=[str(SHARED / "imagenet-sample"), str(SHARED / "imagenet-extra")])
    ap.add_argument("--per-image", type=int, default=120)
    ap.add_argument("--coarse", type=int, default=128)
    ap.add_argument("--fine", type=int, default=128)
    ap.add_argument("--dims", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    files = sorted(p for f in args.folders for p in Path(f).rglob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
    t0 = time.time()
    parts = []
    for i, f in enumerate(files):
        img = cv2.imread(str(f), cv2.IMREAD_GRAYSCALE)
        if img is None:
            continue
        _, sift, _ = detect(img, LocalConfig())
        if len(sift) > args.per_image:
            sift = sift[rng.choice(len(sift), args.per_image, replace=False)]
        parts.append(sift)
        if i % 500 == 0:
            print(f"{i}/{len(files)} photos, {time.time() - t0:.0f} s", flush=True)
    sift = np.concatenate(parts)
    print(f"{len(sift)} descriptors from {len(parts)} photos in {time.time() - t0:.0f} s; training", flush=True)
    book = train_codebook(sift, dims=args.dims, coarse=args.coarse, fine=args.fine, seed=args.seed)
    listing = hashlib.sha256("\n".join(p.name for p in files).encode()).hexdigest()[:16]
    book.save(
        args.out, photos=str(len(parts)), descriptors=str(len(sift)), folders=",".join(Path(f).name for f in args.folders),
        listing_sha256=listing, command=f"python benchmarks/local_codebook.py --per-image {args.per_image} --coarse {args.coarse} --fine {args.fine} --dims {args.dims} --seed {args.seed}",
    )  # fmt: skip
    print(f"wrote {args.out}: {book.words} words, {book.dims} dims, hash {book.hash}, {time.time() - t0:.0f} s total")


if __name__ == "__main__":
    main()
