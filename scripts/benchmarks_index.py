"""Write docs/benchmarks.md: the index of benchmarks/results/ (one row per report).

    python scripts/benchmarks_index.py        # rewrite docs/benchmarks.md

The title is each report's first line; "made by" its ``Made by `...``` line, else the entry of
:data:`MADE_BY`; "also" the files beside it with the same stem. ``tests/test_docs.py`` fails when
a report is missing from the index: rerun this after adding one.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
OUT = ROOT / "docs" / "benchmarks.md"

#: the command behind reports that do not name it themselves
MADE_BY = {
    "bench.md": "`regatt bench --out benchmarks/results` (`make bench`)",
    "precision_bench/bench.md": "`regatt bench fp32.onnx int8.onnx --quality DIR`",
    "dedup_bench.md": "`benchmarks/dedup_data.py` + `benchmarks/dedup_bench.py`",
    "encode_memory.md": "`benchmarks/encode_memory.py`",
    "engines.md": "`benchmarks/engine_bench.py`",
    "faults.md": "`benchmarks/faults_report.py`",
    "pgvector_bench.md": "`benchmarks/pgvector_bench.py`",
    "precision.md": "`benchmarks/precision_report.py`",
    "quality.md": "`benchmarks/quality_report.py`",
    "serve_load.md": "`benchmarks/serve_load.py`",
    "serve_memory_arena.md": "`benchmarks/serve_load.py --serve-arg=--memory=arena`",
    "serve_memory_pattern.md": "`benchmarks/serve_load.py --serve-arg=--memory=pattern`",
    "training.md": "`regatt train` runs (`benchmarks/attention_sweep.sh` for the sweep)",
}

HEAD = """# Benchmarks

Every recorded result lives in `benchmarks/results/` next to the script that made it; the
numbers quoted in this documentation come from these files. Each `.md` is the readable report,
usually with a `.json` of the same name holding every figure. Rerun a script with `--help` to see
its options; results depend on the machine (most were recorded on a 2-core VM, which other jobs
sometimes shared: many reports record the machine and the load average). This page is written by
`python scripts/benchmarks_index.py`.

| report | what it measures | made by | also |
| --- | --- | --- | --- |
"""

TAIL = """
`benchmarks/results/attention/` holds the attention files of the training runs (`.pth` + `.json`
each) that `benchmarks/heldout_report.py` compared; the default's files and their provenance are
in `export/regatt_export/assets/` (`PROVENANCE.md`).
"""


def reports() -> list[str]:
    """The report paths relative to benchmarks/results/, sorted."""
    return sorted(p.relative_to(RESULTS).as_posix() for p in RESULTS.rglob("*.md"))


def row(rel: str) -> str:
    f = RESULTS / rel
    text = f.read_text(encoding="utf-8")
    title = text.splitlines()[0].lstrip("# ").strip().replace("|", "/") if text else rel
    m = re.search(r"Made by (`[^`]*`)", text)
    by = MADE_BY.get(rel) or (m.group(1) if m else "")
    others = sorted(p.name for p in f.parent.glob(f.stem + ".*") if p.suffix != ".md")
    return f"| `{rel}` | {title} | {by} | {', '.join(f'`{o}`' for o in others)} |"


def render() -> str:
    return HEAD + "\n".join(row(r) for r in reports()) + "\n" + TAIL


def main() -> None:
    OUT.write_text(render(), encoding="utf-8")
    print(f"wrote {OUT} ({len(reports())} reports)")


if __name__ == "__main__":
    main()
