"""Which photos to learn the default model's whitening from: measured, not assumed.

The issue asks whether the regional PCA whitening should be learned on the Paris subset, the
ImageNet sample or both. Two held-out protocols on the Paris6k subset (5 landmarks x 50 photos),
every evaluation photo a query against the other evaluation photos, mAP by the Oxford/Paris AP
rule; descriptors by the encoder's own head (checked against ``RegionalAttentionEncoder.head``):

* **same landmarks, other photos** (like searching Paris6k with a whitening learned on some of
  its photos): each landmark split 25/25 at random (``--seeds`` splits); the whitening sees the
  first halves, the second halves are searched;
* **unseen landmarks** (like searching Oxford with a Paris whitening): each of the 10 pairs of
  landmarks is searched with a whitening learned on the other 3 landmarks' photos.

Each protocol compares whitening data: ImageNet sample only (no Paris photo), Paris photos only,
and both, beside plain R-MAC. Writes ``whitening_data.json`` and ``whitening_data.md``.

    python benchmarks/whitening_data.py --cache /tmp/regatt-cache
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality_report import (  # noqa: E402
    Bank,
    Pooled,
    average_precisions,
    check_against_module,
    default_backbone_encoder,
    whitening_from,
)

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--paris", type=Path, default=SHARED / "paris6k-subset")
    ap.add_argument("--imagenet", type=Path, default=SHARED / "imagenet-sample")
    ap.add_argument("-S", "--max-side", type=int, default=512)
    ap.add_argument("--levels", type=int, default=5)
    ap.add_argument("--shrinkage", type=float, nargs="+", default=[0.3, 0.5])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--cache", type=Path, default=Path("/tmp/regatt-cache"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    log = lambda s: print(s, flush=True)  # noqa: E731
    from regatt_export.datasets import list_images

    t0 = time.perf_counter()
    encoder, _, cache = default_backbone_encoder("none", args.levels, args.max_side, args.cache)
    items = list_images(args.paris)
    labels = np.array([Path(it.name).parts[0] for it in items])
    names = [it.name for it in items]
    landmarks = sorted(set(labels))
    log(f"Paris: {len(items)} photos, {len(landmarks)} landmarks; ImageNet: {args.imagenet}; S={args.max_side}")
    paris = Bank(Pooled(encoder, cache, items, log))
    imagenet = Bank(Pooled(encoder, cache, list_images(args.imagenet), log))
    inet_rmax = imagenet.rmax.double().numpy()
    paris_rmax = [a[0].double().numpy() for a in paris.pooled.rmax]
    del imagenet

    def score(desc: np.ndarray, subset: np.ndarray) -> float:
        sub_labels = list(labels[subset])
        sub_names = [names[i] for i in subset]
        return float(100 * average_precisions(desc[subset], sub_labels, sub_names).mean())

    def describe(whitening) -> np.ndarray:
        return paris.descriptors(paris.regional(whitening), paris.weights(None))

    inet_w = {s: whitening_from(inet_rmax, s, 0.5) for s in args.shrinkage}
    worst = max(check_against_module(encoder, paris, w, encoder.attention) for w in inet_w.values())
    plain = describe(None)
    inet_desc = {s: describe(w) for s, w in inet_w.items()}

    def protocol(splits: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, list[float]]:
        out: dict[str, list[float]] = {}
        for train, test in splits:
            seen = np.concatenate([paris_rmax[i] for i in train])
            out.setdefault("plain R-MAC (no whitening)", []).append(score(plain, test))
            for s in args.shrinkage:
                out.setdefault(f"ImageNet sample, shrinkage {s}", []).append(score(inet_desc[s], test))
                out.setdefault(f"Paris photos, shrinkage {s}", []).append(
                    score(describe(whitening_from(seen, s, 0.5)), test)
                )
                both = np.concatenate([seen, inet_rmax])
                out.setdefault(f"Paris photos + ImageNet sample, shrinkage {s}", []).append(
                    score(describe(whitening_from(both, s, 0.5)), test)
                )
        return out

    halves = []
    for seed in range(args.seeds):
        rng = np.random.default_rng(seed)
        train = np.zeros(len(labels), bool)
        for lm in landmarks:
            idx = np.flatnonzero(labels == lm)
            train[rng.choice(idx, len(idx) // 2, replace=False)] = True
        halves.append((np.flatnonzero(train), np.flatnonzero(~train)))
    log("protocol 1: same landmarks, other photos")
    same = protocol(halves)
    pairs = []
    for pair in itertools.combinations(landmarks, 2):
        test = np.flatnonzero(np.isin(labels, pair))
        pairs.append((np.flatnonzero(~np.isin(labels, pair)), test))
    log("protocol 2: unseen landmarks (10 pairs)")
    unseen = protocol(pairs)
    result = {
        "max_side": args.max_side,
        "levels": args.levels,
        "paris_photos": len(items),
        "imagenet_folder": str(args.imagenet),
        "imagenet_regional_vectors": int(inet_rmax.shape[0]),
        "bulk_vs_module_max_abs_diff": worst,
        "seconds": time.perf_counter() - t0,
        "same_landmarks": {k: {"mean": float(np.mean(v)), "runs": v} for k, v in same.items()},
        "unseen_landmarks": {k: {"mean": float(np.mean(v)), "runs": v} for k, v in unseen.items()},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "whitening_data.json").write_text(json.dumps(result, indent=1))
    write_markdown(result, args.out / "whitening_data.md")
    log((args.out / "whitening_data.md").read_text())
    return 0


def write_markdown(result: dict, path: Path) -> None:
    lines = [
        f"# Which photos to learn the whitening from (efficientnet-lite0, S={result['max_side']}, L={result['levels']})",
        "",
        "Made by `benchmarks/whitening_data.py`. mAP on Paris6k-subset photos that the whitening did not see "
        "(each evaluation photo a query against the other evaluation photos). Power 0.5. "
        f"Bulk descriptors vs the encoder module's head: max |diff| {result['bulk_vs_module_max_abs_diff']:.1e}.",
        "",
        "| whitening learned on | same landmarks, other photos | unseen landmarks |",
        "| --- | ---: | ---: |",
    ]
    for key in result["same_landmarks"]:
        a, b = result["same_landmarks"][key]["mean"], result["unseen_landmarks"][key]["mean"]
        lines.append(f"| {key} | {a:.2f} | {b:.2f} |")
    n_same = len(next(iter(result["same_landmarks"].values()))["runs"])
    n_unseen = len(next(iter(result["unseen_landmarks"].values()))["runs"])
    lines += [
        "",
        f"Same landmarks: {n_same} random 25/25 splits of every landmark (the whitening sees one half). "
        f"Unseen landmarks: the {n_unseen} pairs of landmarks, each searched with a whitening learned on the other 3 "
        "(2 landmarks per search, so the numbers run high; compare rows, not columns).",
        "",
        "Reading: a whitening learned on photos of the landmarks being searched equalises exactly the few "
        "directions that separate them, and retrieval collapses; adding them to the ImageNet photos still "
        "costs several points. On landmarks it never saw, Paris photos help a little at best. The default "
        "model therefore learns its whitening on the ImageNet sample only: it is the one choice that never "
        "loses against plain R-MAC here.",
    ]
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
