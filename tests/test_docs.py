"""The documentation stays true to the tree: the README short with the two commands first, every
recorded benchmark in the benchmarks index, every page in the site's navigation."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_is_short_and_starts_with_the_two_commands():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.encode()) <= 10 * 1024
    first_block = text.split("```")[1]
    assert [line.split()[:2] for line in first_block.splitlines()[1:3]] == [["make", "demo"], ["make", "test"]]


def test_every_recorded_benchmark_is_in_the_index():
    index = (ROOT / "docs" / "benchmarks.md").read_text(encoding="utf-8")
    results = ROOT / "benchmarks" / "results"
    missing = [p.relative_to(results).as_posix() for p in sorted(results.rglob("*.md"))]
    missing = [rel for rel in missing if f"`{rel}`" not in index]
    assert not missing, f"not in docs/benchmarks.md (run python scripts/benchmarks_index.py): {missing}"


def test_every_page_is_in_the_navigation():
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    listed = set(re.findall(r":\s*([\w./-]+\.md)\s*$", nav, flags=re.M))
    pages = {p.relative_to(ROOT / "docs").as_posix() for p in (ROOT / "docs").rglob("*.md")}
    assert pages - listed == set(), f"pages missing from mkdocs.yml's nav: {sorted(pages - listed)}"
    assert listed - pages == set(), f"nav entries with no page: {sorted(listed - pages)}"
