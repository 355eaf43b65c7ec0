"""Deep local features from the default backbone vs the shipped SIFT features, for verification.

The issue's option: local descriptors from the model's own feature map (a mid-level layer,
keypoints chosen by a score, as DELF/DELG). Here: EfficientNet-Lite0's stride-16 block output
(112 channels), keypoints = the cells with the largest feature norm (DELF's attention replaced by
the norm: nothing is learned, so nothing can have seen the checks), descriptor = the unit
112-d vector, position = the cell centre. Same matcher (mutual NN + ratio 0.85) and the same
MAGSAC homography as the shipped second stage; SIFT as shipped (database 320 px / 500,
queries 640 px / 1000).

Pairs (val only: this decides whether deep features ship, so it must not look at test): for 40
``lm-val`` queries their global top 60 (same landmark = positive pair), and each
``clutter-val`` catalogue query with its clean original (positive) and its global top 20 others
(negative). Measured: the share of positive pairs verified at the inlier threshold that lets at
most 1 % of negative pairs through.

    python benchmarks/deep_local_check.py --work /tmp/twostage
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from regatt_sdk.bench.machine import machine_info  # noqa: E402
from regatt_sdk.local.codec import load_codebook  # noqa: E402
from regatt_sdk.local.extract import LocalConfig, extract  # noqa: E402
from regatt_sdk.local.match import match_many  # noqa: E402
from regatt_sdk.local.verify import verify  # noqa: E402
from regatt_sdk.store import FeatureStore  # noqa: E402
from twostage_check import make_checks  # noqa: E402


class DeepLocal:
    """Stride-16 features of EfficientNet-Lite0 (ImageNet weights, as the default model's)."""

    def __init__(self):
        import torch

        from regatt_export.backbones.base import build_backbone

        self.torch = torch
        self.net = build_backbone("efficientnet-lite0").net
        torch.set_num_threads(2)

    def __call__(self, bgr: np.ndarray, side: int, keep: int):
        torch = self.torch
        h, w = bgr.shape[:2]
        f = side / max(h, w)
        img = cv2.resize(bgr, (max(16, round(w * f)), max(16, round(h * f))), interpolation=cv2.INTER_AREA)
        x = torch.from_numpy(img[:, :, ::-1].astype(np.float32).copy()).permute(2, 0, 1)[None]
        x = (x - 127.0) / 128.0
        with torch.no_grad():
            n = self.net
            x = n.bn1(n.conv_stem(x))
            for i, block in enumerate(n.blocks):
                x = block(x)
                if i == 4:
                    break
        fm = x[0].permute(1, 2, 0).numpy()  # (h16, w16, 112)
        gh, gw = fm.shape[:2]
        desc = fm.reshape(-1, fm.shape[2])
        norm = np.linalg.norm(desc, axis=1)
        order = np.argsort(-norm)[:keep]
        ys, xs = np.divmod(order, gw)
        xy = np.stack([(xs + 0.5) * img.shape[1] / gw, (ys + 0.5) * img.shape[0] / gh], axis=1).astype(np.float32)
        return xy, desc[order].astype(np.float32)


def inliers_deep(q, cands, threshold):
    ms = match_many(q[1], [c[1] for c in cands])
    return [
        verify(q[0][m[:, 0]], c[0][m[:, 1]], threshold=threshold).inliers if len(m) else 0 for c, m in zip(cands, ms)
    ]


def inliers_sift(q, cands):
    book = load_codebook()
    ms = match_many(book.decode(q.desc), [book.decode(c.desc) for c in cands])
    return [verify(q.points()[m[:, 0]], c.points()[m[:, 1]]).inliers if len(m) else 0 for c, m in zip(cands, ms)]


def share_at_fpr(pos, neg, fpr=0.01):
    pos, neg = np.asarray(pos), np.asarray(neg)
    for t in range(1, 500):
        if np.mean(neg >= t) <= fpr:
            return t, float(np.mean(pos >= t))
    return None, 0.0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/twostage"))
    ap.add_argument("--out", type=Path, default=HERE / "results" / "deep_local")
    args = ap.parse_args(argv)
    t0 = time.time()
    sets = json.loads((args.work / "sets.json").read_text())
    store = FeatureStore.open(args.work / "db")
    names, vec = store.names, np.asarray(store.vectors)
    row = {n: i for i, n in enumerate(names)}
    checks = make_checks(sets, names)
    from regatt_sdk.encoder import Encoder

    enc = Encoder(sorted(Path("/tmp/rg").glob("default.onnx"))[0], device="cpu")
    pairs = []  # (query path, candidate name, positive?, kind)
    rng = np.random.default_rng(0)
    lm = checks["lm-val"]
    for qi in rng.choice(len(lm.queries), 40, replace=False):
        path, pos, junk = lm.queries[int(qi)]
        s = vec[lm.rows] @ vec[row[path]]
        for r in lm.rows[np.argsort(-s)][:61]:
            if names[r] not in junk:
                pairs.append((path, names[r], names[r] in pos, "lm"))
    cat = checks["clutter-val-catalogue"]
    for path, pos, junk in cat.queries:
        s = vec[cat.rows] @ enc.encode(path)
        others = [names[r] for r in cat.rows[np.argsort(-s)][:21] if names[r] not in pos][:20]
        pairs += [(path, n, True, "catalogue") for n in pos] + [(path, n, False, "catalogue") for n in others]
    deep = DeepLocal()
    cache_d, cache_s = {}, {}
    book = load_codebook()
    q_cfg, db_cfg = LocalConfig(640, 1000), LocalConfig(320, 500)

    def d(path, query):
        key = (path, query)
        if key not in cache_d:
            side, keep = (1024, 1000) if query and "clutter" in path else (512, 500)
            cache_d[key] = deep(cv2.imread(path), side, keep)
        return cache_d[key]

    def s(path, query):
        key = (path, query)
        if key not in cache_s:
            cache_s[key] = extract(cv2.imread(path), q_cfg if query else db_cfg, book)
        return cache_s[key]

    result = {"machine": machine_info(2), "pairs": len(pairs)}
    by_q: dict[str, list] = {}
    for p in pairs:
        by_q.setdefault(p[0], []).append(p)
    scores = {"sift": [], "deep-6px": [], "deep-12px": []}
    for q, ps in by_q.items():
        cand = [p[1] for p in ps]
        scores["sift"] += inliers_sift(s(q, True), [s(c, False) for c in cand])
        scores["deep-6px"] += inliers_deep(d(q, True), [d(c, False) for c in cand], 6.0)
        scores["deep-12px"] += inliers_deep(d(q, True), [d(c, False) for c in cand], 12.0)
    labels = [(p[2], p[3]) for q, ps in by_q.items() for p in ps]
    rows = []
    for method, inl in scores.items():
        for kind in ("lm", "catalogue"):
            pos = [x for x, (y, k) in zip(inl, labels) if y and k == kind]
            neg = [x for x, (y, k) in zip(inl, labels) if not y and k == kind]
            t, share = share_at_fpr(pos, neg)
            rows.append({"method": method, "pairs": kind, "positives": len(pos), "negatives": len(neg),
                         "threshold_at_1pct": t, "positives_verified": 100 * share})  # fmt: skip
            print(json.dumps(rows[-1]), flush=True)
    result["rows"] = rows
    result["seconds"] = time.time() - t0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    lines = [
        "# Deep local features (EfficientNet-Lite0 stride 16, norm-selected) vs SIFT, for verification (val)",
        "",
        "Made by `benchmarks/deep_local_check.py` on val pairs only (it decides what ships). Share of positive pairs",
        "whose verified inliers reach the threshold that lets at most 1 % of negative pairs through; same matcher and",
        f"MAGSAC as the shipped second stage. Machine: {result['machine'].get('cpu_model', '')}.",
        "",
        "| features | pairs | positives / negatives | inlier threshold at 1 % of negatives | positives verified |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['pairs']} | {r['positives']} / {r['negatives']} | {r['threshold_at_1pct']} | {r['positives_verified']:.1f} % |"
        )
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
