"""Time and peak memory of grouping stored descriptors: ``regatt dedup``'s range search +
grouping at 10k and 100k rows, beside imagededup's hash grouping on 10k.

    python benchmarks/dedup_scale.py --work /tmp/dedup_scale

The data are SYNTHETIC (no photos): unit 1280-d descriptors drawn around 2,000 cluster centres
(same-cluster cosine ~0.5, like photos of one kind) with 10 % of the rows planted as noisy
copies of another row (cosine ~0.9), written as a float32 memory-mapped file (a feature
store's ``vectors.f32``); grouped at cosine >= 0.85. imagededup gets 64-bit hashes with the same
copy structure (a copy flips 0-6 random bits) and groups them with ``find_duplicates`` at
Hamming distance <= 10. Each measurement runs in its own process (peak RSS from
VmHWM), interleaved A, B, A, B; reported: the median time, the largest peak RSS, and the
recall of the planted copy pairs.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "sdk"), str(ROOT / "export")]
RESULTS = ROOT / "benchmarks" / "results"
DIM = 1280
THRESHOLD = 0.85


def make(work: Path, n: int, seed: int = 0) -> Path:
    """Write ``vectors_{n}.f32`` (n, DIM), ``copies_{n}.npy`` (planted pairs) and ``hashes_{n}.npy``."""
    path = work / f"vectors_{n}.f32"
    if path.exists():
        return path
    work.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(2000, DIM)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    out = np.lib.format.open_memmap(work / "tmp.npy", "w+", np.float32, (n, DIM))
    block = 20_000
    for s in range(0, n, block):
        m = min(block, n - s)
        c = centres[rng.integers(0, 2000, m)]
        v = c + rng.normal(size=(m, DIM)).astype(np.float32) * (1.0 / np.sqrt(DIM))
        out[s : s + m] = v / np.linalg.norm(v, axis=1, keepdims=True)
    copies = rng.choice(n, size=(n // 10, 2), replace=False)  # row b becomes a copy of row a
    for s in range(0, copies.shape[0], block):
        a, b = copies[s : s + block, 0], copies[s : s + block, 1]
        v = out[a] + rng.normal(size=(a.size, DIM)).astype(np.float32) * (0.45 / np.sqrt(DIM))
        out[b] = v / np.linalg.norm(v, axis=1, keepdims=True)
    out.flush()
    np.asarray(out).tofile(path)
    del out
    (work / "tmp.npy").unlink()
    np.save(work / f"copies_{n}.npy", np.sort(copies, axis=1))
    hashes = rng.integers(0, 2**63, size=n, dtype=np.int64).astype(np.uint64) * np.uint64(2) + rng.integers(
        0, 2, n
    ).astype(np.uint64)
    for a, b in copies:
        flips = rng.choice(64, size=int(rng.integers(0, 7)), replace=False)
        mask = np.uint64(sum(1 << int(f) for f in flips))
        hashes[b] = hashes[a] ^ mask
    np.save(work / f"hashes_{n}.npy", hashes)
    return path


def recall(pairs: set, copies: np.ndarray) -> float:
    return float(np.mean([(int(a), int(b)) in pairs for a, b in copies]))


def run_ours(work: Path, n: int) -> dict:
    from regatt_sdk.dedup.find import group_by_cosine

    vectors = np.memmap(work / f"vectors_{n}.f32", "<f4", "r", shape=(n, DIM))
    t0 = time.perf_counter()
    res = group_by_cosine(vectors, THRESHOLD)
    dt = time.perf_counter() - t0
    found = set(zip(res.pairs[0].tolist(), res.pairs[1].tolist()))
    backend = "exact" if n < 20_000 else "ivf"
    return {"seconds": dt, "groups": len(res.groups), "pairs": len(found), "backend": backend,
            "copy_recall": recall(found, np.load(work / f"copies_{n}.npy"))}  # fmt: skip


def run_imagededup(work: Path, n: int) -> dict:
    from imagededup.methods import PHash

    hashes = np.load(work / f"hashes_{n}.npy")
    enc = {f"{k}.jpg": format(int(h), "016x") for k, h in enumerate(hashes)}
    t0 = time.perf_counter()
    dups = PHash(verbose=False).find_duplicates(encoding_map=enc, max_distance_threshold=10)
    dt = time.perf_counter() - t0
    found = set()
    for a, bs in dups.items():
        ia = int(a.split(".")[0])
        for b in bs:
            ib = int(b.split(".")[0])
            found.add((min(ia, ib), max(ia, ib)))
    return {"seconds": dt, "pairs": len(found), "copy_recall": recall(found, np.load(work / f"copies_{n}.npy"))}


def peak_rss_kib() -> int:
    """This process's own peak RSS (VmHWM). Not ``getrusage``: on Linux its ``ru_maxrss`` keeps
    the parent's high-water mark across fork + exec, so every child would report the parent's."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def child(method: str, work: Path, n: int) -> None:
    res = run_ours(work, n) if method == "regatt" else run_imagededup(work, n)
    res["peak_rss_mib"] = round(peak_rss_kib() / 1024, 1)
    print(json.dumps(res))


def measure(method: str, work: Path, n: int) -> dict:
    cmd = [sys.executable, __file__, "--child", method, "--n", str(n), "--work", str(work)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
    return json.loads(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/dedup_scale"))
    ap.add_argument("--child")
    ap.add_argument("--n", type=int)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.work, args.n)
        return
    for n in (10_000, 100_000):
        make(args.work, n)
    runs: dict[str, list[dict]] = {"regatt 10k": [], "imagededup PHash 10k": [], "regatt 100k": []}
    for _ in range(args.repeats):  # interleaved
        runs["regatt 10k"].append(measure("regatt", args.work, 10_000))
        runs["imagededup PHash 10k"].append(measure("imagededup", args.work, 10_000))
        runs["regatt 100k"].append(measure("regatt", args.work, 100_000))
    rows = {}
    for name, rs in runs.items():
        rows[name] = {"median_s": round(float(np.median([r["seconds"] for r in rs])), 2),
                      "peak_rss_mib": max(r["peak_rss_mib"] for r in rs), "runs": rs}  # fmt: skip
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next((ln.split(":", 1)[1].strip() for ln in lscpu.splitlines() if ln.startswith("Model name")), "")
    res = {"data": "synthetic descriptors and hashes (see the docstring)", "threshold": THRESHOLD, "dim": DIM,
           "machine": {"cpu": model, "cpus": len(__import__("os").sched_getaffinity(0)), "load": __import__("os").getloadavg()[0], "python": platform.python_version()},
           "results": rows}  # fmt: skip
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "dedup_scale.json").write_text(json.dumps(res, indent=1))
    lines = ["# dedup scaling: grouping stored descriptors (SYNTHETIC data)", "",
             f"Machine: {model}, {res['machine']['cpus']} CPUs, 1-min load average {res['machine']['load']:.1f} at the end. "
             "Made by `benchmarks/dedup_scale.py`; interleaved runs, each in its own process.", "",
             "| run | backend | median time (s) | peak RSS (MiB) | pairs found | planted-copy recall |",
             "| --- | --- | ---: | ---: | ---: | ---: |"]  # fmt: skip
    for name, r in rows.items():
        last = r["runs"][-1]
        lines.append(f"| {name} | {last.get('backend', 'BK-tree (find_duplicates)')} | {r['median_s']} | "
                     f"{r['peak_rss_mib']} | {last['pairs']} | {last['copy_recall']:.3f} |")  # fmt: skip
    (RESULTS / "dedup_scale.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
