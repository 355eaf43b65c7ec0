"""What compressing the local descriptors costs: PCA-64 int8 (as stored) vs full 128-d RootSIFT.

Val only: 25 ``lm-val`` queries of ``twostage_check.py`` (its work folder) and their global top
60 (same landmark = positive pair). The shipped setting (320 px, 500 keypoints on both sides),
the shipped matcher and MAGSAC verification; the share of positive and negative pairs reaching 8
and 12 inliers.

    python benchmarks/local_compression_check.py --work /tmp/twostage
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from regatt_sdk.bench.machine import machine_info  # noqa: E402
from regatt_sdk.local.codec import load_codebook, rootsift  # noqa: E402
from regatt_sdk.local.extract import LocalConfig, detect  # noqa: E402
from regatt_sdk.local.match import match_many  # noqa: E402
from regatt_sdk.local.verify import verify  # noqa: E402
from regatt_sdk.store import FeatureStore  # noqa: E402
from twostage_check import make_checks  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/twostage"))
    ap.add_argument("--queries", type=int, default=25)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "local_compression")
    args = ap.parse_args(argv)
    book = load_codebook()
    sets = json.loads((args.work / "sets.json").read_text())
    store = FeatureStore.open(args.work / "db")
    names, vec = store.names, np.asarray(store.vectors)
    row = {n: i for i, n in enumerate(names)}
    check = make_checks(sets, names)["lm-val"]
    rng = np.random.default_rng(0)
    queries = [check.queries[i] for i in rng.choice(len(check.queries), args.queries, replace=False)]
    cfg = LocalConfig()
    cache: dict[str, tuple] = {}

    def feats(path):
        if path not in cache:
            kp, sift, _ = detect(cv2.imread(path), cfg)
            cache[path] = (kp[:, :2], sift)
        return cache[path]

    codecs = {"pca64-int8 (stored)": lambda x: book.decode(book.encode(x)), "rootsift-128 float": rootsift}
    rows = []
    for label, codec in codecs.items():
        pos, neg = [], []
        for path, positives, junk in queries:
            s = vec[check.rows] @ vec[row[path]]
            cands = [names[i] for i in check.rows[np.argsort(-s)][:60] if names[i] not in junk]
            q = feats(path)
            cf = [feats(c) for c in cands]
            for c, f, m in zip(cands, cf, match_many(codec(q[1]), [codec(f[1]) for f in cf])):
                n = verify(q[0][m[:, 0]], f[0][m[:, 1]]).inliers if len(m) else 0
                (pos if c in positives else neg).append(n)
        pos, neg = np.array(pos), np.array(neg)
        rows.append({"descriptors": label, "positives": len(pos), "negatives": len(neg),
                     "pos_ge8": 100 * float(np.mean(pos >= 8)), "pos_ge12": 100 * float(np.mean(pos >= 12)),
                     "neg_ge8": 100 * float(np.mean(neg >= 8)), "neg_ge12": 100 * float(np.mean(neg >= 12))})  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    res = {"machine": machine_info(2), "queries": args.queries, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(res, indent=1))
    lines = [
        "# Local descriptors: PCA-64 int8 (stored) vs full RootSIFT (val)",
        "",
        f"Made by `benchmarks/local_compression_check.py`: {args.queries} lm-val queries x their global top 60, "
        "320 px / 500 keypoints, the shipped matcher and MAGSAC. Share of pairs reaching 8 / 12 inliers.",
        "",
        "| descriptors | positive pairs | >= 8 | >= 12 | negative pairs | >= 8 | >= 12 |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(f"| {r['descriptors']} | {r['positives']} | {r['pos_ge8']:.1f} % | {r['pos_ge12']:.1f} % | "
                     f"{r['negatives']} | {r['neg_ge8']:.2f} % | {r['neg_ge12']:.2f} % |")  # fmt: skip
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
