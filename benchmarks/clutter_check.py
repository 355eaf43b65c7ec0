"""The clutter check: landmark photos pasted into other photos at a known box.

Where does attention look? Each query is a photo of a held-out landmark (by default the
``test`` part of :func:`regatt_export.splits.landmark_split`) resized so that it fills
``scale`` of a background photo's sides (ImageNet photos from ``imagenet-extra``) and pasted at a
random position; the box it covers is known exactly. The database is the clean photos of those
landmarks plus distractor photos (ImageNet photos that are never a background). A query's
positives are the other photos of its landmark; the photo that was pasted is junk (left out of
the ranking, not counted), so a query cannot win by finding its own copy.

Everything is seeded: the same arguments give the same files, boxes and lists (the background
and pasted positions come from ``numpy.random.default_rng(seed)``; JPEG quality 95).

Reusable parts (plain functions, numpy + OpenCV, no torch)::

    from clutter_check import build_clutter_set, box_share, clutter_map
    cs = build_clutter_set(landmarks_root, backgrounds_root, "/tmp/clutter")   # writes the queries
    cs.queries[0].path, cs.queries[0].box      # file, (x1, y1, x2, y2) end-exclusive query pixels
    cs.database                                # [(path, landmark or "" for a distractor), ...]
    clutter_map(query_vectors, db_vectors, cs) # mAP (%) of the queries against the database
    box_share(region_boxes, weights, box)      # attention share inside the box vs uniform

Query images have their longest side ``side`` (512 by default, the default model's S), so at
that S the encoder sees them unresized and the boxes are in its pixels. Run as a script to
build the set and print its summary::

    python benchmarks/clutter_check.py /tmp/clutter --part test
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np

from regatt_sdk.explain import INSIDE, box_share, inside_mask  # noqa: F401  (re-exported: the box share)

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
DEFAULT_SCALES = (0.3, 0.45, 0.6)


@dataclass(frozen=True)
class ClutterQuery:
    """One pasted query: ``path`` its file, ``landmark`` its folder, ``source`` the pasted photo
    (path), ``background`` the background photo (path), ``box`` ``(x1, y1, x2, y2)`` end-exclusive
    pixels of the pasted photo inside the query, ``scale`` the share of the sides it fills."""

    path: str
    landmark: str
    source: str
    background: str
    box: tuple[int, int, int, int]
    scale: float


@dataclass
class ClutterSet:
    """The queries and the database ``[(path, landmark)]`` (landmark ``""``: a distractor)."""

    queries: list[ClutterQuery]
    database: list[tuple[str, str]]
    facts: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"facts": self.facts, "queries": [asdict(q) for q in self.queries], "database": self.database}


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _landmarks(landmarks_root: Path, part: str | list[str]) -> list[str]:
    if isinstance(part, str):
        from regatt_export.splits import landmark_split

        split = landmark_split(landmarks_root)
        if part not in split:
            raise ValueError(f"part must be one of {sorted(split)} or a list of landmark folders, got {part!r}")
        return split[part]
    missing = [lm for lm in part if not (landmarks_root / lm).is_dir()]
    if missing:
        raise ValueError(f"{landmarks_root}: no landmark folder named {', '.join(missing)}")
    return list(part)


def _read(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"{path}: cannot be decoded as an image")
    return image


def paste(
    background: np.ndarray, photo: np.ndarray, scale: float, side: int, rng: np.random.Generator
) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Resize ``background`` to longest side ``side``, paste ``photo`` scaled to fit in
    ``scale`` of its width and height (aspect kept) at a uniformly random position.

    Returns the composite BGR ``(h, w, 3)`` and the end-exclusive box ``(x1, y1, x2, y2)``.
    """
    bh, bw = background.shape[:2]
    r = side / max(bh, bw)
    h, w = max(1, int(round(bh * r))), max(1, int(round(bw * r)))
    canvas = cv2.resize(background, (w, h), interpolation=cv2.INTER_LINEAR).copy()
    ph, pw = photo.shape[:2]
    f = scale * min(w / pw, h / ph)
    qh, qw = max(1, int(round(ph * f))), max(1, int(round(pw * f)))
    small = cv2.resize(photo, (qw, qh), interpolation=cv2.INTER_AREA)
    x1 = int(rng.integers(0, w - qw + 1))
    y1 = int(rng.integers(0, h - qh + 1))
    canvas[y1 : y1 + qh, x1 : x1 + qw] = small
    return canvas, (x1, y1, x1 + qw, y1 + qh)


