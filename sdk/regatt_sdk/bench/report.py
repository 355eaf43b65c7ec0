"""The report: JSON (every figure), a Markdown summary, a PNG bar chart (matplotlib, lazily)."""

from __future__ import annotations

import json
import math
from pathlib import Path


def _f(value: object, fmt: str = "{:.1f}") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return fmt.format(value)


def _pct(value: object) -> str:
    return _f(None if value is None else 100.0 * float(value), "{:.1f}%")


def markdown(report: dict) -> str:
    """A Markdown document: machine, configuration, the table, targets, head profile, notes."""
    m, c = report["machine"], report["config"]
    lines = ["# regatt bench", ""]
    load = f"{m.get('load_average_start')} -> {m.get('load_average_end')}"
    lines.append(
        f"**Machine:** {m['cpu_model']} ({m['usable_cpus']} usable CPUs, {c['threads']} threads, "
        f"SIMD {', '.join(m['simd']) or 'n/a'}), load average (1/5/15 min) {load}; "
        f"onnxruntime {m.get('onnxruntime')}, numpy {m.get('numpy')}"
        + (f", torch {m['torch']}" if m.get("torch") else "")
        + "."
    )
    lines.append(
        f"**Config:** {c['backbone']} ({c['weights']} weights), input {c['input']}, S={c['max_side']}, L={c['levels']}, "
        f"{c['warmup']} warm-up + {c['runs']} timed runs after the first call."
    )
    lines.append(_peak_line(report))
    lines += _peaks_section(report)
    lines += ["", _table(report), ""]
    paper = report["paper"]
    lines.append(
        f"Paper: {paper['hardware']}"
        + ("" if paper["comparable"] else " — **not the same configuration as this run**")
        + "."
    )
    lines += ["", "## Targets", ""]
    for t in report["targets"]:
        state = "not measured" if t["met"] is None else ("**met**" if t["met"] else "**missed**")
        vals = ", ".join(f"{k} {_target_value(t['target'], v)}" for k, v in t["values"].items())
        lines.append(f"- {t['description']}: {state}" + (f" ({vals})" if vals else ""))
    lines += _engines_section(report)
    lines += _profile_section(report)
    if report.get("images"):
        lines += [
            "",
            "## Real photos end to end (p50 ms per image)",
            "",
            "| engine | variant | images | decode | resize | encode | total |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]
        for r in report["images"]:
            lines.append(
                f"| {r['engine']} | {r['variant']} | {r['images']} | {r['decode']['p50_ms']:.1f} | {r['resize']['p50_ms']:.1f} "
                f"| {r['encode']['p50_ms']:.1f} | {r['total']['p50_ms']:.1f} |"
            )
    if report["notes"]:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in report["notes"]]
    return "\n".join(lines) + "\n"


def _peak_line(report: dict) -> str:
    """The truthful fp32 peak the % columns divide by: measured (best probe) and theoretical."""
    p, threads = report["peak"], report["config"]["threads"]
    start = p["start"]
    theo = p.get("theoretical_gflops")
    theory = (
        f"theoretical **{theo:.1f} GFLOP/s** = {start['cores']} cores x {start['flops_per_cycle']} FLOP/cycle "
        f"({start['units']}) x {start['clock_ghz']:.2f} GHz ({start['clock_source']})"
        if theo
        else f"theoretical peak unknown ({start['units']}; clock: {start['clock_source']})"
    )
    probes = ", ".join(f"{q['engine']} {q['best_gflops_per_s']:.1f}" for q in start["probes"])
    return (
        f"**fp32 peak ({threads} threads):** measured **{p['measured_gflops']:.1f} GFLOP/s** ({p['measured_by']}; "
        f"best of the GEMM probes at the start and the end; start: {probes}); {theory}."
    )


