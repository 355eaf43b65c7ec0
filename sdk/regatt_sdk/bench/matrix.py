"""Engines x precisions on the same ``.onnx`` files, timed interleaved.

Shared by ``regatt bench --engine ...`` and ``benchmarks/engine_bench.py``. Every
engine/precision is opened through ``open_encoder(EncoderOptions(engine=..., precision=...))``,
so it passes its gates first (a refused one is kept with the reason, never timed).

By default (``separate=True``, as users run one engine per process) each round starts one fresh
process per variant, in turn (A, B, C, A, B, C, ...); each process opens its encoder, runs the
image twice (first call, static graph) and times ``per_process`` runs; a row's p50 is the median
of the processes' medians and its peak RSS the largest process's. ``separate=False`` opens every
variant in this process and times ``rounds`` rounds of one run each, in turn (engines then
disturb each other: onnxruntime's spinning workers take a core from the next engine).

Each row: median ms per image on a ``(1, H, W, 3)`` image, descriptor cosine to onnxruntime's on
the same file, the gates' figures, GFLOP/s (MACs from onnxruntime's profile of the file) as a
share of the peak of the row's precision (fp32: the machine's truthful fp32 peak; bf16, int8:
:func:`.peak.precision_peaks`).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..card import golden_image, read_card
from ..errors import RegattError
from .peak import share

#: (engine, compute precision) run on an fp32 file / on an INT8 file by default
FP32_VARIANTS: tuple[tuple[str, str], ...] = (("onnxruntime", "fp32"), ("openvino", "fp32"), ("openvino", "bf16"))
INT8_VARIANTS: tuple[tuple[str, str], ...] = (("onnxruntime", "fp32"), ("openvino", "fp32"))
ENGINES: tuple[str, ...] = ("onnxruntime", "openvino")
#: what ``--precision`` accepts: compute precisions, and ``int8`` (an INT8 file run as it is)
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "int8")

RSS_CODE = """
import sys, numpy as np
from regatt_sdk.compose import EncoderOptions, open_encoder
from regatt_sdk.card import golden_image
enc = open_encoder(sys.argv[1], EncoderOptions(engine=sys.argv[2], precision=sys.argv[3], threads=int(sys.argv[6])))
x = golden_image(int(sys.argv[4]), int(sys.argv[5]), 3)[None]
for _ in range(3):
    enc.encode_prepared(x)
