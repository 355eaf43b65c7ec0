"""The scale trade-off of the default model: held-out mAP and CPU time per scale set.

For each scale set (``1``, ``1,1/sqrt2``, ``1,sqrt2``, ``1/sqrt2,1,sqrt2``, ``1,1.5``) and the
query-side preset (database at 1, queries at 1.5): mAP on the clutter check of ``val`` landmarks
(used to choose), and on the reported held-out checks: the clutter check of ``test`` landmarks,
the ``test`` landmark photos (every photo a query) and the Paris subset; ms per image and
images/s on this CPU at a 3:4 image of each model's prepared side (S=512: 384x512; a model with a
scale > 1 is fed ``round(max(scales) * S)``), models timed interleaved in one run.

How it is computed: a ``sum`` model's descriptor is the L2-normalised sum of its per-scale
descriptors, and each per-scale descriptor is approximated by a one-scale export ``--scales s``:
the photo prepared at ``round(s * S)`` from its own pixels when ``s >= 1`` (exact for the
largest scale of a set), at S and resized in the graph when ``s < 1``. A whole model describes
its smaller scales by resizing its larger input in the graph instead, which differs from the
SDK's resize of the original photo by interpolation only. So each image is encoded once per
distinct scale with one-scale exports, and the sets are sums of those. The
``regions`` aggregation cannot be split that way: its models are exported and run whole on the
clutter checks. Real multi-scale exports are timed beside the one-scale parts.

    .venv/bin/python benchmarks/scales_check.py --work /tmp/regatt-scales
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
SHARED = HERE.parents[1] / "shared" / "data"
R2 = math.sqrt(2.0)
SETS: dict[str, tuple[float, ...]] = {
    "1": (1.0,),
    "1, 1/sqrt2": (1.0, 1 / R2),
    "1, sqrt2": (1.0, R2),
    "1/sqrt2, 1, sqrt2": (1 / R2, 1.0, R2),
    "1, 1.5": (1.0, 1.5),
}
QUERY_SIDE = ("database 1, queries 1.5", (1.0,), (1.5,))
REGIONS_SETS = ("1, 1.5", "1/sqrt2, 1, sqrt2")


def export_model(scales: tuple[float, ...], aggregation: str, out: Path) -> Path:
    from regatt_export.build import EncoderConfig, build_encoder
    from regatt_export.onnx_export import CHECK_SIZES, export_onnx

    if out.exists() and _exported_before_input_side(out, scales):
        out.unlink()  # upsampled its S-sized input; its encodings too
        out.with_suffix(".npy").unlink(missing_ok=True)
    if not out.exists():
        enc, card = build_encoder(EncoderConfig(scales=scales, scale_aggregation=aggregation))
        export_onnx(enc, card, out, sizes=CHECK_SIZES)
    return out


def _exported_before_input_side(model: Path, scales: tuple[float, ...]) -> bool:
    """A cached export with a scale > 1 whose card predates ``input_side`` (fed at S)."""
    from regatt_sdk.card import read_card

    return max(scales) > 1 and read_card(model).input_side is None


def encode(model: Path, files: list, cache: Path) -> np.ndarray:
    from regatt_sdk import Encoder

    if cache.exists():
        return np.load(cache)
    vecs = Encoder(model, device="cpu").encode([str(f) for f in files], batch_size=1)
    np.save(cache, vecs)
    return vecs


def combine(parts: list[np.ndarray]) -> np.ndarray:
    g = np.sum(parts, axis=0)
    return g / np.linalg.norm(g, axis=1, keepdims=True)


def time_models(models: dict[str, Path], repeats: int) -> dict[str, float]:
    """Median ms per 3:4 image at each model's prepared side (``Encoder.prepare_side``; S=512:
    384x512), runs interleaved (A, B, A, B...)."""
    from regatt_sdk import Encoder
    from regatt_sdk.card import golden_image

    encs = {k: Encoder(p, device="cpu") for k, p in models.items()}
    images = {k: golden_image(int(round(0.75 * e.prepare_side)), e.prepare_side, 3)[None] for k, e in encs.items()}
    for k, e in encs.items():
        e.encode_prepared(images[k])
    times: dict[str, list[float]] = {k: [] for k in encs}
    for _ in range(repeats):
        for k, e in encs.items():
            t = time.perf_counter()
            e.encode_prepared(images[k])
            times[k].append(time.perf_counter() - t)
    return {k: 1000 * float(np.median(v)) for k, v in times.items()}


def main(argv: list[str] | None = None) -> int:
    from clutter_check import build_clutter_set, clutter_map
    from regatt_export.splits import landmark_split
    from regatt_sdk.bench.quality import landmark_map, landmark_set

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/regatt-scales"))
    ap.add_argument("--out", type=Path, default=HERE / "results" / "scales")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--no-regions", action="store_true")
    ap.add_argument("--sets", nargs="+", default=list(SETS), help="names of SETS to run")
    ap.add_argument("--per-landmark", type=int, default=5, help="clutter queries: photos pasted per landmark")
    ap.add_argument("--distractors", type=int, default=300)
    ap.add_argument(
        "--db-per-landmark", type=int, default=0, help="keep only this many clean photos per landmark (0: all)"
    )
    ap.add_argument("--no-paris", action="store_true")
    ap.add_argument(
        "--clutter-side",
        type=int,
        default=512,
        help="longest side of the clutter queries: 1024 makes them like phone photos (a high-resolution "
        "photo with the object small in it; the pasted photos keep their own pixels), 512 = S",
    )
    args = ap.parse_args(argv)
    sets = {k: SETS[k] for k in args.sets}
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    lm_root = SHARED / "landmarks-train"
    split = landmark_split(lm_root)
    clutter = {
        part: build_clutter_set(
            lm_root,
            SHARED / "imagenet-extra",
            work / f"clutter-{part}",
            part,
            args.per_landmark,
            distractors=args.distractors,
            side=args.clutter_side,
        )
        for part in ("val", "test")
    }
    if args.db_per_landmark:
        for cs in clutter.values():
            sources = {q.source for q in cs.queries}
            kept, seen = [], {}
            for path, lm in cs.database:
                if lm and path not in sources:
                    seen[lm] = seen.get(lm, 0) + 1
                    if seen[lm] > args.db_per_landmark:
                        continue
                kept.append((path, lm))
            cs.database = kept
    paris_files, paris_labels = ([], []) if args.no_paris else landmark_set(SHARED / "paris6k-subset")
    test_files = [p for p, lm in clutter["test"].database if lm]
    test_labels = [lm for _, lm in clutter["test"].database if lm]
    # every image once: clutter queries and databases of both parts, Paris
    images: list[str] = []
    for cs in clutter.values():
        images += [q.path for q in cs.queries] + [p for p, _ in cs.database]
    images += [str(p) for p in paris_files]
    images = sorted(set(images))
    row_of = {p: i for i, p in enumerate(images)}
    distinct = sorted({s for ss in sets.values() for s in ss} | set(QUERY_SIDE[2]))
    per_scale: dict[float, np.ndarray] = {}
    parts: dict[float, Path] = {}
    for s in distinct:
        parts[s] = export_model((s,), "sum", work / f"part-{s:.4f}.onnx")
        t = time.perf_counter()
        per_scale[s] = encode(parts[s], images, work / f"part-{s:.4f}.npy")
        print(f"scale {s:.4f}: {len(images)} images in {time.perf_counter() - t:.0f} s", flush=True)

    def take(vecs: np.ndarray, paths) -> np.ndarray:
        return vecs[[row_of[str(p)] for p in paths]]

    def checks(qvec: np.ndarray, dvec: np.ndarray) -> dict[str, float]:
        out = {}
        for part, cs in clutter.items():
            out[f"clutter_{part}"] = clutter_map(
                take(qvec, [q.path for q in cs.queries]), take(dvec, [p for p, _ in cs.database]), cs
            )
        out["landmarks_test"] = landmark_map(take(dvec, test_files), test_labels, take(qvec, test_files))
        if paris_files:
            out["paris"] = landmark_map(take(dvec, paris_files), paris_labels, take(qvec, paris_files))
        return out

    rows = []
    for name, ss in sets.items():
        vec = combine([per_scale[s] for s in ss])
        rows.append({"scales": name, "aggregation": "sum", "query_scales": name, **checks(vec, vec)})
    name, db_s, q_s = QUERY_SIDE
    rows.append(
        {
            "scales": "1",
            "aggregation": "sum",
            "query_scales": "1.5",
            "name": name,
            **checks(combine([per_scale[s] for s in q_s]), combine([per_scale[s] for s in db_s])),
        }
    )
    # the same preset through the product path: Encoder(query_scales=...).encode_query resizes the
    # ORIGINAL photo to round(1.5 S); the rows above do too since the card's input_side (a
    # "--scales 1.5" part is fed round(1.5 S) from the photo; exports before it upsampled the
    # S-prepared image in the graph, and are re-exported), so the two rows agree
    from regatt_sdk import Encoder

    sdk_q = np.array(per_scale[1.0])
    queries = sorted(
        {q.path for cs in clutter.values() for q in cs.queries} | {str(p) for p in test_files + list(paris_files)}
    )
    t = time.perf_counter()
    qenc = Encoder(parts[1.0], device="cpu", query_scales=q_s)
    qv = np.load(work / "sdk-query-side.npy") if (work / "sdk-query-side.npy").is_file() else None
    if qv is None or len(qv) != len(queries):
        qv = np.stack([qenc.encode_query(p) for p in queries])
        np.save(work / "sdk-query-side.npy", qv)
    for p, v in zip(queries, qv):
        sdk_q[row_of[p]] = v
    print(f"query side through Encoder(query_scales={q_s}): {len(queries)} queries in {time.perf_counter() - t:.0f} s")
    rows.append(
        {
            "scales": "1",
            "aggregation": "sum",
            "query_scales": "1.5 (Encoder.encode_query, original pixels)",
            "name": name + " (SDK)",
            **checks(sdk_q, combine([per_scale[s] for s in db_s])),
        }
    )
    timed = {f"part {s:.4f}": p for s, p in parts.items()}
    if not args.no_regions:
        for name in [n for n in REGIONS_SETS if n in sets]:
            model = export_model(
                SETS[name], "regions", work / f"regions-{name.replace(', ', '_').replace('/', '-')}.onnx"
            )
            timed[f"regions {name}"] = model
            imgs = sorted(
                {q.path for cs in clutter.values() for q in cs.queries}
                | {p for cs in clutter.values() for p, _ in cs.database}
            )
            vec = encode(model, imgs, model.with_suffix(".npy"))
            idx = {p: i for i, p in enumerate(imgs)}
            row = {"scales": name, "aggregation": "regions", "query_scales": name}
            for part, cs in clutter.items():
                q = vec[[idx[x.path] for x in cs.queries]]
                d = vec[[idx[p] for p, _ in cs.database]]
                row[f"clutter_{part}"] = clutter_map(q, d, cs)
            rows.append(row)
            print(f"regions {name}: {row}", flush=True)
    timed["sum 1, 1.5 (whole)"] = export_model(SETS["1, 1.5"], "sum", work / "sum-1_1.5.onnx")
    ms = time_models(timed, args.repeats)
    for r in rows:
        if r["aggregation"] == "sum":
            r["ms"] = sum(ms[f"part {s:.4f}"] for s in SETS[r["scales"]]) if "name" not in r else ms["part 1.0000"]
            if "name" in r:
                r["ms_query"] = ms["part 1.5000"]
        else:
            r["ms"] = ms[f"regions {r['scales']}"]
        r["images_per_s"] = 1000.0 / r["ms"]
        r["compute_vs_1"] = r["ms"] / ms["part 1.0000"]
    result = {
        "machine": machine(),
        "sets": {k: list(v) for k, v in sets.items()},
        "clutter": {
            k: {
                **cs.facts,
                "queries": len(cs.queries),
                "database": len(cs.database),
                "db_per_landmark": args.db_per_landmark,
            }
            for k, cs in clutter.items()
        },
        "split": {k: v for k, v in split.items() if k != "train"},
        "images": len(images),
        "timing_ms": ms,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    args.out.with_suffix(".md").write_text(markdown(result))
    plot(result, args.out.with_suffix(".png"))
    print(markdown(result))
    return 0


def machine() -> str:
    import platform
    import subprocess

    try:
        model = [
            ln.split(":", 1)[1].strip()
            for ln in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
            if ln.startswith("Model name")
        ][0]
    except (OSError, IndexError):
        model = platform.processor()
    import os

    return f"{model}, {os.cpu_count()} CPUs"


def markdown(result: dict) -> str:
    ms = result["timing_ms"]
    lines = [
        "# Scale trade-off of the default model (EfficientNet-Lite0, S=512)",
        "",
        f"Made by `benchmarks/scales_check.py`; {result['machine']}; timing: a 3:4 image at each model's prepared side (384x512 at S; a scale > 1 feeds "
        "round(max(scales) * 512)), median of "
        "interleaved runs, onnxruntime CPU. Val landmarks choose, the other columns are reported: "
        f"val {', '.join(result['split']['val'])}; test {', '.join(result['split']['test'])}.",
        "",
        "Clutter checks: "
        + "; ".join(
            f"{k}: {v['queries']} queries of longest side {v.get('side', 512)} px, {v['database']} database photos "
            f"({v['distractors']} distractors"
            + (
                f", at most {v['db_per_landmark']} clean photos per landmark besides the pasted ones"
                if v["db_per_landmark"]
                else ""
            )
            + ")"
            for k, v in result["clutter"].items()
        )
        + ".",
        "",
        "| scales | aggregation | queries at | clutter val mAP (choose) | clutter test mAP | test landmarks mAP | Paris subset mAP | ms / image | images/s | compute vs {1} |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in result["rows"]:

        def f(k):
            return f"{r[k]:.2f}" if k in r else "—"

        lines.append(
            f"| {r['scales']} | {r['aggregation']} | {r['query_scales']} | {f('clutter_val')} | {f('clutter_test')} | {f('landmarks_test')} | {f('paris')} | "
            f"{r['ms']:.1f} | {r['images_per_s']:.1f} | {r['compute_vs_1']:.2f}x |"
        )
    lines += [
        "",
        "`sum` rows: sums of one-scale exports (each scale from the photo's own pixels; see the script's docstring); their ms is the sum of the parts' ms. "
        f"A whole `--scales 1,1.5` sum export measured {ms['sum 1, 1.5 (whole)']:.1f} ms in the same run "
        f"(parts: {ms['part 1.0000'] + ms['part 1.5000']:.1f} ms). `regions` rows are whole exports, run on the clutter checks only. "
        "The query-side row describes the database at 1 and only the queries at 1.5 (its ms: the database's; a query costs "
        f"{ms['part 1.5000']:.1f} ms).",
        "",
    ]
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for key, marker in (("clutter_test", "o"), ("landmarks_test", "s"), ("paris", "^")):
        pts = [
            (r["compute_vs_1"], r[key], f"{r['scales']} ({r['aggregation']})" + (" q1.5" if "name" in r else ""))
            for r in result["rows"]
            if key in r
        ]
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], marker=marker, label=key)
        for x, y, t in pts:
            ax.annotate(t, (x, y), fontsize=6)
    ax.set_xlabel("compute vs single scale (ms ratio)")
    ax.set_ylabel("mAP (%)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    sys.exit(main())
