"""Speed of the two stages, measured alone, one fresh process per measurement, interleaved.

1. ``regatt encode`` vs ``regatt encode --local`` on the same photos (images/s; the issue's
   target: --local keeps >= 70 % of plain encoding's rate).
2. One query end to end in a collection of ``--rows`` photos (default 10,000) with local
   features: describe the query (global + local), global search, visual-word candidates,
   verification of the global top 100 + visual-word top 100, fused ranking; and the
   verification of 100 candidates alone. The collection repeats the rows of a real store
   (``--store``, e.g. the 2,332 photos of ``twostage_check.py``) until it has ``--rows`` rows:
   the costs depend on how many rows and keypoints there are, not on which photos they are.

    python benchmarks/twostage_speed.py /tmp/rg/default.onnx --store /tmp/twostage/db \\
        --photos ../shared/data/paris6k-subset
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def child_encode(model: str, photos: str, local: bool) -> dict:
    from regatt_sdk.encoder import Encoder
    from regatt_sdk.pipeline import encode_to_store

    enc = Encoder(model, device="cpu")
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        r = encode_to_store(enc, [photos], Path(tmp) / "s", local=local, progress=False)
        dt = time.perf_counter() - t
    return {"local": local, "images": r.encoded, "seconds": dt, "images_per_s": r.encoded / dt}


def build_big(store: Path, out: Path, rows: int) -> None:
    """A store of ``rows`` rows repeating ``store``'s vectors and local features."""
    from regatt_sdk.local.codec import load_codebook
    from regatt_sdk.local.extract import LocalConfig
    from regatt_sdk.local.storage import DESC, KP, META, ROW_DTYPE, ROWS, WORDS, meta_after
    from regatt_sdk.store import FeatureStore

    src = FeatureStore.open(store)
    meta = src.side_meta[META]
    names, vecs = src.names, np.asarray(src.vectors)
    r = np.fromfile(src.side_path(ROWS), ROW_DTYPE, count=src.count)
    files = {f: src.side_path(f).read_bytes()[: src.side_bytes(f)] for f in (KP, DESC, WORDS)}
    dst = FeatureStore.create(out, card_hash=src.card_hash, dim=src.dim, model=src.manifest.get("model"))
    book = load_codebook()
    cfg = LocalConfig.from_json(meta["config"])
    total = 0
    copy = 0
    while dst.count < rows:
        n = min(src.count, rows - dst.count)
        rr = r[:n].copy()
        rr["end"] += total
        kpn = int(r["end"][n - 1])
        side = {
            ROWS: rr.tobytes(),
            KP: files[KP][: kpn * 8],
            DESC: files[DESC][: kpn * meta["dims"]],
            WORDS: files[WORDS][: kpn * 2],
        }
        m = {META: {**meta_after(dst, [], cfg, book)[META], "count": dst.count + n, "keypoints": total + kpn}}
        dst.append([f"copy{copy}/{x}" for x in names[:n]], vecs[:n], side=side, side_meta=m)
        total += kpn
        copy += 1
    dst.close()


