"""``regatt sync`` when little changed vs encoding the whole folder from scratch (issue 25's target:
a sync where 1 % changed takes <= 10 % of the time of encoding from scratch).

    python benchmarks/sync_bench.py MODEL --photos 2000 --changed 0.01 --out benchmarks/results

Makes ``--photos`` JPEG photos (640 x 480: the sample photos of scikit-image, cropped, shifted and
noised so that every file differs) in a temporary folder, then times, each in this process with
the same encoder:

1. ``sync`` into a new store (= encoding from scratch, plus the metadata: hash, header, EXIF);
2. ``sync`` again with nothing changed (every file stat-ed, none read);
3. ``sync`` after ``--changed`` of the photos were changed: a third rewritten with new pixels, a
   third deleted, a third new files added (so the run encodes about two thirds of them, reads
   and hashes those, and tombstones the deleted and replaced rows).

Writes ``sync_bench.{json,md}`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def make_photo(base: list[np.ndarray], i: int, salt: int = 0) -> np.ndarray:
    rng = np.random.default_rng(i * 7919 + salt)
    src = base[i % len(base)]
    h, w = src.shape[:2]
    scale = max(480 / h, 640 / w) * float(rng.uniform(1.0, 1.3))
    big = cv2.resize(src, (int(w * scale) + 1, int(h * scale) + 1))
    y = int(rng.integers(0, big.shape[0] - 480 + 1))
    x = int(rng.integers(0, big.shape[1] - 640 + 1))
    crop = big[y : y + 480, x : x + 640].astype(np.int16)
    crop += rng.integers(-12, 12, crop.shape, dtype=np.int16)
    return np.clip(crop, 0, 255).astype(np.uint8)


def write(folder: Path, base: list[np.ndarray], i: int, salt: int = 0) -> Path:
    sub = folder / f"f{i % 20:02d}"
    sub.mkdir(exist_ok=True)
    path = sub / f"{i:06d}.jpg"
    cv2.imwrite(str(path), make_photo(base, i, salt), [cv2.IMWRITE_JPEG_QUALITY, 90])
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path)
    ap.add_argument("--photos", type=int, default=2000)
    ap.add_argument("--changed", type=float, default=0.01)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--work", type=Path, default=None, help="folder for the photos and stores (default: a temp dir)")
    args = ap.parse_args()

    from conftest import sample_photos
    from regatt_sdk.compose import EncoderOptions, open_encoder
    from regatt_sdk.sync import sync

    work = Path(tempfile.mkdtemp(prefix="sync-bench-", dir=args.work))
    try:
        base = list(sample_photos().values())
        folder = work / "photos"
        folder.mkdir()
        t = time.monotonic()
        for i in range(args.photos):
            write(folder, base, i)
        made_s = time.monotonic() - t
        encoder = open_encoder(args.model, EncoderOptions(threads=args.threads))
        store = work / "store"
        runs = {}
        t = time.monotonic()
        r = sync(encoder, [str(folder)], store)
        runs["scratch"] = {"seconds": time.monotonic() - t, "added": r.added}
        t = time.monotonic()
        r = sync(encoder, [str(folder)], store)
        runs["unchanged"] = {"seconds": time.monotonic() - t, "unchanged": r.unchanged}
        n = max(3, int(round(args.photos * args.changed)))
        rng = np.random.default_rng(1)
        picked = rng.choice(args.photos, n, replace=False)
        third = n // 3
        for i in picked[:third]:
            write(folder, base, int(i), salt=1)  # new pixels
        for i in picked[third : 2 * third]:
            (folder / f"f{int(i) % 20:02d}" / f"{int(i):06d}.jpg").unlink()
        for k in range(n - 2 * third):
            write(folder, base, args.photos + k)
        t = time.monotonic()
        r = sync(encoder, [str(folder)], store)
        runs["changed"] = {"seconds": time.monotonic() - t, "added": r.added, "changed": r.changed,
                           "removed": r.removed, "unchanged": r.unchanged}  # fmt: skip
        share = runs["changed"]["seconds"] / runs["scratch"]["seconds"]
        result = {
            "photos": args.photos,
            "changed_share": args.changed,
            "photo_size": "640x480 JPEG q90",
            "model": {"file": args.model.name, "card_hash": str(encoder.card.hash), "max_side": encoder.max_side},
            "engine": encoder.choice.reason if getattr(encoder, "choice", None) else "",
            "threads": args.threads,
            "runs": runs,
            "changed_vs_scratch": share,
            "unchanged_vs_scratch": runs["unchanged"]["seconds"] / runs["scratch"]["seconds"],
            "photos_written_s": made_s,
            "machine": {
                "cpu": platform.processor() or platform.machine(),
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
            },  # fmt: skip
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sync_bench.json").write_text(json.dumps(result, indent=1) + "\n")
    c, s, u = runs["changed"], runs["scratch"], runs["unchanged"]
    md = f"""# regatt sync: {args.changed:.0%} changed vs encoding from scratch

Made by `python benchmarks/sync_bench.py MODEL --photos {args.photos} --changed {args.changed}` on
{result["machine"]["cpus"]} CPUs (shared with other jobs), model {args.model.name} (card
{str(encoder.card.hash)[:16]}, S={encoder.max_side}); {args.photos} photos, 640x480 JPEG, in 20 folders.

| run | seconds | what it did | share of scratch |
| --- | ---: | --- | ---: |
| from scratch (a new store) | {s["seconds"]:.1f} | {s["added"]} added | 100 % |
| nothing changed | {u["seconds"]:.2f} | {u["unchanged"]} unchanged (stat only) | {100 * u["seconds"] / s["seconds"]:.1f} % |
| {args.changed:.0%} changed | {c["seconds"]:.2f} | {c["added"]} added, {c["changed"]} changed, {c["removed"]} removed, {c["unchanged"]} unchanged | {100 * share:.1f} % |

Target (issue 25): a sync where 1 % changed takes <= 10 % of the time from scratch.
"""
    (args.out / "sync_bench.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
