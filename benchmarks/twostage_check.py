"""The two-stage check: global search alone vs global + visual-word candidates verified with
local features and geometry, on real multi-view photos, choosing on val and reporting on test.

Checks (all held out from everything learned: the codebook was learned on ImageNet photos, the
global model's attention on the train landmarks):

- ``lm-val`` / ``lm-test``: every photo of the val / test landmarks of ``landmarks-train`` (split
  by landmark, :func:`regatt_export.splits.landmark_split`) is a query; the other photos of its
  landmark are the positives (different photos of the same place), itself junk. The database
  holds the split's photos plus 1,380 distractors (the train landmarks' photos) unless the row
  says "no distractors".
- ``paris``: the Paris subset, every photo a query against the other 249.
- ``clutter-val`` / ``clutter-test``: phone-like queries made realistic: 5 photos per val/test
  landmark, each warped in perspective (corners moved up to 12 %), rotated up to 8 degrees,
  re-lit (gain, gamma, colour cast), blurred, partly covered (10-25 % of it by another photo),
  pasted at 30-50 % of the frame into a 1024-px ImageNet photo, JPEG 60-85. ``multi-view``:
  positives are the *other* photos of its landmark (the pasted photo is junk);
  ``catalogue``: the pasted photo's clean original is the only positive (like a catalogue image
  of a product: the same pixels warped, the easy case for geometry, reported apart).

Choices made on val only: the best mean mAP of ``lm-val``, ``clutter-val`` multi-view and
``clutter-val`` catalogue among the settings that lose at most 0.3 mAP on ``lm-val`` to the
global search alone (re-ranking must not hurt the clean case): the query-side local-feature
setting, the MAGSAC threshold, ``min_inliers`` and ``weight`` of the fused score.
Writes ``benchmarks/results/twostage.{json,md}``.

    python benchmarks/twostage_check.py /tmp/rg/default.onnx --work /tmp/twostage
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np

HERE = Path(__file__).resolve().parent
SHARED = HERE.parents[1] / "shared" / "data"
sys.path.insert(0, str(HERE))

from regatt_sdk.bench.machine import machine_info  # noqa: E402
from regatt_sdk.evaluation import compute_ap  # noqa: E402
from regatt_sdk.local.extract import LocalConfig, extract  # noqa: E402
from regatt_sdk.local.rerank import RerankConfig, Reranker  # noqa: E402
from regatt_sdk.store import FeatureStore  # noqa: E402

EXT = {".jpg", ".jpeg", ".png"}
CANDIDATES = 100  # global top K verified (the issue's --rerank 100)
MAX_LM_LOSS = 0.3  # the most lm-val mAP a chosen setting may lose to the global search alone
PASSES = [(LocalConfig(320, 500), 6.0), (LocalConfig(640, 1000), 6.0), (LocalConfig(640, 1000), 10.0)]
qcfgs_all = [cfg for cfg, _ in PASSES]
MIN_INLIERS = (8, 10, 12, 15, 20, 25, 30)
WEIGHTS = (0.1, 0.3, 1.0, 10.0)
BOW = 100  # visual-word candidates added


def photos(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in EXT)


def realistic_view(photo: np.ndarray, background: np.ndarray, occluder: np.ndarray, rng: np.random.Generator):
    """``photo`` as a phone would see it in clutter (see the module docstring) -> (image, box)."""
    side = 1024
    bh, bw = background.shape[:2]
    r = side / max(bh, bw)
    canvas = cv2.resize(background, (round(bw * r), round(bh * r)), interpolation=cv2.INTER_CUBIC)
    H, W = canvas.shape[:2]
    ph, pw = photo.shape[:2]
    f = rng.uniform(0.30, 0.50) * min(W / pw, H / ph) * 1.0
    small = cv2.resize(photo, (max(8, round(pw * f)), max(8, round(ph * f))), interpolation=cv2.INTER_AREA)
    sh, sw = small.shape[:2]
    # occlusion: a patch of another photo over 10-25 % of the pasted one
    frac = rng.uniform(0.10, 0.25)
    oh, ow = max(4, int(sh * np.sqrt(frac))), max(4, int(sw * np.sqrt(frac)))
    oy, ox = int(rng.integers(0, sh - oh + 1)), int(rng.integers(0, sw - ow + 1))
    small = small.copy()
    small[oy : oy + oh, ox : ox + ow] = cv2.resize(occluder, (ow, oh))
    # lighting: gain, gamma, colour cast
    lit = small.astype(np.float32) / 255.0
    lit = np.power(lit, rng.uniform(0.7, 1.4)) * rng.uniform(0.7, 1.2) * rng.uniform(0.85, 1.15, 3)
    small = np.clip(lit * 255.0, 0, 255).astype(np.uint8)
    # perspective + rotation into the canvas
    src = np.float32([[0, 0], [sw, 0], [sw, sh], [0, sh]])
    jitter = rng.uniform(-0.12, 0.12, (4, 2)).astype(np.float32) * np.float32([sw, sh])
    ang = np.deg2rad(rng.uniform(-8, 8))
    rot = np.float32([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
    dst = (src + jitter - np.float32([sw / 2, sh / 2])) @ rot.T
    dst -= dst.min(axis=0)
    ext = dst.max(axis=0)
    x0 = rng.uniform(0, max(1.0, W - ext[0]))
    y0 = rng.uniform(0, max(1.0, H - ext[1]))
    dst += np.float32([x0, y0])
    M = cv2.getPerspectiveTransform(src, dst.astype(np.float32))
    warped = cv2.warpPerspective(small, M, (W, H), flags=cv2.INTER_LINEAR)
    mask = cv2.warpPerspective(np.full((sh, sw), 255, np.uint8), M, (W, H))
    out = np.where(mask[..., None] > 127, warped, canvas)
    out = cv2.GaussianBlur(out, (0, 0), rng.uniform(0.5, 1.5))
    ok, jpg = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(60, 86))])
    box = [int(dst[:, 0].min()), int(dst[:, 1].min()), int(dst[:, 0].max()), int(dst[:, 1].max())]
    return jpg, box


def build_sets(work: Path, seed: int = 0) -> dict:
    from regatt_export.splits import landmark_split

    root = SHARED / "landmarks-train"
    split = landmark_split(root)
    sets: dict = {"db": [], "labels": {}, "queries": {}}
    for part in ("val", "test", "train"):
        for lm in split[part]:
            for p in photos(root / lm):
                sets["db"].append(str(p))
                sets["labels"][str(p)] = (part, lm)
    for lm_dir in sorted(d for d in (SHARED / "paris6k-subset").iterdir() if d.is_dir()):
        for p in photos(lm_dir):
            sets["db"].append(str(p))
            sets["labels"][str(p)] = ("paris", lm_dir.name)
    backgrounds = photos(SHARED / "imagenet-extra")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(backgrounds))
    k = 0
    (work / "clutter").mkdir(parents=True, exist_ok=True)
    for part in ("val", "test"):
        qs = []
        for lm in split[part]:
            ps = photos(root / lm)
            for i in np.linspace(0, len(ps) - 1, 5).round().astype(int):
                src = ps[int(i)]
                bg, occ = backgrounds[order[k]], backgrounds[order[k + 1]]
                k += 2
                jpg, box = realistic_view(cv2.imread(str(src)), cv2.imread(str(bg)), cv2.imread(str(occ)), rng)
                out = work / "clutter" / f"{part}__{lm}__{src.stem}.jpg"
                out.write_bytes(jpg.tobytes())
                qs.append({"path": str(out), "landmark": lm, "source": str(src), "box": box})
        sets["queries"][f"clutter-{part}"] = qs
    return sets


def encode_db(model: Path, db: list[str], store: Path) -> dict:
    from regatt_sdk.encoder import Encoder
    from regatt_sdk.pipeline import encode_to_store

    if (store / "manifest.json").exists():
        return {}
    enc = Encoder(model, device="cpu")
    t = time.perf_counter()
    r = encode_to_store(enc, db, store, local=True, progress=False)
    return {"images": r.encoded, "seconds": time.perf_counter() - t}


def average_precision(order: np.ndarray, names: list[str], positives: set[str], junk: set[str]) -> float:
    return compute_ap([names[i] for i in order], positives, junk)


class Check:
    """One check: queries (path, positives, junk), the database rows it may return."""

    def __init__(self, name: str, queries: list[tuple[str, set[str], set[str]]], rows: np.ndarray):
        self.name, self.queries, self.rows = name, queries, rows


def make_checks(sets: dict, names: list[str]) -> dict[str, Check]:
    row_of = {n: i for i, n in enumerate(names)}
    labels = sets["labels"]
    by_part: dict[str, list[str]] = {}
    for n in names:
        by_part.setdefault(labels[n][0], []).append(n)
    distract = [row_of[n] for n in by_part["train"]]
    checks = {}
    for part in ("val", "test"):
        own = [row_of[n] for n in by_part[part]]
        qs = []
        for n in by_part[part]:
            pos = {m for m in by_part[part] if labels[m][1] == labels[n][1] and m != n}
            qs.append((n, pos, {n}))
        checks[f"lm-{part}"] = Check(f"lm-{part}", qs, np.array(own + distract))
        checks[f"lm-{part}-nodistractors"] = Check(f"lm-{part} (no distractors)", qs, np.array(own))
        cq = sets["queries"][f"clutter-{part}"]
        mv = [
            (q["path"], {m for m in by_part[part] if labels[m][1] == q["landmark"]} - {q["source"]}, {q["source"]})
            for q in cq
        ]
        cat = [(q["path"], {q["source"]}, set()) for q in cq]
        checks[f"clutter-{part}"] = Check(f"clutter-{part} multi-view", mv, np.array(own + distract))
        checks[f"clutter-{part}-catalogue"] = Check(f"clutter-{part} catalogue", cat, np.array(own + distract))
    paris = [row_of[n] for n in by_part["paris"]]
    checks["paris"] = Check(
        "paris", [(n, {m for m in by_part["paris"] if labels[m][1] == labels[n][1] and m != n}, {n}) for n in by_part["paris"]],
        np.array(paris),
    )  # fmt: skip
    return checks


class Runner:
    """Global and two-stage rankings for one check, with verifications cached per setting."""

    def __init__(self, encoder, store: FeatureStore, reranker: Reranker):
        self.enc, self.store, self.rr = encoder, store, reranker
        self.names = store.names
        self.vectors = np.asarray(store.vectors)
        self.qvec: dict[str, np.ndarray] = {}
        self.qloc: dict[tuple[str, LocalConfig], object] = {}
        self.cache: dict[tuple, dict[int, int]] = {}  # (query, qcfg, threshold) -> row -> inliers
        self.timing: list[dict] = []

    def vec(self, path: str) -> np.ndarray:
        if path not in self.qvec:
            self.qvec[path] = self.enc.encode(path)
        return self.qvec[path]

    def loc(self, path: str, qcfg: LocalConfig):
        key = (path, qcfg)
        if key not in self.qloc:
            self.qloc[key] = extract(cv2.imread(path), qcfg, self.rr.local.codebook)
        return self.qloc[key]

    def stage(self, check: Check, qi: int, qcfg: LocalConfig, cfg: RerankConfig, timed: bool = False):
        """(global order of the check's rows, candidates, inliers per candidate row)."""
        path, _, junk = check.queries[qi]
        t0 = time.perf_counter()
        q = self.vec(path)
        scores = self.vectors[check.rows] @ q
        order = check.rows[np.argsort(-scores, kind="stable")]
        t1 = time.perf_counter()
        f = self.loc(path, qcfg)
        t2 = time.perf_counter()
        bow = self.rr.ivf.scores(f.words)[check.rows]
        bow_rows = check.rows[np.argsort(-bow, kind="stable")[:BOW]]
        t3 = time.perf_counter()
        glob = order[:CANDIDATES]
        cands = np.concatenate([glob, bow_rows[~np.isin(bow_rows, glob)]])
        key = (path, qcfg, cfg.threshold, cfg.ratio)
        done = self.cache.setdefault(key, {})
        todo = np.array([r for r in cands if int(r) not in done], np.int64)
        if len(todo):
            gs = self.vectors[todo] @ q
            for v in self.rr.verify_rows(f, todo, gs, cfg):
                done[v.row] = v.inliers
        t4 = time.perf_counter()
        if timed:
            self.timing.append({"global_ms": 1e3 * (t1 - t0), "query_local_ms": 1e3 * (t2 - t1),
                                "bow_ms": 1e3 * (t3 - t2), "verify_ms": 1e3 * (t4 - t3), "verified": len(todo)})  # fmt: skip
        return order, glob, bow_rows, done, scores, junk


def fused_order(order, cands, inliers, gscore, cfg: RerankConfig) -> np.ndarray:
    s = {int(r): float(gscore[int(r)]) for r in cands}
    for r in cands:
        n = inliers.get(int(r), 0)
        if n >= cfg.min_inliers:
            s[int(r)] += cfg.weight * min(n, cfg.cap) / cfg.cap
    head = sorted(s, key=lambda r: -s[r])
    rest = order[~np.isin(order, head)]
    return np.concatenate([np.array(head, np.int64), rest])


def evaluate(runner: Runner, check: Check, qcfg: LocalConfig, cfg: RerankConfig, *, bow: bool = True,
             timed: bool = False) -> dict:  # fmt: skip
    names = runner.names
    ap_g, ap_2, top1_g, top1_2, rec_g, rec_b, rec_u, hit_g, hit_u = ([] for _ in range(9))
    for qi, (path, pos, junk) in enumerate(check.queries):
        if not pos:
            continue
        order, glob, bow_rows, inl, scores, junk = runner.stage(check, qi, qcfg, cfg, timed=timed)
        gscore_all = runner.vectors @ runner.vec(path)
        cands = np.concatenate([glob, bow_rows[~np.isin(bow_rows, glob)]]) if bow else glob
        new = fused_order(order, cands, inl, gscore_all, cfg)
        ap_g.append(average_precision(order, names, pos, junk))
        ap_2.append(average_precision(new, names, pos, junk))
        first = lambda o: next(names[i] for i in o if names[i] not in junk)  # noqa: E731
        top1_g.append(first(order) in pos)
        top1_2.append(first(new) in pos)
        gset = {names[i] for i in glob}
        bset = {names[i] for i in bow_rows}
        rec_g.append(len(pos & gset) / len(pos))
        rec_b.append(len(pos & bset) / len(pos))
        rec_u.append(len(pos & (gset | bset)) / len(pos))
        hit_g.append(bool(pos & gset))
        hit_u.append(bool(pos & (gset | bset)))
    m = lambda xs: 100.0 * float(np.mean(xs))  # noqa: E731
    return {
        "check": check.name, "queries": len(ap_g), "database": len(check.rows),
        "map_global": m(ap_g), "map_twostage": m(ap_2), "top1_global": m(top1_g), "top1_twostage": m(top1_2),
        "recall_global@100": m(rec_g), "recall_bow@100": m(rec_b), "recall_union": m(rec_u),
        "any_positive_global@100": m(hit_g), "any_positive_union": m(hit_u),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    from regatt_sdk.encoder import Encoder

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("--work", type=Path, default=Path("/tmp/twostage"))
    ap.add_argument("--out", type=Path, default=HERE / "results" / "twostage")
    ap.add_argument("--md-only", action="store_true", help="rewrite the .md from the .json")
    args = ap.parse_args(argv)
    if args.md_only:
        write_md(json.loads(args.out.with_suffix(".json").read_text()), args.out.with_suffix(".md"))
        return 0
    args.work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    sets_file = args.work / "sets.json"
    if sets_file.exists():
        sets = json.loads(sets_file.read_text())
    else:
        sets = build_sets(args.work)
        sets_file.write_text(json.dumps(sets))
    store_path = args.work / "db"
    enc_info = encode_db(args.model, sets["db"], store_path)
    print(f"database encoded {enc_info} ({time.time() - t0:.0f} s)", flush=True)
    store = FeatureStore.open(store_path)
    rr = Reranker(store)
    runner = Runner(Encoder(args.model, device="cpu"), store, rr)
    checks = make_checks(sets, store.names)

    # --- choose on val: query-side local features, threshold, min_inliers, weight.
    # Rule (stated before the runs): the best mean mAP of the val checks among the settings that
    # lose at most MAX_LM_LOSS mAP on lm-val against the global search alone (re-ranking must not
    # hurt the clean multi-view case); if none qualifies, the best lm-val.
    val = [checks["lm-val"], checks["clutter-val"], checks["clutter-val-catalogue"]]
    base = {c.name: evaluate(runner, c, qcfgs_all[0], RerankConfig(min_inliers=10**9))["map_global"] for c in val}
    grid_file = args.work / "grid.json"
    grid = json.loads(grid_file.read_text()) if grid_file.exists() else []
    for qcfg, thr in PASSES:
        if any(g["query_side"] == qcfg.side and g["threshold"] == thr for g in grid):
            continue
        for mi, w in itertools.product(MIN_INLIERS, WEIGHTS):
            cfg = replace(RerankConfig(), threshold=thr, min_inliers=mi, weight=w)
            r = [evaluate(runner, c, qcfg, cfg) for c in val]
            grid.append({"query_side": qcfg.side, "query_keypoints": qcfg.keypoints, "threshold": thr,
                         "min_inliers": mi, "weight": w, "lm_val": r[0]["map_twostage"],
                         "clutter_val": r[1]["map_twostage"], "clutter_val_catalogue": r[2]["map_twostage"],
                         "mean": sum(x["map_twostage"] for x in r) / len(r)})  # fmt: skip
        grid_file.write_text(json.dumps(grid))
        print(f"val grid {qcfg} thr {thr} done ({time.time() - t0:.0f} s)", flush=True)
    ok = [g for g in grid if g["lm_val"] >= base["lm-val"] - MAX_LM_LOSS]
    best = max(ok, key=lambda g: g["mean"]) if ok else max(grid, key=lambda g: g["lm_val"])
    qcfg = LocalConfig(best["query_side"], best["query_keypoints"])
    cfg = replace(RerankConfig(), threshold=best["threshold"], min_inliers=best["min_inliers"], weight=best["weight"])
    print(f"val global: {base}; chosen on val: {best}", flush=True)

    # --- report
    rows = []
    for key in (
        "lm-val",
        "clutter-val",
        "clutter-val-catalogue",
        "lm-test",
        "lm-test-nodistractors",
        "paris",
        "clutter-test",
        "clutter-test-catalogue",
    ):
        r = evaluate(runner, checks[key], qcfg, cfg, timed=key == "lm-test")
        rows.append(r)
        print(json.dumps(r), flush=True)
    no_bow = evaluate(runner, checks["clutter-test-catalogue"], qcfg, cfg, bow=False)
    no_bow_mv = evaluate(runner, checks["clutter-test"], qcfg, cfg, bow=False)
    tm = runner.timing
    timing = {k: float(np.median([t[k] for t in tm])) for k in tm[0]} if tm else {}
    per_image_kb = (
        1e-3 * sum(store.side_bytes(f) for f in ("local.rows", "local.kp", "local.desc", "local.words")) / store.count
    )
    result = {
        "machine": machine_info(2), "model": str(args.model), "database_encode": enc_info,
        "chosen": best, "val_global": base, "max_lm_loss": MAX_LM_LOSS, "grid": grid, "rows": rows,
        "global_candidates_only": {"clutter-test-catalogue": no_bow, "clutter-test": no_bow_mv},
        "timing_lm_test_median_ms": timing, "local_kb_per_image": per_image_kb,
        "candidates": CANDIDATES, "bow": BOW, "seconds": time.time() - t0,
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    write_md(result, args.out.with_suffix(".md"))
    return 0


def write_md(res: dict, out: Path) -> None:
    c = res["chosen"]
    mi = res["machine"]
    lines = [
        "# Two-stage retrieval: global top 100 + visual-word top 100, verified (held out)",
        "",
        f"Made by `benchmarks/twostage_check.py` ({res['seconds'] / 60:.0f} min). Machine: {mi.get('cpu_model', mi)}.",
        f"Model: the default export; database: {next(r['database'] for r in res['rows'] if r['check'] == 'lm-test')} photos for lm-test (326 of the test landmarks + "
        "1,380 distractors); local features: SIFT at 320 px, 500 keypoints, PCA-64 int8, "
        f"{res['local_kb_per_image']:.1f} KB per image on disk.",
        f"Chosen on val (best mean mAP of lm-val, clutter-val multi-view and catalogue among settings losing <= {res['max_lm_loss']} on lm-val): query side {c['query_side']} px / {c['query_keypoints']} keypoints, "
        f"MAGSAC threshold {c['threshold']} px, min inliers {c['min_inliers']}, weight {c['weight']}.",
        "Val mAP, global -> two-stage with the chosen setting: "
        + ", ".join(
            f"{k} {v:.2f} -> {c[key]:.2f}"
            for (k, v), key in zip(
                res.get("val_global", {}).items(), ("lm_val", "clutter_val", "clutter_val_catalogue")
            )
        )
        + ".",
        "",
        "| check | queries | database | mAP global | mAP two-stage | top-1 global | top-1 two-stage | positives in global top 100 | in visual-word top 100 | in the union |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in res["rows"]:
        lines.append(
            f"| {r['check']} | {r['queries']} | {r['database']} | {r['map_global']:.2f} | **{r['map_twostage']:.2f}** | "
            f"{r['top1_global']:.1f} | **{r['top1_twostage']:.1f}** | {r['recall_global@100']:.1f} | "
            f"{r['recall_bow@100']:.1f} | {r['recall_union']:.1f} |"
        )
    g = res["global_candidates_only"]
    lines += [
        "",
        "Verifying only the global top 100 (no visual-word candidates): "
        + "; ".join(f"{k}: mAP {v['map_twostage']:.2f}, top-1 {v['top1_twostage']:.1f}" for k, v in g.items()),
        "",
        "Median per-query time on lm-test (ms): "
        + ", ".join(f"{k} {v:.1f}" for k, v in res["timing_lm_test_median_ms"].items()),
        "(the verification of up to 200 candidates; measured while other jobs shared the 2 cores).",
    ]
    out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