def build_clutter_set(
    landmarks_root: str | Path = SHARED / "landmarks-train",
    backgrounds_root: str | Path = SHARED / "imagenet-extra",
    out_dir: str | Path = "/tmp/regatt-clutter",
    part: str | list[str] = "test",
    per_landmark: int = 5,
    scales: tuple[float, ...] = DEFAULT_SCALES,
    distractors: int = 300,
    side: int = 512,
    seed: int = 0,
) -> ClutterSet:
    """Write the query images to ``out_dir`` (and ``out_dir/clutter.json``); return the set.

    ``part``: ``"train" | "val" | "test"`` (the landmark split) or a list of landmark folders.
    ``per_landmark`` photos of each landmark (evenly spaced in sorted order) are pasted once at
    each of ``scales``, each time on a new background. ``distractors`` other ImageNet photos
    join the database. Existing identical files are rewritten (same bytes).
    """
    landmarks_root, backgrounds_root, out = Path(landmarks_root), Path(backgrounds_root), Path(out_dir)
    if not all(0.05 <= s <= 1.0 for s in scales):
        raise ValueError(f"scales must be in [0.05, 1], got {scales}")
    names = _landmarks(landmarks_root, part)
    backgrounds = _images(backgrounds_root)
    n_queries = len(names) * per_landmark * len(scales)
    if len(backgrounds) < n_queries + distractors:
        raise ValueError(
            f"{backgrounds_root}: {len(backgrounds)} photos, need {n_queries} backgrounds + {distractors} distractors"
        )
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(backgrounds))
    bg_pick = [backgrounds[i] for i in order[:n_queries]]
    distractor_paths = sorted(backgrounds[i] for i in order[n_queries : n_queries + distractors])
    out.mkdir(parents=True, exist_ok=True)
    queries: list[ClutterQuery] = []
    database: list[tuple[str, str]] = []
    k = 0
    for lm in names:
        photos = _images(landmarks_root / lm)
        if len(photos) < 2:
            raise ValueError(
                f"{landmarks_root / lm}: {len(photos)} photo(s); a landmark needs at least 2 (a query and a positive)"
            )
        database += [(str(p), lm) for p in photos]
        take = min(per_landmark, len(photos))
        sources = [photos[int(i)] for i in np.linspace(0, len(photos) - 1, take).round().astype(int)]
        for src in sources:
            photo = _read(src)
            for s in scales:
                image, box = paste(_read(bg_pick[k]), photo, s, side, rng)
                name = out / f"{lm}__{src.stem}__s{int(round(100 * s)):02d}.jpg"
                cv2.imwrite(str(name), image, [cv2.IMWRITE_JPEG_QUALITY, 95])
                queries.append(ClutterQuery(str(name), lm, str(src), str(bg_pick[k]), box, float(s)))
                k += 1
    database += [(str(p), "") for p in distractor_paths]
    facts = {
        "landmarks_root": str(landmarks_root),
        "backgrounds_root": str(backgrounds_root),
        "part": part,
        "landmarks": names,
        "per_landmark": per_landmark,
        "scales": list(scales),
        "distractors": distractors,
        "side": side,
        "seed": seed,
        "jpeg_quality": 95,
    }
    cs = ClutterSet(queries, database, facts)
    (out / "clutter.json").write_text(json.dumps(cs.to_json(), indent=1))
    return cs


def query_average_precisions(
    query_vectors: np.ndarray, db_vectors: np.ndarray, cs: ClutterSet, qe: int = 0
) -> np.ndarray:
    """AP (0..1) of each query ``(Q, D)`` against the database ``(N, D)`` (rows unit length);
    ``qe > 0``: average query expansion with the top ``qe`` (the source photo excluded)."""
    from regatt_sdk.evaluation import compute_ap

    names = [p for p, _ in cs.database]
    labels = [lm for _, lm in cs.database]
    index = {p: i for i, p in enumerate(names)}
    aps = []
    for qi, q in enumerate(cs.queries):
        v = query_vectors[qi]
        sims = db_vectors @ v
        src = index.get(q.source)
        if src is not None:
            sims[src] = -np.inf
        order = np.argsort(-sims, kind="stable")
        if qe:
            top = [j for j in order[: qe + 1] if j != src][:qe]
            v = v + db_vectors[top].sum(axis=0)
            v = v / np.linalg.norm(v)
            sims = db_vectors @ v
            if src is not None:
                sims[src] = -np.inf
            order = np.argsort(-sims, kind="stable")
        positives = [names[j] for j in range(len(names)) if labels[j] == q.landmark and names[j] != q.source]
        aps.append(compute_ap([names[j] for j in order], positives, [q.source]))
    return np.asarray(aps)


def clutter_map(query_vectors: np.ndarray, db_vectors: np.ndarray, cs: ClutterSet, qe: int = 0) -> float:
    """mAP (%) of the clutter queries; see :func:`query_average_precisions`."""
    return float(100 * query_average_precisions(query_vectors, db_vectors, cs, qe).mean())


def load_clutter_set(out_dir: str | Path) -> ClutterSet:
    """Read back ``out_dir/clutter.json`` written by :func:`build_clutter_set`."""
    blob = json.loads((Path(out_dir) / "clutter.json").read_text())
    qs = [
        ClutterQuery(q["path"], q["landmark"], q["source"], q["background"], tuple(q["box"]), q["scale"])
        for q in blob["queries"]
    ]
    return ClutterSet(qs, [tuple(d) for d in blob["database"]], blob["facts"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--landmarks", type=Path, default=SHARED / "landmarks-train")
    ap.add_argument("--backgrounds", type=Path, default=SHARED / "imagenet-extra")
    ap.add_argument("--part", default="test")
    ap.add_argument("--per-landmark", type=int, default=5)
    ap.add_argument("--scales", type=float, nargs="+", default=list(DEFAULT_SCALES))
    ap.add_argument("--distractors", type=int, default=300)
    ap.add_argument("--side", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    cs = build_clutter_set(
        args.landmarks,
        args.backgrounds,
        args.out,
        args.part,
        args.per_landmark,
        tuple(args.scales),
        args.distractors,
        args.side,
        args.seed,
    )
    print(
        f"{len(cs.queries)} queries of {len(cs.facts['landmarks'])} landmarks, database {len(cs.database)} photos; wrote {args.out / 'clutter.json'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