# VmHWM, not ru_maxrss: on Linux ru_maxrss survives exec and reports the parent's peak
print(next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")) / 1024.0)
"""


CHILD_CODE = """
import json, sys, time
from regatt_sdk.card import golden_image
from regatt_sdk.compose import EncoderOptions, open_encoder
from regatt_sdk.errors import RegattError
path, engine, precision, h, w, threads, runs = sys.argv[1:8]
h, w, runs = int(h), int(w), int(runs)
t = time.perf_counter()
try:
    enc = open_encoder(path, EncoderOptions(engine=engine, precision=precision, threads=int(threads), max_side=max(h, w)))
except RegattError as exc:
    print(json.dumps({"refused": str(exc)}))
    sys.exit(0)
opened = time.perf_counter() - t
g = enc.choice.gates[0]
r = enc.choice.retrieval[0] if enc.choice.retrieval else None
x = golden_image(h, w, 11)[None]
t = time.perf_counter()
enc.encode_prepared(x)
first = 1000 * (time.perf_counter() - t)
enc.encode_prepared(x)
ts = []
for _ in range(runs):
    t = time.perf_counter()
    v = enc.encode_prepared(x)
    ts.append(1000 * (time.perf_counter() - t))
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")) / 1024.0
print(json.dumps({"times": ts, "first": first, "vector": [float(a) for a in v[0]], "rss": hwm,
                  "gate": {"passed": g.passed, "max_diff": g.max_diff, "min_cosine": g.min_cosine,
                           "open_and_gate_s": opened},
                  "retrieval": None if r is None else {"top10_mean": r.top10_mean, "map_delta": r.map_delta,
                                                       "map_variant": r.map_variant, "reference": r.reference}}))
"""


def run_child(path: Path, engine: str, precision: str, h: int, w: int, threads: int, runs: int) -> dict:
    """One fresh process: open (gated) ``path`` on ``engine``/``precision``, time ``runs`` runs."""
    out = subprocess.run(
        [sys.executable, "-c", CHILD_CODE, str(path), engine, precision, str(h), str(w), str(threads), str(runs)],
        capture_output=True, text=True,
    )  # fmt: skip
    try:
        return json.loads(out.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        tail = (out.stderr.strip().splitlines() or ["no output"])[-1]
        return {"refused": f"the timing process failed (exit {out.returncode}): {tail[:300]}"}


def precision_label(file_precision: str, precision: str) -> str:
    """What a row ran: ``int8`` for an INT8 file computed as it is, else the compute precision."""
    return "int8" if file_precision == "int8" and precision == "fp32" else precision


def variants_for(
    file_precision: str, engines: Sequence[str] | None = None, precisions: Sequence[str] | None = None
) -> list[tuple[str, str]]:
    """The ``(engine, compute precision)`` pairs to run on a file of ``file_precision``.

    ``engines``: any of :data:`ENGINES` (default both); ``precisions``: any of :data:`PRECISIONS`
    (default: what each engine offers: onnxruntime fp32, OpenVINO fp32 and bf16; an INT8 file
    runs as it is on each engine). A pair an engine cannot run is still listed: its gate
    refuses it, with the reason. ``bf16`` is not asked of an INT8 file, ``int8`` not of an fp32 one.
    """
    engines = tuple(engines) if engines else ENGINES
    bad = [e for e in engines if e not in ENGINES] + [p for p in precisions or () if p not in PRECISIONS]
    if bad:
        raise RegattError(f"{bad}: engines are {', '.join(ENGINES)}; precisions {', '.join(PRECISIONS)}")
    default = INT8_VARIANTS if file_precision == "int8" else FP32_VARIANTS
    out: list[tuple[str, str]] = []
    for engine in engines:
        if precisions is None:
            out += [v for v in default if v[0] == engine]
            continue
        for p in precisions:
            if file_precision == "int8" and p in ("int8", "fp32"):
                pair = (engine, "fp32")
            elif file_precision != "int8" and p in ("fp32", "bf16"):
                pair = (engine, p)
            else:
                continue
            if pair not in out:
                out.append(pair)
    return out


def peak_rss(path: Path, engine: str, precision: str, h: int, w: int, threads: int) -> float | None:
    """Peak RSS (MB) of a fresh process that opens ``path`` on ``engine`` and encodes 3 images."""
    out = subprocess.run(
        [sys.executable, "-c", RSS_CODE, str(path), engine, precision, str(h), str(w), str(threads)],
        capture_output=True, text=True,
    )  # fmt: skip
    try:
        return float(out.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return None


def bench_model(
    path: Path,
    h: int,
    w: int,
    rounds: int,
    threads: int,
    variants: Sequence[tuple[str, str]],
    label: str,
    *,
    macs: float | None = None,
    rss: bool = True,
    tick: Callable[[str], None] = lambda _what: None,
    separate: bool = True,
    per_process: int = 3,
) -> dict:
    """Time ``variants`` of one model interleaved at ``h x w`` (see the module docstring).

    Returns ``{model, path, backbone, attention, file_precision, macs, separate, rows, refused}``;
    each row has engine, precision, label, p50/min/first-call ms, cosine and max |diff| to
    onnxruntime's descriptor, GFLOP/s, the gates' figures and the peak RSS.
    """
    if separate:
        return _bench_separate(path, h, w, rounds, threads, variants, label, macs, tick, per_process)
    from ..compose import EncoderOptions, open_encoder
    from ..encoder import Encoder

    card = read_card(path)
    x = golden_image(h, w, 11)[None]
    opened: dict[tuple[str, str], Encoder] = {}
    refused: dict[str, str] = {}
    gate: dict[tuple[str, str], dict] = {}
    for engine, precision in variants:
        tick(f"{label}: gate {engine} {precision}")
        t = time.perf_counter()
        try:
            enc = open_encoder(
                path, EncoderOptions(engine=engine, precision=precision, threads=threads, max_side=max(h, w))
            )
        except RegattError as exc:  # the gate's refusal, or an engine not installed
            refused[f"{engine} {precision_label(card.precision, precision)}"] = str(exc)
            continue
        opened[(engine, precision)] = enc
        g = enc.choice.gates[0]
        gate[(engine, precision)] = {
            "passed": g.passed,
            "max_diff": g.max_diff,
            "min_cosine": g.min_cosine,
            "open_and_gate_s": time.perf_counter() - t,
        }
    first: dict[tuple[str, str], float] = {}
    for key, enc in opened.items():
        t = time.perf_counter()
        enc.encode_prepared(x)
        first[key] = 1000 * (time.perf_counter() - t)
        enc.encode_prepared(x)  # openvino shapes=auto: the second sight compiles the static graph
    times: dict[tuple[str, str], list[float]] = {k: [] for k in opened}
    for i in range(rounds):
        tick(f"{label}: round {i + 1}/{rounds}")
        for key, enc in opened.items():
            t = time.perf_counter()
            enc.encode_prepared(x)
            times[key].append(1000 * (time.perf_counter() - t))
    rows: list[dict] = []
    if opened:
        ref_key = ("onnxruntime", "fp32") if ("onnxruntime", "fp32") in opened else next(iter(opened))
        ref = opened[ref_key].encode_prepared(x)[0]
        if macs is None:
            from .profile import profile_model

            macs = profile_model(path, x, threads, runs=2).macs
        for key, enc in opened.items():
            engine, precision = key
            ms = float(np.median(times[key]))
            vec = enc.encode_prepared(x)[0]
            fp32 = card.precision == "fp32" and precision == "fp32"
            rows.append(
                {
                    "model": label, "engine": engine, "precision": precision, "file_precision": card.precision,
                    "label": precision_label(card.precision, precision), "input": f"{h}x{w}", "p50_ms": ms,
                    "min_ms": float(np.min(times[key])), "first_call_ms": first[key], "runs": len(times[key]),
                    "reference": f"{ref_key[0]} {precision_label(card.precision, ref_key[1])}",
                    "cosine_to_ort_fp32": float(vec @ ref), "max_diff_to_ort_fp32": float(np.abs(vec - ref).max()),
                    # the graph's multiply-adds x 2 per second, whatever the precision (its share is
                    # of that precision's peak: apply_peak)
                    "gflops_per_s": 2.0 * macs / (ms * 1e6) if macs else None,
                    "exact": fp32, "gate": gate[key],
                    "retrieval": _retrieval(enc.choice.retrieval[0] if enc.choice.retrieval else None),
                }
            )  # fmt: skip
    base = next((r["p50_ms"] for r in rows if r["engine"] == "onnxruntime" and r["precision"] == "fp32"), None)
    for r in rows:
        r["speedup_vs_ort_fp32"] = base / r["p50_ms"] if base else None
        if rss:
            tick(f"{label}: peak RSS {r['engine']} {r['label']}")
        r["peak_rss_mb"] = peak_rss(path, r["engine"], r["precision"], h, w, threads) if rss else None
    return {"model": label, "path": str(path), "backbone": card.backbone, "attention": card.attention,
            "file_precision": card.precision, "macs": macs, "separate": False, "rows": rows,
            "refused": refused}  # fmt: skip


def _retrieval(r) -> dict | None:
    if r is None:
        return None
    return {
        "top10_mean": r.top10_mean,
        "map_delta": r.map_delta,
        "map_variant": r.map_variant,
        "reference": r.reference,
    }


def _bench_separate(
    path: Path,
    h: int,
    w: int,
    rounds: int,
    threads: int,
    variants: Sequence[tuple[str, str]],
    label: str,
    macs: float | None,
    tick: Callable[[str], None],
    per_process: int,
) -> dict:
    """:func:`bench_model` with one fresh process per variant and round, interleaved."""
    card = read_card(path)
    results: dict[tuple[str, str], list[dict]] = {v: [] for v in variants}
    refused: dict[str, str] = {}
    for i in range(rounds):
        for engine, precision in variants:
            key = f"{engine} {precision_label(card.precision, precision)}"
            if key in refused:
                continue
            tick(f"{label}: {engine} {precision} process {i + 1}/{rounds}")
            got = run_child(path, engine, precision, h, w, threads, per_process)
            if "refused" in got:
                refused[key] = got["refused"]
                results.pop((engine, precision), None)
                continue
            results[(engine, precision)].append(got)
    rows: list[dict] = []
    if results and macs is None:
        from .profile import profile_model

        macs = profile_model(path, golden_image(h, w, 11)[None], threads, runs=2).macs
    ref_key = ("onnxruntime", "fp32") if ("onnxruntime", "fp32") in results else next(iter(results), None)
    ref = np.asarray(results[ref_key][0]["vector"]) if ref_key else None
    for (engine, precision), procs in results.items():
        medians = [float(np.median(p["times"])) for p in procs]
        ms = float(np.median(medians))
        vec = np.asarray(procs[0]["vector"])
        fp32 = card.precision == "fp32" and precision == "fp32"
        rows.append(
            {
                "model": label, "engine": engine, "precision": precision, "file_precision": card.precision,
                "label": precision_label(card.precision, precision), "input": f"{h}x{w}", "p50_ms": ms,
                "min_ms": float(min(min(p["times"]) for p in procs)),
                "first_call_ms": float(np.median([p["first"] for p in procs])), "runs": len(procs),
                "runs_per_process": per_process, "process_p50_ms": medians,
                "reference": f"{ref_key[0]} {precision_label(card.precision, ref_key[1])}",
                "cosine_to_ort_fp32": float(vec @ ref), "max_diff_to_ort_fp32": float(np.abs(vec - ref).max()),
                "gflops_per_s": 2.0 * macs / (ms * 1e6) if macs else None, "exact": fp32,
                "gate": procs[0]["gate"], "retrieval": procs[0]["retrieval"],
                "peak_rss_mb": float(max(p["rss"] for p in procs)),
            }
        )  # fmt: skip
    base = next((r["p50_ms"] for r in rows if r["engine"] == "onnxruntime" and r["precision"] == "fp32"), None)
    for r in rows:
        r["speedup_vs_ort_fp32"] = base / r["p50_ms"] if base else None
    return {"model": label, "path": str(path), "backbone": card.backbone, "attention": card.attention,
            "file_precision": card.precision, "macs": macs, "separate": True, "rows": rows,
            "refused": refused}  # fmt: skip


def apply_peak(
    blocks: Sequence[dict],
    measured: float | None,
    theoretical: float | None,
    peaks: dict[str, dict] | None = None,
) -> list[str]:
    """Fill each row's ``pct_measured_peak`` / ``pct_theoretical_peak``: of the fp32 peak
    (``measured``, ``theoretical``) for fp32 rows, of ``peaks[label]`` (:func:`.peak.precision_peaks`)
    for bf16 and int8 rows (None without it); returns a note for every share over 100 % (a probe
    bug, never a model faster than the machine)."""
    notes: list[str] = []
    for block in blocks:
        for r in block["rows"]:
            if r["label"] == "fp32":
                m, t = measured, theoretical
            else:
                p = (peaks or {}).get(r["label"]) or {}
                m, t = p.get("measured_gops"), p.get("theoretical_gops")
            r["pct_measured_peak"], bad = share(r["gflops_per_s"], m)
            r["pct_theoretical_peak"], bad2 = share(r["gflops_per_s"], t)
            notes += [f"{block['model']} {r['engine']} {r['label']}: {b}" for b in (bad, bad2) if b]
    return notes