def _peaks_section(report: dict) -> list[str]:
    """Peak per precision: the unit by CPU flag, measured (best GEMM probe) and theoretical."""
    peaks = report.get("peaks") or {}
    if not peaks:
        return []
    out = [
        "",
        "| precision | unit (CPU flag) | measured GOP/s | by | theoretical GOP/s | rule |",
        "|---|---|---:|---|---:|---|",
    ]
    for precision, p in peaks.items():
        unit = f"{p['unit']} ({p['flag']})" if p.get("unit") else "none"
        theory = (
            f"{p['cores']} cores x {p['ops_per_cycle']} op/cycle x {p['clock_ghz']:.2f} GHz"
            if p.get("theoretical_gops")
            else "–"
        )
        out.append(
            f"| {precision} | {unit} | {_f(p.get('measured_gops'))} | {p.get('measured_by') or '–'} "
            f"| {_f(p.get('theoretical_gops'))} | {theory}: {p['rule']} |"
        )
    return out


def _engines_section(report: dict) -> list[str]:
    """Engines x precisions side by side (``--engine``): fresh processes per variant and round,
    interleaved (or one process, ``--same-process``)."""
    blocks = report.get("engines") or []
    if not blocks:
        return []
    how = (
        "one fresh process per engine/precision and round, interleaved"
        if all(b.get("separate") for b in blocks)
        else "one interleaved run per model, in one process"
    )
    paper = any(r.get("paper_ms") for b in blocks for r in b["rows"])
    out = [
        "",
        f"## Engines x precisions ({how})",
        "",
        "| model | input | engine | precision | p50 ms | x onnxruntime | cosine to onnxruntime | retrieval gate "
        "| first call ms | peak RSS MB | GOP/s | % measured peak | % theoretical peak |"
        + (" paper GPU ms |" if paper else ""),
        "|---|---|---|---|" + "---:|" * 3 + "---|" + "---:|" * 5 + ("---:|" if paper else ""),
    ]
    reasons = []
    for b in blocks:
        for r in b["rows"]:
            g = r.get("retrieval")
            gate = f"top-10 {g['top10_mean']:.3f}, mAP {g['map_delta']:+.2f}" if g else "–"
            out.append(
                f"| {b['model']} | {r['input']} | {r['engine']} | {r['label']} | {_f(r['p50_ms'])} "
                f"| {_f(r['speedup_vs_ort_fp32'], '{:.2f}x')} | {_f(r['cosine_to_ort_fp32'], '{:.6f}')} | {gate} "
                f"| {_f(r['first_call_ms'], '{:.0f}')} | {_f(r['peak_rss_mb'], '{:.0f}')} | {_f(r['gflops_per_s'])} "
                f"| {_f(r.get('pct_measured_peak'), '{:.0f}%')} | {_f(r.get('pct_theoretical_peak'), '{:.0f}%')} |"
                + (f" {_f(r.get('paper_ms'), '{:.0f}')} ({_f(r.get('vs_paper'), '{:.2f}x')}) |" if paper else "")
            )
        for key, why in b["refused"].items():
            engine, _, precision = key.partition(" ")
            out.append(f"| {b['model']} | | {engine} | {precision} | refused |" + " |" * (8 + paper))
            reasons.append(f"- {b['model']}, {key}: {why}")
    out += [
        "",
        "x onnxruntime and cosine: against onnxruntime on the same file (fp32 compute; an INT8 file as it is). "
        "Retrieval gate: top-10 agreement and copies mAP difference to fp32 onnxruntime on the gate's photo set. "
        "GOP/s: the graph's multiply-adds x 2 per second; % of the peak of the row's precision (table above).",
    ]
    if reasons:
        out += ["", "Refused by the gate:", ""] + reasons
    return out


def _target_value(key: str, value: float) -> str:
    if key == "head_share":
        return f"{100 * value:.1f}%"
    if key == "gemm_pct":
        return f"{value:.1f}%"
    return f"{value:.2f}x"


