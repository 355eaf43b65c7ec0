"""Run the fault-injection and hostile-input suites and record their figures.

    .venv/bin/python benchmarks/faults_report.py [--out benchmarks/results]

Runs ``tests/test_faults.py`` and ``tests/test_hostile.py`` (real processes, a real PostgreSQL,
a real ``regatt serve`` on 127.0.0.1; about two minutes) with ``REGATT_FAULTS_JSON`` set, then
writes ``faults.json`` (the figures, the test outcome and the machine) and ``faults.md`` (a
table): faults injected and survived, rows lost (0 is the promise), the statuses the server gave
hostile input, its peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cpu_model() -> str:
    """The ``Model name`` line of ``lscpu`` (else the platform's processor string)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or "unknown"


def machine() -> dict:
    return {"cpu_model": cpu_model(), "cpus": os.cpu_count(), "python": platform.python_version(),
            "system": f"{platform.system()} {platform.release()}"}  # fmt: skip


def run_suites(figures: Path) -> dict:
    env = dict(os.environ, REGATT_FAULTS_JSON=str(figures))
    t = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-n", "0", "-p", "no:cacheprovider", "-rA",
         "tests/test_faults.py", "tests/test_hostile.py"],
        cwd=ROOT, env=env, capture_output=True, text=True,
    )  # fmt: skip
    outcomes = {}
    for line in proc.stdout.splitlines():
        for word in ("PASSED", "FAILED", "SKIPPED", "ERROR"):
            if line.startswith(word + " "):
                outcomes[line.split(" ", 1)[1].split(" - ")[0]] = word.lower()
    return {"returncode": proc.returncode, "seconds": round(time.monotonic() - t, 1), "tests": outcomes,
            "summary": proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr[-500:]}  # fmt: skip


def markdown(report: dict) -> str:
    f = report["figures"]
    m = report["machine"]
    lines = [
        "# Fault injection and hostile input",
        "",
        f"Machine: {m['cpu_model']}, {m['cpus']} CPUs, Python {m['python']}, {m['system']}; "
        f"{report['date']}; `{report['command']}`: {report['run']['summary']} in {report['run']['seconds']} s.",
        "",
        "| fault | injected | survived | rows (or files) lost | details |",
        "|---|---|---|---|---|",
    ]

    def row(name, injected, lost, details):
        lines.append(f"| {name} | {injected} | {injected if lost == 0 else 'no'} | {lost} | {details} |")

    if "encode_kill9" in f:
        e = f["encode_kill9"]
        row("kill -9 during `regatt encode`, then `--resume`", e["kills"], e["rows_lost"],
            f"{e['rows']} rows, bit for bit with a clean run; killed at rows {e['rows_at_each_kill']}")  # fmt: skip
    if "db_load_kill9" in f:
        e = f["db_load_kill9"]
        row("kill -9 during a `--db` load, then again", e["kills"], e["rows_lost"],
            f"{e['rows']} rows, table equal to the store bit for bit; rows in the table at the kill {e['rows_at_kill']}")  # fmt: skip
    if "dedup_move_kill9" in f:
        e = f["dedup_move_kill9"]
        row("kill -9 during `dedup --move-to`, then `--undo`", e["kills"], e["files_lost"],
            f"{e['moved_at_kill']} of {e['files']} files moved at the kill, every file restored byte for byte")  # fmt: skip
    if "postgres_outage" in f:
        e = f["postgres_outage"]
        row("PostgreSQL stopped under `regatt serve --db`", e["outages"], 0,
            f"{e['requests_during_outage']} requests answered {e['status']} + Retry-After, slowest in "
            f"{e['slowest_503_s']} s; searches back {e['recovery_s']} s after restart")  # fmt: skip
    if "enospc_simulated" in f:
        e = f["enospc_simulated"]
        row("ENOSPC mid-commit (simulated at the write layer)", e["faults"], e["rows_lost"],
            "the last commit kept; the next append works")  # fmt: skip
    if "enospc_tmpfs" in f:
        e = f["enospc_tmpfs"]
        row("a full 1 MiB tmpfs (store, then a dedup move)", 2, e["rows_lost"] + e["files_lost"],
            f"{e['store_rows_kept']} committed rows kept; every file left in place")  # fmt: skip
    if "two_writers" in f:
        e = f["two_writers"]
        row("two `regatt encode` on one store at once", 1, e["rows_lost"],
            f"{e['refused']} refused in one line; {e['rows']} rows after resuming")  # fmt: skip
    h = f.get("hostile", {})
    if h:
        lines += ["", "## Hostile input against `regatt serve` on 127.0.0.1", "",
                  f"Peak RSS {h.get('peak_rss_mb')} MiB (RSS when ready: {h.get('rss_at_start_mb')} MiB).", "",
                  "| input | status |", "|---|---|"]  # fmt: skip
        for label, status in sorted(h.get("statuses", {}).items()):
            lines.append(f"| {label} | {status} |")
        s = h.get("slow_clients")
        if s:
            lines += ["", f"Slow clients: {s['stalled_body']} stalled in their body got {s['status']} "
                      f"(the last after {s['last_408_s']} s, `--body-timeout 1`); with {s['stalled_headers']} more "
                      f"stalled in their headers, other requests were answered in {s['others_answered_s']} s."]  # fmt: skip
        d = h.get("dripping_client")
        if d:
            lines += ["", f"A client dripping its body a byte every 0.2 s got {d['status']} after {d['seconds']} s."]
    outcomes = report["run"]["tests"]
    bad = {k: v for k, v in outcomes.items() if v != "passed"}
    if bad:
        lines += ["", "Not passed: " + ", ".join(f"{k} ({v})" for k, v in sorted(bad.items()))]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        figures = Path(tmp) / "figures.json"
        run = run_suites(figures)
        data = json.loads(figures.read_text()) if figures.exists() else {}
    report = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine(),
              "command": "python benchmarks/faults_report.py", "run": run, "figures": data}  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "faults.json").write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
    (args.out / "faults.md").write_text(markdown(report))
    print(f"wrote {args.out / 'faults.json'} and faults.md: {run['summary']}")
    return 0 if run["returncode"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
