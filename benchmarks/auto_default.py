"""Should ``--engine auto --precision auto`` be the default? Whole commands as users run them,
one fresh process each, the two settings interleaved: ``regatt encode`` of a photo folder into a
new store, and ``regatt search`` of one query (open + gate + encode one photo + rank), each with
the current defaults (onnxruntime fp32) and with ``auto``. The first ``auto`` process probes (a
fresh engine cache, emptied of all but the gates' retrieval verdicts); its time is reported apart.

    .venv/bin/python benchmarks/auto_default.py /tmp/rg24/default.onnx ../shared/data/paris6k-subset \
        --cache /tmp/rg24/window-cache.json --out benchmarks/results/auto_default
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SETTINGS = {"default": [], "auto": ["--engine", "auto", "--precision", "auto"]}


def regatt(args: list[str], cache: Path) -> tuple[float, str]:
    t = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "regatt_sdk", *args], capture_output=True, text=True,
        env=dict(os.environ, REGATT_ENGINE_CACHE=str(cache)),
    )  # fmt: skip
    wall = time.perf_counter() - t
    if out.returncode != 0:
        raise RuntimeError(f"regatt {' '.join(args)} failed: {(out.stderr.strip().splitlines() or ['?'])[-1]}")
    return wall, (out.stdout + out.stderr).strip()


def main(argv: list[str] | None = None) -> int:
    import numpy as np

    from regatt_sdk.bench.machine import machine_info

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("photos", type=Path)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--search-rounds", type=int, default=3)
    ap.add_argument("--cache", type=Path, default=Path("/tmp/regatt-auto-default.json"))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/auto_default"))
    args = ap.parse_args(argv)
    try:
        kept = {k: v for k, v in json.loads(args.cache.read_text()).items() if k.startswith("retrieval|")}
    except (OSError, ValueError):
        kept = {}
    args.cache.write_text(json.dumps(kept))
    photos = sorted(p for p in args.photos.rglob("*.jpg"))
    tmp = Path(tempfile.mkdtemp(prefix="regatt-auto-default-"))
    load_start = os.getloadavg()
    first_auto: dict[str, float] = {}
    times: dict[tuple[str, str], list[float]] = {}
    lines: dict[str, str] = {}
    try:
        for r in range(args.rounds):
            for name, flags in SETTINGS.items():
                store = tmp / f"{name}-{r}"
                wall, text = regatt(["encode", str(args.model), str(args.photos), "-o", str(store), *flags], args.cache)
                if name == "auto" and "encode" not in first_auto:
                    first_auto["encode"] = wall  # this one probed
                else:
                    times.setdefault(("encode", name), []).append(wall)
                lines[f"encode {name}"] = text.splitlines()[-1]
        query = photos[0]
        for r in range(args.search_rounds):
            for name, flags in SETTINGS.items():
                wall, text = regatt(
                    ["search", str(args.model), str(tmp / "default-0"), str(query), "--top", "5", *flags], args.cache
                )
                times.setdefault(("search", name), []).append(wall)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    rows = []
    for cmd in ("encode", "search"):
        base = float(np.median(times[(cmd, "default")]))
        for name in SETTINGS:
            ts = times.get((cmd, name))
            if not ts:  # one round: the only auto encode probed (reported apart)
                continue
            rows.append({"command": cmd, "setting": name, "s": float(np.median(ts)), "runs": [round(t, 2) for t in ts],
                         "speedup": base / float(np.median(ts))})  # fmt: skip
    report = {"model": str(args.model), "photos": len(photos), "rows": rows, "first_auto_s": first_auto,
              "last_lines": lines, "machine": machine_info(2), "load_start": list(load_start),
              "load_end": list(os.getloadavg())}  # fmt: skip
    report["command"] = " ".join(["python", *sys.argv])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))
    return 0


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [
        "# Whole commands: the defaults (onnxruntime fp32) vs --engine auto --precision auto",
        "",
        f"Made by `{report.get('command', 'benchmarks/auto_default.py')}`.",
        "",
        f"{report['model']}; {m['cpu_model']}, {m['usable_cpus']} usable CPUs, flags {', '.join(m['simd'])}. "
        f"Fresh process per command, settings interleaved; wall seconds (open + gates + work). Load average "
        f"{report['load_start']} -> {report['load_end']}.",
        "",
        "| command | setting | median s | runs | speed-up |",
        "|---|---|---:|---|---:|",
    ]
    for r in report["rows"]:
        what = f"encode {report['photos']} photos" if r["command"] == "encode" else "search one query"
        lines.append(f"| {what} | {r['setting']} | {r['s']:.2f} | {', '.join(map(str, r['runs']))} "
                     f"| {r['speedup']:.2f}x |")  # fmt: skip
    if report["first_auto_s"]:
        lines += ["", f"The first `auto` encode, which probed the engines: {report['first_auto_s']['encode']:.2f} s."]
    lines += ["", "Last lines:", ""] + [f"- {k}: `{v}`" for k, v in report["last_lines"].items()] + [""]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