def child_query(model: str, big: str, queries: list[str]) -> dict:
    from regatt_sdk.collection import Collection

    t = time.perf_counter()
    col = Collection.open(big, model)
    searcher = col.searcher()
    reranker = searcher.reranker()
    _ = reranker.ivf
    open_s = time.perf_counter() - t
    for q in queries[:2]:  # warm-up
        col.search(q, top=10, rerank=100)
    whole, global_only = [], []
    for q in queries:
        t = time.perf_counter()
        col.search(q, top=10, rerank=100)
        whole.append(time.perf_counter() - t)
        t = time.perf_counter()
        col.search(q, top=10)
        global_only.append(time.perf_counter() - t)
    # verification of exactly 100 candidates (the global top 100), no visual-word ones
    from dataclasses import replace

    import cv2

    from regatt_sdk.local.extract import extract

    cfg = replace(reranker.config, bow=0, candidates=100)
    verify100 = []
    for q in queries:
        vec = col.encoder.encode(q)
        qf = reranker.describe_query(cv2.imread(q))
        scores, rows = searcher.search_vectors(vec, 100)
        t = time.perf_counter()
        reranker.rerank(vec, qf, scores[0], rows[0], searcher.index.vectors, cfg)
        verify100.append(time.perf_counter() - t)
    # the same with queries described like the database (320 px / 500 keypoints): half the matching
    fast = replace(cfg, query_side=reranker.local.config.side, query_keypoints=reranker.local.config.keypoints)
    verify100_fast = []
    for q in queries:
        vec = col.encoder.encode(q)
        qf = extract(cv2.imread(q), fast.query_config(reranker.local.config), reranker.local.codebook)
        scores, rows = searcher.search_vectors(vec, 100)
        t = time.perf_counter()
        reranker.rerank(vec, qf, scores[0], rows[0], searcher.index.vectors, fast)
        verify100_fast.append(time.perf_counter() - t)
    med = lambda xs: 1e3 * float(np.median(xs))  # noqa: E731
    return {
        "rows": len(col), "open_s": open_s, "query_ms_two_stage": med(whole), "query_ms_global": med(global_only),
        "verify_100_ms": med(verify100), "verify_100_ms_query_as_db": med(verify100_fast), "queries": len(queries),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--store", type=Path, required=True)
    ap.add_argument("--photos", type=Path, required=True)
    ap.add_argument("--rows", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--queries", type=Path, default=Path("/tmp/twostage/clutter"))
    ap.add_argument("--work", type=Path, default=Path("/tmp/twostage-speed"))
    ap.add_argument("--out", type=Path, default=HERE / "results" / "twostage_speed")
    ap.add_argument("--child", nargs="*")
    args, rest = ap.parse_known_args(argv)
    if args.child is not None:
        kind = args.child[0]
        if kind == "encode":
            print(json.dumps(child_encode(args.model, str(args.photos), args.child[1] == "1")))
        else:
            qs = sorted(str(p) for p in args.queries.glob("test__*.jpg"))[:20]
            print(json.dumps(child_query(args.model, str(args.work / "big"), qs)))
        return 0
    from regatt_sdk.bench.machine import machine_info

    big = args.work / "big"
    if not (big / "manifest.json").exists():
        args.work.mkdir(parents=True, exist_ok=True)
        build_big(args.store, big, args.rows)
    common = [args.model, "--store", str(args.store), "--photos", str(args.photos), "--queries", str(args.queries),
              "--work", str(args.work)]  # fmt: skip
    enc = {"plain": [], "local": []}
    for _ in range(args.rounds):
        for local in (False, True):
            r = json.loads(subprocess.run([sys.executable, __file__, *common, "--child", "encode", "1" if local else "0"],
                                          capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1])  # fmt: skip
            enc["local" if local else "plain"].append(r["images_per_s"])
            print(json.dumps(r), flush=True)
    query = []
    for _ in range(args.rounds):
        r = json.loads(subprocess.run([sys.executable, __file__, *common, "--child", "query"], capture_output=True,
                                      text=True, check=True).stdout.strip().splitlines()[-1])  # fmt: skip
        query.append(r)
        print(json.dumps(r), flush=True)
    best = lambda xs: float(np.median(xs))  # noqa: E731
    res = {
        "machine": machine_info(2), "model": args.model, "photos": str(args.photos),
        "encode_images_per_s": {k: [round(x, 2) for x in v] for k, v in enc.items()},
        "encode_local_ratio": best(enc["local"]) / best(enc["plain"]),
        "query": query,
        "query_ms_two_stage": best([q["query_ms_two_stage"] for q in query]),
        "query_ms_global": best([q["query_ms_global"] for q in query]),
        "verify_100_ms": best([q["verify_100_ms"] for q in query]),
        "verify_100_ms_query_as_db": best([q["verify_100_ms_query_as_db"] for q in query]),
        "rows": query[0]["rows"],
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(res, indent=1))
    mi = res["machine"]
    lines = [
        "# Two-stage speed (one fresh process per measurement, interleaved)",
        "",
        f"Machine: {mi.get('cpu_model', '')}, 2 cores; made by `benchmarks/twostage_speed.py`.",
        "",
        "| measurement | value |",
        "| --- | ---: |",
        f"| `regatt encode` (plain), images/s (median of {args.rounds}) | {best(enc['plain']):.1f} |",
        f"| `regatt encode --local`, images/s | {best(enc['local']):.1f} |",
        f"| --local / plain | {res['encode_local_ratio']:.2f} |",
        f"| verify 100 candidates (match + MAGSAC + fuse), query 640 px / 1000 keypoints (default), ms | {res['verify_100_ms']:.0f} |",
        f"| the same, query described like the database (320 px / 500), ms | {res['verify_100_ms_query_as_db']:.0f} |",
        f"| whole query, global only, {res['rows']:,} rows, ms | {res['query_ms_global']:.0f} |",
        f"| whole query, two-stage (global 100 + visual words 100 verified), {res['rows']:,} rows, ms | {res['query_ms_two_stage']:.0f} |",
        "",
        f"The {res['rows']:,}-row collection repeats the local features and vectors of the "
        f"`twostage_check.py` store; queries: 20 phone-like clutter photos (1024 px).",
    ]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
