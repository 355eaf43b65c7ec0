"""A bounded load on ``regatt serve`` from a client process on 127.0.0.1, beside the Encoder's
own batch throughput on the same photos.

Writes ``benchmarks/results/serve_load.json`` and ``.md``.

    .venv/bin/python benchmarks/serve_load.py MODEL [--photos DIR] [--max-side 256]
        [--clients 8] [--requests 2000] [--warmup 200] [--serve-arg=--cpu-memory=arena]
        [--no-encoder] [--out PATH]

Order, in one run: Encoder batch throughput (``Encoder.encode(paths, batch_size=8)``, decoding
included), then the server under load, then the Encoder again (the machine is shared: the two
Encoder runs bracket the server run; ``--no-encoder`` skips both, for a memory-only run). The
server is ``regatt serve MODEL --max-side S`` in its own process (default micro-batching: 8
images, 5 ms window, queue 64; ``--serve-arg`` adds options); the clients are ``--clients``
threads of this process, each with one keep-alive connection, posting the photo bytes (read once
into memory) to ``/v1/encode`` round-robin: first ``--warmup`` requests (not timed), then
``--requests`` measured ones. Recorded: throughput, latency p50/p90/p99/max, status counts, the
server's RSS (``VmRSS`` from ``/proc``) sampled every 0.5 s, at the start of the measured
requests (after the warm-up), at their middle and at their end, the growth end / start and
max / start, and the batch-size histogram from ``/metrics``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "sdk"))
sys.path.insert(0, str(HERE))

from regatt_sdk.encoder import Encoder  # noqa: E402


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def encoder_throughput(model: Path, paths: list[Path], max_side: int) -> float:
    enc = Encoder(model, device="cpu", max_side=max_side)
    enc.encode([str(p) for p in paths[:16]], batch_size=8)  # warm-up
    t = time.perf_counter()
    enc.encode([str(p) for p in paths], batch_size=8)
    return len(paths) / (time.perf_counter() - t)


def start_server(model: Path, port: int, max_side: int, log: Path, extra: list[str]) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "sdk"), str(ROOT / "export")]))
    proc = subprocess.Popen(
        [sys.executable, "-m", "regatt_sdk", "serve", str(model), "--port", str(port), "--max-side", str(max_side),
         "--device", "cpu", "--log-level", "warning", *extra],
        stdout=open(log, "wb"), stderr=subprocess.STDOUT, env=env,
    )  # fmt: skip
    for _ in range(600):
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            c.request("GET", "/readyz")
            if c.getresponse().status == 200:
                return proc
        except OSError:
            pass
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {log.read_text()[-2000:]}")
        time.sleep(0.2)
    raise SystemExit("server not ready")


def load(port: int, bodies: list[bytes], clients: int, total: int, pid: int, first: int = 0) -> dict:
    """``total`` requests from ``clients`` threads (bodies from index ``first`` on, round-robin):
    throughput, latency, statuses, and ``rss_mib``: ``(seconds, requests done, MiB)`` samples."""
    lock = threading.Lock()
    state = {"next": 0, "done": 0}
    lat: list[float] = []
    statuses: dict[str, int] = {}
    rss: list[tuple[float, int, float]] = []
    stop = threading.Event()
    t0 = time.perf_counter()

    def sample() -> None:
        while not stop.is_set():
            rss.append((round(time.perf_counter() - t0, 2), state["done"], round(rss_mib(pid), 1)))
            stop.wait(0.5)

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        while True:
            with lock:
                i = state["next"]
                if i >= total:
                    break
                state["next"] += 1
            t = time.perf_counter()
            try:
                conn.request("POST", "/v1/encode", body=bodies[(first + i) % len(bodies)],
                             headers={"Accept": "application/octet-stream"})  # fmt: skip
                r = conn.getresponse()
                r.read()
                code = str(r.status)
            except (OSError, http.client.HTTPException) as exc:
                code = type(exc).__name__
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            dt = time.perf_counter() - t
            with lock:
                lat.append(dt)
                statuses[code] = statuses.get(code, 0) + 1
                state["done"] += 1
        conn.close()

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    wall = time.perf_counter() - t0
    stop.set()
    sampler.join()
    rss.append((round(wall, 2), state["done"], round(rss_mib(pid), 1)))
    ms = np.asarray(lat) * 1e3
    return {
        "requests": total, "clients": clients, "wall_s": round(wall, 2), "throughput_rps": round(total / wall, 2),
        "latency_ms": {k: round(float(np.percentile(ms, p)), 1) for k, p in (("p50", 50), ("p90", 90), ("p99", 99), ("max", 100))},
        "statuses": statuses, "rss_mib": rss,
    }  # fmt: skip


def batch_stats(port: int) -> dict:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request("GET", "/metrics")
    text = c.getresponse().read().decode()
    vals = {
        ln.rsplit(" ", 1)[0]: float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines() if ln and not ln.startswith("#")
    }
    n, s = vals.get("regatt_batch_size_count", 0), vals.get("regatt_batch_size_sum", 0)
    return {"batches": int(n), "images": int(s), "mean_batch": round(s / n, 2) if n else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("--photos", type=Path, default=ROOT.parent / "shared" / "data" / "paris6k-subset")
    ap.add_argument("--max-side", type=int, default=256)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--warmup", type=int, default=200, help="requests sent before the measured ones (not timed)")
    ap.add_argument("--serve-arg", action="append", default=[], help="an extra regatt serve option (repeatable)")
    ap.add_argument("--sizes", choices=("one", "all"), default="one",
                    help="one: the photos of the commonest size (batchable); all: every photo, mixed sizes")  # fmt: skip
    ap.add_argument("--no-encoder", action="store_true", help="skip the Encoder throughput runs (memory-only run)")
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "serve_load")
    args = ap.parse_args()
    from regatt_sdk.imageio import image_header

    paths = sorted(p for p in args.photos.rglob("*.jpg"))
    sizes = {}
    for p in paths:
        h = image_header(p.read_bytes())
        sizes.setdefault((h.width, h.height), []).append(p)
    if args.sizes == "one":
        (w, h), paths = max(sizes.items(), key=lambda kv: len(kv[1]))  # one size: the batcher can group them
        size_text: list[int] | str = [w, h]
    else:  # every photo: many prepared shapes, each a new input shape for the engine
        size_text = f"{len(sizes)} sizes"
    bodies = [p.read_bytes() for p in paths]
    print(f"{len(paths)} photos, {size_text}", flush=True)
    enc_a = None if args.no_encoder else encoder_throughput(args.model, paths, args.max_side)
    print(f"Encoder: {enc_a} img/s", flush=True)
    log = args.out.with_suffix(".server.log")
    load_start = [round(x, 2) for x in os.getloadavg()]
    proc = start_server(args.model, args.port, args.max_side, log, args.serve_arg)
    try:
        rss_ready = rss_mib(proc.pid)
        warm = load(args.port, bodies, args.clients, args.warmup, proc.pid) if args.warmup else None
        res = load(args.port, bodies, args.clients, args.requests, proc.pid, first=args.warmup)
        res["batching"] = batch_stats(args.port)
        res["rss_ready_mib"] = round(rss_ready, 1)
        res["warmup"] = None if warm is None else {k: warm[k] for k in ("requests", "wall_s", "statuses")}
    finally:
        proc.terminate()
        proc.wait(60)
    print(json.dumps({k: v for k, v in res.items() if k != "rss_mib"}), flush=True)
    enc_b = None if args.no_encoder else encoder_throughput(args.model, paths, args.max_side)
    print(f"Encoder: {enc_b} img/s", flush=True)
    from search_bench import machine_info

    enc = None if enc_a is None or enc_b is None else statistics.mean([enc_a, enc_b])
    result = {
        "model": str(args.model), "max_side": args.max_side, "photos": len(paths), "photo_size": size_text,
        "serve_args": args.serve_arg,
        "encoder_img_s": None if enc is None else [round(enc_a, 2), round(enc_b, 2)], "server": res,
        "throughput_vs_encoder": None if enc is None else round(res["throughput_rps"] / enc, 3),
        "p99_over_p50": round(res["latency_ms"]["p99"] / res["latency_ms"]["p50"], 2),
        "rss": rss_summary(res["rss_mib"], args.requests), "machine": machine_info(),
        "loadavg_at_start": load_start, "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
    }  # fmt: skip
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    args.out.with_suffix(".md").write_text(markdown(result), encoding="utf-8")
    log.unlink(missing_ok=True)
    print(f"wrote {args.out}.json/.md", flush=True)


def rss_summary(samples: list[tuple[float, int, float]], total: int) -> dict:
    """RSS (MiB) at the start of the measured requests (after the warm-up), when half were done,
    at the end, the largest, and the growth end / start - 1 and max / start - 1."""
    start = samples[0][2]
    middle = next(m for _, n, m in samples if n >= total // 2)
    end, peak = samples[-1][2], max(m for _, _, m in samples)
    return {
        "start_mib": start, "middle_mib": middle, "end_mib": end, "max_mib": peak,
        "min_mib": min(m for _, _, m in samples),
        "growth_end": round(end / start - 1, 4), "growth_max": round(peak / start - 1, 4),
    }  # fmt: skip


def markdown(r: dict) -> str:
    s = r["server"]
    lat = s["latency_ms"]
    errors = sum(v for k, v in s["statuses"].items() if k != "200")
    five = sum(v for k, v in s["statuses"].items() if k.startswith("5"))
    rss = s["rss_mib"]
    m = r["rss"]
    step = max(1, len(rss) // 8)
    enc = r["encoder_img_s"]
    extra = "".join(f" --serve-arg={a}" for a in r["serve_args"])
    warm = s["warmup"]["requests"] if s["warmup"] else 0
    size = r["photo_size"]
    size_text = f"of {size[0]}x{size[1]}" if isinstance(size, list) else f"in {size} (mixed)"
    flags = f"--requests {s['requests']} --warmup {warm}" + (" --sizes all" if isinstance(size, str) else "")
    flags += "" if enc else " --no-encoder"
    lines = [
        "# regatt serve under a bounded load", "",
        f"`python benchmarks/serve_load.py MODEL --max-side {r['max_side']} --clients {s['clients']} "
        f"{flags}{extra}`: "
        f"model `{Path(r['model']).name}` (the built-in default, EfficientNet-Lite0, 1280-d) at max side **{r['max_side']}** "
        f"(small, so the load fits this machine's 2 shared cores), {r['photos']} real Paris6k photos "
        f"{size_text} (../shared), posted as JPEG bytes to `/v1/encode` by {s['clients']} "
        f"client threads in another process on 127.0.0.1 (keep-alive), after {warm} warm-up requests. "
        f"Machine: {r['machine'].get('cpu', '')}, {r['machine'].get('cores', '')} cores, shared with other jobs; "
        f"load average (1/5/15 min) {' / '.join(map(str, r['loadavg_at_start']))} at the start, "
        f"{' / '.join(map(str, r['loadavg_at_end']))} at the end.", "",
        "| | value | target |", "| --- | ---: | ---: |",
        *([f"| Encoder batch throughput (before / after, decoding included) | {enc[0]} / {enc[1]} img/s | |"] if enc else []),
        f"| server throughput | {s['throughput_rps']} req/s | |",
        *([f"| server / Encoder | {r['throughput_vs_encoder']:.1%} | >= 90 % |"] if enc else []),
        f"| latency p50 / p90 / p99 / max | {lat['p50']} / {lat['p90']} / {lat['p99']} / {lat['max']} ms | |",
        f"| p99 / p50 | {r['p99_over_p50']} | <= 3 |",
        f"| errors (non-200) / 5xx | {errors} / {five} | 0 5xx |",
        f"| mean batch (from /metrics) | {s['batching']['mean_batch']} images in {s['batching']['batches']} batches | |",
        f"| server RSS when ready (before any request) | {s['rss_ready_mib']} MiB | |",
        f"| server RSS at start (after the warm-up) / middle / end | {m['start_mib']} / {m['middle_mib']} / {m['end_mib']} MiB | |",
        f"| RSS growth end / start (max / start) | {m['growth_end']:+.1%} ({m['growth_max']:+.1%}) | within 10 % |", "",
        "Server RSS over the run (seconds, requests done, MiB):", "",
        "| s | requests | RSS MiB |", "| ---: | ---: | ---: |",
        *[f"| {t} | {n} | {m} |" for t, n, m in rss[::step] + ([rss[-1]] if (len(rss) - 1) % step else [])], "",
    ]  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    main()
