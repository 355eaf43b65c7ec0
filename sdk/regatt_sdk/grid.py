"""A picture of a search result: the query and its top results as a labelled grid (OpenCV).

Tiles are ``tile x tile`` pixels, each image fitted inside with its aspect ratio kept, on a dark
background, with a caption strip below (name and score). The query tile comes first with a
blue frame and its box (if any) drawn in yellow.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from .errors import RegattError
from .imageio import read_image
from .preprocess import Box

_BG = (32, 32, 32)
_QUERY = (255, 128, 0)  # BGR blue-ish frame
_BOX = (0, 255, 255)
_TEXT = (235, 235, 235)
_CAPTION = 34
#: frame colours (BGR) of labelled results
LABEL_COLOURS = {"correct": (60, 200, 60), "wrong": (50, 50, 230), "junk": (170, 170, 170)}


def _fit(image: np.ndarray, tile: int) -> tuple[np.ndarray, float, int, int]:
    """``image`` (H, W, 3) scaled into a ``tile`` square: ``(canvas, scale, x0, y0)``."""
    h, w = image.shape[:2]
    scale = tile / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    small = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA)
    canvas = np.full((tile, tile, 3), _BG, dtype=np.uint8)
    y0, x0 = (tile - nh) // 2, (tile - nw) // 2
    canvas[y0 : y0 + nh, x0 : x0 + nw] = small
    return canvas, scale, x0, y0


def _text_width(text: str) -> int:
    return cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.4, 1)[0][0]


def _shorten(text: str, width: int) -> str:
    """``text`` cut from the left (``..`` + its end) so that it fits ``width`` pixels."""
    if _text_width(text) <= width:
        return text
    while text and _text_width(".." + text) > width:
        text = text[1:]
    return ".." + text


def _caption(width: int, lines: Sequence[str]) -> np.ndarray:
    strip = np.full((_CAPTION, width, 3), _BG, dtype=np.uint8)
    for i, text in enumerate(lines[:2]):
        cv2.putText(
            strip, _shorten(text, width - 6), (3, 13 + 15 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.4, _TEXT, 1, cv2.LINE_AA
        )
    return strip


def _tile(image: np.ndarray | None, tile: int, lines: Sequence[str]) -> np.ndarray:
    if image is None:
        body = np.full((tile, tile, 3), _BG, dtype=np.uint8)
        cv2.putText(body, "unreadable", (6, tile // 2), cv2.FONT_HERSHEY_SIMPLEX, 0.5, _TEXT, 1)
    else:
        body = _fit(image, tile)[0]
    return np.vstack([body, _caption(tile, lines)])


def result_grid(
    query: np.ndarray,
    results: Sequence[tuple[str, float, np.ndarray | None]],
    *,
    query_label: str = "query",
    roi: tuple[float, float, float, float] | None = None,
    tile: int = 200,
    columns: int = 6,
) -> np.ndarray:
    """The grid as a BGR uint8 image ``(rows * (tile + 34), columns * tile, 3)``.

    ``query``: BGR (H, W, 3); ``results``: ``(name, score, image or None)`` best first;
    ``roi``: the query box in the query's original pixels.
    """
    qcanvas, scale, x0, y0 = _fit(query, tile)
    if roi is not None:
        x1, y1, x2, y2 = (float(v) for v in roi)
        p1 = (int(round(x0 + x1 * scale)), int(round(y0 + y1 * scale)))
        p2 = (int(round(x0 + x2 * scale)), int(round(y0 + y2 * scale)))
        cv2.rectangle(qcanvas, p1, p2, _BOX, 2)
    cv2.rectangle(qcanvas, (0, 0), (tile - 1, tile - 1), _QUERY, 3)
    tiles = [np.vstack([qcanvas, _caption(tile, ["QUERY", query_label])])]
    for i, (name, score, image) in enumerate(results, start=1):
        tiles.append(_tile(image, tile, [f"#{i}  {score:.4f}", name]))
    columns = max(1, min(columns, len(tiles)))
    blank = np.full_like(tiles[0], _BG)
    while len(tiles) % columns:
        tiles.append(blank)
    rows = [np.hstack(tiles[r : r + columns]) for r in range(0, len(tiles), columns)]
    return np.vstack(rows)


def save_result_grid(
    out: str | Path,
    query_path: str | Path,
    results: Sequence[tuple[str, float, str | Path | None]],
    *,
    roi: tuple[float, float, float, float] | None = None,
    tile: int = 200,
    columns: int = 6,
) -> Path:
    """Read the query and result images (paths; ``None`` or unreadable -> a blank tile) and write
    the grid to ``out`` (PNG). Returns the written path."""
    out = Path(out)
    loaded = [(name, score, read_or_none(path)) for name, score, path in results]
    grid = result_grid(
        read_image(query_path),
        loaded,
        query_label=Path(query_path).name,
        roi=roi,
        tile=tile,
        columns=columns,
    )
    if out.parent and not out.parent.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(out.suffix or ".png", grid)
    if not ok:
        raise RegattError(f"{out}: cannot encode the grid as '{out.suffix}': use a .png path")
    out.write_bytes(buf.tobytes())
    return out


def write_png(path: str | Path, image: np.ndarray) -> Path:
    """Write ``image`` (BGR uint8) as PNG at ``path`` (folders made); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, 9])
    if not ok:
        raise RegattError(f"{path}: could not encode the picture as PNG")
    path.write_bytes(buf.tobytes())
    return path


