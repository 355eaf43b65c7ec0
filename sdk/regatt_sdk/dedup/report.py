"""The report people look at: one contact-sheet PNG per group and an ``index.html`` listing them.

A sheet shows the group's members as tiles (the representative first), each captioned with its
similarity to the representative, its name, and KEEP (green frame) or remove (red frame).
``index.html`` lists every group (id, size, best and worst similarity) with its sheet inline,
so the whole report opens from one file without a server.
"""

from __future__ import annotations

import html
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import RegattError
from ..grid import _tile, frame, read_or_none, write_png

KEEP = (60, 200, 60)
REMOVE = (50, 50, 230)
_BG = (32, 32, 32)


def contact_sheet(
    tiles: Sequence[tuple[np.ndarray | None, list[str], bool]], *, tile: int = 180, columns: int = 6
) -> np.ndarray:
    """``tiles`` ``(image BGR or None, caption lines, kept)`` -> one BGR uint8 sheet
    ``(rows * (tile + 34), columns * tile, 3)``."""
    if not tiles:
        raise RegattError("a contact sheet needs at least one image")
    cells = []
    for image, lines, kept in tiles:
        shown = frame(image, KEEP if kept else REMOVE) if image is not None else None
        cells.append(_tile(shown, tile, lines))
    columns = max(1, min(columns, len(cells)))
    blank = np.full_like(cells[0], _BG)
    while len(cells) % columns:
        cells.append(blank)
    return np.vstack([np.hstack(cells[r : r + columns]) for r in range(0, len(cells), columns)])


def write_report(out_dir: str | os.PathLike, groups: Sequence[dict], *, title: str = "regatt dedup",
                 tile: int = 180) -> Path:  # fmt: skip
    """Write ``OUT/group_NNNN.png`` per group and ``OUT/index.html``; returns the HTML path.

    Each group is ``{"id", "members": [{"name", "path", "score", "action"}]}`` (``action``:
    ``keep`` or ``remove``), the representative first.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for g in groups:
        tiles = [(read_or_none(m.get("path")), [f"{m['score']:.3f}  {m['action'].upper()}", str(m["name"])],
                  m["action"] == "keep") for m in g["members"]]  # fmt: skip
        sheet = f"group_{int(g['id']):04d}.png"
        write_png(out / sheet, contact_sheet(tiles, tile=tile))
        scores = [m["score"] for m in g["members"][1:]] or [1.0]
        names = "<br>".join(
            f"{'<b>keep</b>' if m['action'] == 'keep' else 'remove'} {m['score']:.3f} {html.escape(str(m['name']))}"
            for m in g["members"]
        )
        rows.append(
            f"<tr><td>{int(g['id'])}</td><td>{len(g['members'])}</td><td>{max(scores):.3f}</td>"
            f"<td>{min(scores):.3f}</td><td><a href='{sheet}'><img src='{sheet}' style='max-width:720px'></a></td>"
            f"<td class='n'>{names}</td></tr>"
        )
    page = (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>body{{font-family:sans-serif;background:#222;color:#ddd}}"
        "td{vertical-align:top;padding:4px;border-bottom:1px solid #444}.n{font-size:12px}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><p>{len(groups)} groups; the first member of each is its "
        "representative; scores are similarity to it; green frame: kept, red: to remove.</p>"
        "<table><tr><th>group</th><th>size</th><th>best</th><th>worst</th><th>sheet</th><th>members</th></tr>"
        + "\n".join(rows) + "</table></body></html>"
    )  # fmt: skip
    index = out / "index.html"
    index.write_text(page, encoding="utf-8")
    return index