def _table(report: dict) -> str:
    head = (
        "| engine | variant | precision | p50 ms | p90 ms | mean ms | img/s | first call ms | session s | peak RSS MB (+growth) "
        "| backbone p50 ms | head ms | head/backbone | GMAC | GFLOP/s | % peak | % theor. | vs eager | mAP | cos to fp32 "
        "| paper s (ours/paper) |"
    )
    sep = "|" + "---|" * 3 + "---:|" * 18
    rows = [head, sep]
    for r in report["results"]:
        rows.append(
            f"| {r['engine']} | {r['variant']} | {r.get('precision', 'fp32')} | {_f(r['p50_ms'])} | {_f(r['p90_ms'])} | {_f(r['mean_ms'])} "
            f"| {_f(r['images_per_s'], '{:.2f}')} | {_f(r['first_call_ms'])} | {_f(r['session_s'], '{:.2f}')} "
            f"| {_f(r['peak_rss_mb'], '{:.0f}')} (+{_f(r['rss_growth_mb'], '{:.0f}')}) | {_f(r['backbone_p50_ms'])} "
            f"| {_f(r['head_ms'])} | {_pct(r['head_share'])} | {_f(r['gmacs'])} | {_f(r['gflops_per_s'])} "
            f"| {_f(r['gemm_pct'], '{:.0f}%')} | {_f(r.get('theoretical_pct'), '{:.0f}%')} "
            f"| {_f(r['speedup_vs_eager'], '{:.2f}x')} "
            f"| {_f(r.get('map'), '{:.2f}')} | {_f(r.get('parity_min_cosine'), '{:.4f}')} "
            f"| {_f(r['paper_s'], '{:.3f}')} ({_f(r['vs_paper'], '{:.1f}x')}) |"
        )
    return "\n".join(rows)


def _profile_section(report: dict) -> list[str]:
    out: list[str] = []
    for variant, p in report.get("profiles", {}).items():
        if not out:
            out += ["", "## Head profile (onnxruntime CPU, median kernel time per node)", ""]
        ops = ", ".join(f"{op} {ms:.1f}" for op, ms in list(p["head_ms_by_op"].items())[:6])
        out.append(
            f"- **{variant}**: backbone {p['backbone_ms']:.1f} ms, head {p['head_ms']:.1f} ms "
            f"({_pct(p['head_share_of_backbone'])} of backbone), head {p['head_gmacs']:.3f} GMAC; by op (ms): {ops}"
        )
        for n in p["head_top_nodes"][:5]:
            out.append(f"  - {n['ms']:.2f} ms `{n['name']}` {n['op']} {n['inputs']} -> {n['outputs']}")
    return out


def write_json(report: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")


def write_png(report: dict, path: Path) -> bool:
    """Grouped bars of p50 per variant and engine (backbone part hatched) next to the paper's.

    Returns False (and writes nothing) when matplotlib is not installed.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rows = report["results"]
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    engines = list(dict.fromkeys(r["engine"] for r in rows))
    series = engines + ["paper"]
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(2.2 + 2.0 * len(variants), 4.2))
    for i, name in enumerate(series):
        xs, full, bb = [], [], []
        for j, v in enumerate(variants):
            if name == "paper":
                t = report["paper"]["times_s"].get(v)
                b = None
            else:
                r = next((r for r in rows if r["engine"] == name and r["variant"] == v), None)
                t = r["p50_ms"] / 1000.0 if r else None
                b = r["backbone_p50_ms"] / 1000.0 if r and r.get("backbone_p50_ms") else None
            if t is None:
                continue
            xs.append(j + (i - (len(series) - 1) / 2) * width)
            full.append(t)
            bb.append(b)
        bars = ax.bar(xs, full, width, label=name if name != "paper" else "paper (authors' GPU)")
        for x, b, bar in zip(xs, bb, bars):
            if b is not None:
                ax.bar([x], [b], width, fill=False, hatch="//", edgecolor="black", linewidth=0)
        for x, t in zip(xs, full):
            ax.text(x, t, f"{t:.2f}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(variants)))
    ax.set_xticklabels(variants)
    ax.set_ylabel("seconds per image (p50); hatched: backbone")
    c = report["config"]
    ax.set_title(
        f"{c['backbone']} {c['input'].split(' ')[0]}, {report['machine']['cpu_model']} x{c['threads']}", fontsize=9
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True
