"""Build the dedup benchmark and compute every image's signals (``regatt dedup``'s calibration).

    python benchmarks/dedup_data.py --model default_x.onnx --work /tmp/dedup_bench

For each of the ``val`` and ``test`` landmark splits of ``../shared/data/landmarks-train``
(``regatt_export.splits``: landmark-disjoint, sorted position), ``--originals`` photos of every
landmark each get ``--copies`` edited copies (the edits of ``regatt_sdk.dedup.edits`` in turn);
every other photo of those landmarks stays as a same-scene distractor, and half of
``../shared/data/imagenet-sample`` (even positions for val, odd for test) are extra negatives.
Written under ``WORK/SPLIT/``: ``images/`` (the edited copies; originals are read in place),
``items.json`` (path, copy group, landmark, edit), and ``signals.npz`` (descriptors, our DCT
hash, the local features ``regatt dedup`` extracts from a file (:func:`regatt_sdk.local.extract`:
keypoints, int8 descriptors, per-image counts, scales and sizes), imagededup's PHash/DHash/WHash).
Any export works (the default has no ``--explain`` outputs and needs none).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "sdk"), str(ROOT / "export")]

from regatt_export.splits import landmark_split  # noqa: E402
from regatt_sdk.dedup import edits  # noqa: E402
from regatt_sdk.dedup.phash import phash  # noqa: E402
from regatt_sdk.imageio import read_image  # noqa: E402
from regatt_sdk.local.extract import extract  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"


def build(split: str, work: Path, originals: int, copies: int, seed: int) -> list[dict]:
    root = SHARED / "landmarks-train"
    rng = np.random.default_rng(seed + (0 if split == "val" else 1))
    items: list[dict] = []
    out = work / split / "images"
    out.mkdir(parents=True, exist_ok=True)
    names = list(edits.EDITS)
    k = 0
    for landmark in landmark_split(root)[split]:
        photos = sorted(p for p in (root / landmark).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        chosen = set(rng.choice(len(photos), size=min(originals, len(photos)), replace=False).tolist())
        for i, p in enumerate(photos):
            group = f"{landmark}/{p.stem}"
            items.append({"path": str(p), "group": group, "landmark": landmark, "edit": "original"})
            if i not in chosen:
                continue
            image = read_image(p)
            for c in range(copies):
                name = names[k % len(names)]
                k += 1
                dst = out / f"{landmark}__{p.stem}__{name}.jpg"
                edited = edits.apply(name, image, rng)
                # the edit did its own JPEG step; store it nearly losslessly (q20 edits at q100)
                quality = 100 if name.startswith(("jpeg", "resize_half")) else 95
                cv2.imwrite(str(dst), edited, [cv2.IMWRITE_JPEG_QUALITY, quality])
                items.append({"path": str(dst), "group": group, "landmark": landmark, "edit": name})
    imagenet = sorted(p for p in (SHARED / "imagenet-sample").iterdir() if p.suffix.lower() in (".jpeg", ".jpg"))
    for p in imagenet[(0 if split == "val" else 1) :: 2][:250]:
        items.append(
            {"path": str(p), "group": f"imagenet/{p.stem}", "landmark": f"imagenet/{p.stem}", "edit": "original"}
        )
    return items


def imagededup_hashes(paths: list[str]) -> dict[str, np.ndarray]:
    """imagededup's PHash, DHash, WHash of each image as uint64 ``(N,)`` (hex strings parsed)."""
    from imagededup.methods import DHash, PHash, WHash

    out = {}
    for cls in (PHash, DHash, WHash):
        method = cls(verbose=False)
        hexes = [method.encode_image(image_file=p) for p in paths]
        out[f"imagededup_{cls.__name__.lower()}"] = np.array([int(h, 16) for h in hexes], dtype=np.uint64)
    return out


def signals(items: list[dict], model: str) -> dict[str, np.ndarray]:
    from regatt_sdk.encoder import Encoder

    enc = Encoder(model, device="cpu")
    descs, hashes, kps, ldesc, counts, geo = [], [], [], [], [], []
    t0 = time.perf_counter()
    for n, it in enumerate(items):
        image = read_image(it["path"])
        descs.append(enc.encode(image))
        hashes.append(phash(image))
        f = extract(image)
        kps.append(f.kp)
        ldesc.append(f.desc)
        counts.append(len(f))
        geo.append((f.scale, f.width, f.height))
        if n % 200 == 0:
            print(f"  {n}/{len(items)} {time.perf_counter() - t0:.0f} s", flush=True)
    return {
        "descriptors": np.stack(descs).astype(np.float32),
        "dct_hash": np.array(hashes, dtype=np.uint64),
        "local_kp": np.concatenate(kps).astype(np.float32),
        "local_desc": np.concatenate(ldesc).astype(np.int8),
        "local_counts": np.array(counts, dtype=np.int64),
        "local_geo": np.array(geo, dtype=np.float64),  # scale, width, height per image
        "card_hash": np.array(enc.card.hash),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="the exported model (the default export)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/dedup_bench"))
    ap.add_argument("--originals", type=int, default=10, help="edited photos per landmark")
    ap.add_argument("--copies", type=int, default=3, help="edited copies per chosen photo")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--splits", default="val,test")
    args = ap.parse_args()
    for split in args.splits.split(","):
        items = build(split, args.work, args.originals, args.copies, args.seed)
        (args.work / split / "items.json").write_text(json.dumps(items, indent=0))
        print(f"{split}: {len(items)} images", flush=True)
        paths = [it["path"] for it in items]
        data = signals(items, args.model)
        data.update(imagededup_hashes(paths))
        np.savez(args.work / split / "signals.npz", **data)
        print(f"{split}: signals written", flush=True)


if __name__ == "__main__":
    main()
