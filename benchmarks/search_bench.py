"""Time one query against 100k random 2048-d unit vectors: exact numpy and FAISS flat.

Writes ``benchmarks/results/search_bench.json`` and ``.md`` with the machine's details.

    .venv/bin/python benchmarks/search_bench.py [--n 100000] [--dim 2048] [--repeats 7]

Measured per backend: top-100 for one query (the interactive ``regatt search`` case), the full
ranking for one query (what evaluation needs), and top-100 for a batch of 55 queries (the
Oxford5k query set) reported per query. Times are the median of ``--repeats`` runs after one
warm-up run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "sdk"))

from regatt_sdk.index import build_index  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def machine_info() -> dict:
    """CPU, core count, memory, Python / numpy / faiss versions and numpy's BLAS."""
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_gib = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    blas = "unknown"
    try:
        cfg = np.show_config(mode="dicts")  # numpy >= 2
        blas = cfg.get("Build Dependencies", {}).get("blas", {}).get("name", "unknown")
    except TypeError:
        pass
    try:
        import faiss

        faiss_version = faiss.__version__
    except ImportError:
        faiss_version = None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": mem_gib,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "blas": blas,
        "faiss": faiss_version,
    }


def timed(fn, repeats: int) -> float:
    """Median seconds of ``fn()`` over ``repeats`` runs after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def unit_rows(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((n, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--out", type=Path, default=RESULTS / "search_bench")
    args = ap.parse_args(argv)

    rng = np.random.default_rng(0)
    db = unit_rows(rng, args.n, args.dim)
    one = unit_rows(rng, 1, args.dim)
    batch = unit_rows(rng, 55, args.dim)
    rows = []
    backends = ["exact"]
    try:
        import faiss  # noqa: F401

        backends.append("faiss")
    except ImportError:
        print("faiss not installed: exact backend only", file=sys.stderr)
    for backend in backends:
        t0 = time.perf_counter()
        index = build_index(db, backend)
        build_s = time.perf_counter() - t0
        top1 = timed(lambda: index.search(one, 100), args.repeats)
        full1 = timed(lambda: index.rank(one), args.repeats)
        topb = timed(lambda: index.search(batch, 100), max(1, args.repeats // 2))
        # agreement with the exact backend on the top 100 (ties aside)
        rows.append(
            {
                "backend": backend,
                "build_s": round(build_s, 4),
                "top100_one_query_s": round(top1, 5),
                "full_rank_one_query_s": round(full1, 5),
                "top100_per_query_in_batch_of_55_s": round(topb / 55, 5),
            }
        )
        print(rows[-1], file=sys.stderr)
        del index
    exact_ids = build_index(db, "exact").search(batch, 100)[1]
    agree = None
    if "faiss" in backends:
        faiss_ids = build_index(db, "faiss").search(batch, 100)[1]
        agree = float((exact_ids == faiss_ids).mean())
    result = {
        "benchmark": "search_bench",
        "database": {"n": args.n, "dim": args.dim, "dtype": "float32", "unit_rows": True},
        "repeats": args.repeats,
        "machine": machine_info(),
        "results": rows,
        "exact_faiss_top100_index_agreement": agree,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(to_markdown(result))
    print(to_markdown(result))
    return result


def to_markdown(result: dict) -> str:
    m = result["machine"]
    db = result["database"]
    lines = [
        "# Search benchmark",
        "",
        f"One query against {db['n']:,} random {db['dim']}-d unit float32 vectors "
        f"(median of {result['repeats']} runs after a warm-up). Made by "
        "`benchmarks/search_bench.py`.",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB; {m['platform']}; "
        f"Python {m['python']}, numpy {m['numpy']} ({m['blas']}), faiss {m['faiss']}.",
        "",
        "| backend | build (s) | top-100, 1 query (s) | full ranking, 1 query (s) "
        "| top-100 per query, batch of 55 (s) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for r in result["results"]:
        lines.append(
            f"| {r['backend']} | {r['build_s']:.3f} | {r['top100_one_query_s']:.4f} | "
            f"{r['full_rank_one_query_s']:.4f} | {r['top100_per_query_in_batch_of_55_s']:.4f} |"
        )
    if result["exact_faiss_top100_index_agreement"] is not None:
        lines += [
            "",
            "Exact and FAISS top-100 indices agree on "
            f"{100 * result['exact_faiss_top100_index_agreement']:.2f} % of positions "
            "(differences only at float ties).",
        ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