# --------------------------------------------------------------------------- labelled results


def frame(image: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    """A copy of ``image`` (H, W, 3) with a ``colour`` frame ~4 % of its longer side thick."""
    out = image.copy()
    t = max(2, round(max(image.shape[:2]) * 0.04))
    cv2.rectangle(out, (0, 0), (out.shape[1] - 1, out.shape[0] - 1), colour, t)
    return out


def labelled_grid(
    query: np.ndarray,
    results: Sequence[tuple[str, float, np.ndarray | None, str | None]],
    *,
    query_label: str = "query",
    roi: Box | None = None,
    tile: int = 200,
    columns: int = 6,
) -> np.ndarray:
    """:func:`regatt_sdk.grid.result_grid` with each result ``(name, score, image, label)``
    framed in :data:`LABEL_COLOURS` and captioned ``LABEL name`` (label ``None``: as is)."""
    shown = []
    for name, score, image, label in results:
        if label is not None:
            if label not in LABEL_COLOURS:
                raise ValueError(f"unknown label {label!r}: use one of {', '.join(LABEL_COLOURS)}")
            image = frame(image, LABEL_COLOURS[label]) if image is not None else None
            name = f"{label.upper()} {name}"
        shown.append((name, score, image))
    return result_grid(query, shown, query_label=query_label, roi=roi, tile=tile, columns=columns)


def read_or_none(path: str | os.PathLike | None) -> np.ndarray | None:
    """The image at ``path`` as BGR uint8 ``(H, W, 3)``, or None when absent or unreadable (a blank tile)."""
    if path is None:
        return None
    try:
        return read_image(path)
    except RegattError:
        return None


def save_labelled_grid(
    out: str | Path,
    query_path: str | Path,
    results: Sequence[tuple[str, float, str | Path | None, str | None]],
    *,
    roi: Box | None = None,
    query_label: str | None = None,
    tile: int = 200,
    columns: int = 6,
) -> Path:
    """Read the query and the results' images (``(name, score, path, label)``; unreadable ->
    blank tile) and write :func:`labelled_grid` as PNG at ``out``."""
    loaded = [(n, s, read_or_none(p), lab) for n, s, p, lab in results]
    grid = labelled_grid(read_image(query_path), loaded, roi=roi, tile=tile, columns=columns,
                         query_label=query_label or Path(query_path).name)  # fmt: skip
    return write_png(out, grid)


def truth_label(name: str, truth) -> str:
    """``correct``, ``junk`` or ``wrong`` for a result ``name`` under a
    :class:`~regatt_sdk.datasets.Truth` (``junk_wins``: a name in both lists is junk)."""
    pos, junk = name in truth.positives, name in truth.junk
    if pos and junk:
        return "junk" if truth.junk_wins else "correct"
    return "correct" if pos else "junk" if junk else "wrong"


def save_eval_grids(
    out_dir: str | Path,
    dataset,
    queries: np.ndarray,
    database: np.ndarray,
    *,
    count: int = 10,
    top: int = 10,
    setting: str | None = None,
    backend: str = "exact",
) -> list[Path]:
    """One labelled grid PNG per query (the first ``count``) of a
    :class:`~regatt_sdk.datasets.Dataset`: the query (its box drawn) and its ``top`` results.

    ``queries`` ``(Q, D)`` and ``database`` ``(N, D)`` are the dataset's descriptors in its order;
    names the query excludes (e.g. itself) are skipped. Labels use ``setting`` (default:
    ``medium`` when the dataset has it, else its first). Files: ``OUT/NNN_<query>.png``.
    """
    from .expansion import retrieve

    settings = list(dataset.truth)
    setting = setting or ("medium" if "medium" in settings else settings[0] if settings else None)
    truths = dataset.truth.get(setting) if setting else None
    n = min(max(0, count), len(dataset.queries))
    if n == 0:
        return []
    extra = max((len(t.exclude) for t in truths[:n]), default=0) if truths else 0
    scores, ids = retrieve(queries[:n], database, top=top + extra, backend=backend)
    written = []
    for qi in range(n):
        q = dataset.queries[qi]
        truth = truths[qi] if truths else None
        results = []
        for s, i in zip(scores[qi], ids[qi]):
            name = dataset.names[int(i)]
            if truth is not None and name in truth.exclude:
                continue
            label = truth_label(name, truth) if truth is not None else None
            results.append((name, float(s), dataset.paths[int(i)], label))
            if len(results) == top:
                break
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in q.name)[:80]
        out = Path(out_dir) / f"{qi:03d}_{safe}.png"
        written.append(save_labelled_grid(out, q.path, results, roi=q.box, query_label=q.name))
    return written
