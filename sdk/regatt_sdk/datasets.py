"""Retrieval benchmarks read from their official on-disk layouts (SPEC section 5).

A :class:`Dataset` gives the database (image names and paths, in a fixed order), the queries
(name, image path, optional box ``x1, y1, x2, y2`` in original pixels) and, per protocol
setting, each query's positives and junk as name sets (:class:`Truth`).
:meth:`Dataset.ground_truth` turns those into database indices for
:func:`regatt_sdk.evaluation.evaluate`.

Loaders (all tolerant of ``<root>/jpg/`` or images directly under ``<root>``):

* ``oxford5k`` / ``paris6k``: ``<name>_query.txt`` (``oxc1_<image> x1 y1 x2 y2``; Paris lines
  have no prefix), ``_good``, ``_ok``, ``_junk.txt`` in ``<root>/gt``, ``<root>/gt_files_170407``
  or ``<root>``. Paris drops its 20 unreadable images. ``oxford105k`` / ``paris106k`` add a
  distractor folder to the database.
* ``roxford5k`` / ``rparis6k``: ``gnd_roxford5k.pkl`` / ``gnd_rparis6k.pkl`` read with the
  restricted unpickler; settings easy / medium / hard.
* ``holidays``: ``NNNNMM.jpg``, ``MM == 00`` is the query of group ``NNNN``; the query is removed
  from its own ranking.
* ``generic``: a folder plus a CSV ``image,group`` (every image of a group of 2+ is a query,
  the rest of its group its positives) or ``query,positives[,junk]`` (``;``-separated lists,
  or one row per pair); without a CSV, sub-folders are the groups.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

from . import safe_pickle
from .errors import RegattError
from .evaluation import GroundTruth
from .files import image_suffixes, list_images

Box = tuple[float, float, float, float]

#: the one list of image suffixes (every format :mod:`regatt_sdk.imageio` decodes)
IMAGE_EXTENSIONS = image_suffixes()

#: the 20 Paris6k images everyone drops (unreadable in the official archive)
PARIS_DROPPED = frozenset(
    {
        "paris_louvre_000136",
        "paris_louvre_000146",
        "paris_moulinrouge_000422",
        "paris_museedorsay_001059",
        "paris_notredame_000188",
        "paris_pantheon_000284",
        "paris_pantheon_000960",
        "paris_pantheon_000974",
        "paris_pompidou_000195",
        "paris_pompidou_000196",
        "paris_pompidou_000201",
        "paris_pompidou_000467",
        "paris_pompidou_000640",
        "paris_sacrecoeur_000299",
        "paris_sacrecoeur_000330",
        "paris_sacrecoeur_000353",
        "paris_triomphe_000662",
        "paris_triomphe_000833",
        "paris_triomphe_000863",
        "paris_triomphe_000867",
    }
)

CLASSIC = ("oxford5k", "paris6k", "oxford105k", "paris106k")
REVISITED = ("roxford5k", "rparis6k")
DATASETS = (*CLASSIC, *REVISITED, "holidays", "generic")

_GT_DIRS = ("gt", "gt_files_170407", "gt_files_120310", "gt_files", "groundtruth", ".")
_DISTRACTOR_DIRS = ("oxc1_100k", "flickr100k", "distractors", "100k")


class DatasetError(RegattError):
    """A dataset folder or ground-truth file is missing or inconsistent."""


@dataclass(frozen=True)
class Query:
    """One query: its name, image file and optional box ``(x1, y1, x2, y2)`` in original pixels."""

    name: str
    path: Path
    box: Box | None = None


@dataclass(frozen=True)
class Truth:
    """One query's ground truth in one setting, as names.

    ``npos`` is the count the official program divides by (defaults to ``len(positives)``);
    ``exclude`` names are removed from the query's ranking; ``junk_wins`` says whether a name in
    both ``positives`` and ``junk`` is junk (classic program) or a positive (revisitop).
    """

    positives: frozenset[str]
    junk: frozenset[str] = frozenset()
    exclude: frozenset[str] = frozenset()
    npos: int | None = None
    junk_wins: bool = True

    @property
    def num_positives(self) -> int:
        return len(self.positives) if self.npos is None else self.npos


@dataclass
class Dataset:
    """Database ``names``/``paths`` (N,), ``queries`` (Q,), ``truth[setting]`` (Q,) per setting."""

    name: str
    protocol: str  # "classic" | "revisited" | "holidays" | "generic"
    names: list[str]
    paths: list[Path]
    queries: list[Query]
    truth: dict[str, list[Truth]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.names) != len(self.paths):
            raise ValueError("names and paths differ in length")
        if not self.names:
            raise DatasetError(f"{self.name}: the database has no images")
        if not self.queries:
            raise DatasetError(f"{self.name}: no queries")
        for setting, truths in self.truth.items():
            if len(truths) != len(self.queries):
                raise ValueError(f"setting {setting}: {len(truths)} truths for {len(self.queries)} queries")

    @property
    def settings(self) -> list[str]:
        return list(self.truth)

    def positives(self, query: int, setting: str | None = None) -> frozenset[str]:
        """Positive names of query number ``query`` (default setting: the first)."""
        return self.truth[setting or self.settings[0]][query].positives

    def junk(self, query: int, setting: str | None = None) -> frozenset[str]:
        """Junk names of query number ``query`` (default setting: the first)."""
        return self.truth[setting or self.settings[0]][query].junk

    def ground_truth(self) -> dict[str, list[GroundTruth]]:
        """Per setting, per query: positives/junk/exclude as indices into :attr:`names`.

        Names not in the database (e.g. dropped images) are ignored for the index lists but
        still count in ``npos`` for the classic protocol, as in the official program.
        """
        index = {n: i for i, n in enumerate(self.names)}

        def idx(names: Iterable[str]) -> np.ndarray:
            return np.array(sorted(index[n] for n in names if n in index), dtype=np.int64)

        return {
            setting: [
                GroundTruth(
                    positives=idx(t.positives),
                    junk=idx(t.junk),
                    npos=t.num_positives,
                    exclude=idx(t.exclude),
                    junk_wins=t.junk_wins,
                )
                for t in truths
            ]
            for setting, truths in self.truth.items()
        }


# ----------------------------------------------------------------------------- helpers


def image_name(relpath: str | Path) -> str:
    """Name of an image from a path relative to its folder: POSIX path without the extension."""
    text = str(relpath).replace("\\", "/")
    while text.startswith("./"):
        text = text[2:]
    path = PurePosixPath(text)
    return str(path.with_suffix("")) if path.suffix.lower() in IMAGE_EXTENSIONS else text


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DatasetError(f"{what} folder {path} does not exist: pass the dataset's root with --root")
    return path


def _image_dir(root: Path) -> Path:
    root = _require_dir(Path(root), "dataset")
    jpg = root / "jpg"
    return jpg if jpg.is_dir() else root


def scan_images(folder: Path, *, exclude: Sequence[Path] = (), by_stem: bool = False) -> dict[str, Path]:
    """Images under ``folder`` (recursive, sorted), as ``{name: path}``.

    Names are file stems (``by_stem``) or POSIX paths relative to ``folder`` without extension.
    Folders in ``exclude`` are skipped. Two files with the same name are an error.
    """
    skip = [p.resolve() for p in exclude]
    found: dict[str, Path] = {}
    for path in list_images(folder):
        if any(s == path.resolve() or s in path.resolve().parents for s in skip):
            continue
        name = path.stem if by_stem else image_name(path.relative_to(folder).as_posix())
        if name in found:
            raise DatasetError(f"two images named '{name}': {found[name]} and {path}")
        found[name] = path
    return found


def _read_lines(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        raise DatasetError(f"ground-truth file {path} is missing") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def _find_gt_dir(root: Path, gt_dir: Path | None) -> Path:
    candidates = [Path(gt_dir)] if gt_dir is not None else [root / d for d in _GT_DIRS]
    for cand in candidates:
        if cand.is_dir() and any(cand.glob("*_query.txt")):
            return cand
    where = candidates[0] if gt_dir is not None else root
    raise DatasetError(
        f"no ground-truth files (*_query.txt) in {where}: put the official gt files in {root / 'gt'} or pass --gt DIR"
    )


def _distractors(root: Path, distractors: Path | None, name: str) -> Path:
    if distractors is not None:
        return _require_dir(Path(distractors), "distractor")
    for d in _DISTRACTOR_DIRS:
        if (root / d).is_dir():
            return root / d
    raise DatasetError(
        f"{name} needs the 100k Flickr distractor images: pass --distractors DIR "
        f"(or put them in {root / _DISTRACTOR_DIRS[0]})"
    )


def _add_distractors(names: list[str], paths: list[Path], folder: Path) -> tuple[list[str], list[Path]]:
    extra = scan_images(folder)
    taken = set(names)
    clash = [n for n in extra if n in taken]
    if clash:
        raise DatasetError(f"distractor image '{clash[0]}' in {folder} has the name of a dataset image")
    if not extra:
        raise DatasetError(f"distractor folder {folder} holds no images")
    return names + list(extra), paths + list(extra.values())


def _parse_box(fields: Sequence[str], source: Path) -> Box:
    try:
        x1, y1, x2, y2 = (float(v) for v in fields)
    except ValueError:
        raise DatasetError(f"{source}: expected 'image x1 y1 x2 y2', got {' '.join(fields)!r}") from None
    return (x1, y1, x2, y2)


# ----------------------------------------------------------------------------- loaders


def read_classic_gt(gt_dir: Path) -> list[tuple[str, str, Box, frozenset[str], frozenset[str]]]:
    """Read every ``<q>_query.txt`` (sorted) with its ``_good``, ``_ok``, ``_junk`` lists.

    Returns ``(gt_name, image_name, box, positives, junk)`` per query; ``oxc1_`` is stripped
    from the image name.
    """
    out = []
    for qfile in sorted(Path(gt_dir).glob("*_query.txt")):
        base = qfile.name[: -len("_query.txt")]
        lines = _read_lines(qfile)
        if not lines:
            raise DatasetError(f"{qfile} is empty: expected 'oxc1_<image> x1 y1 x2 y2'")
        fields = lines[0].split()
        if len(fields) != 5:
            raise DatasetError(f"{qfile}: expected 'oxc1_<image> x1 y1 x2 y2', got {lines[0]!r}")
        image = fields[0][len("oxc1_") :] if fields[0].startswith("oxc1_") else fields[0]
        box = _parse_box(fields[1:], qfile)
        good, ok, junk = (
            frozenset(_read_lines(qfile.with_name(f"{base}_{kind}.txt"))) for kind in ("good", "ok", "junk")
        )
        out.append((base, image, box, good | ok, junk))
    return out


def load_classic(
    root: str | Path,
    name: str = "oxford5k",
    *,
    gt_dir: str | Path | None = None,
    distractors: str | Path | None = None,
) -> Dataset:
    """Oxford5k / Paris6k (and the 105k / 106k variants with ``distractors``)."""
    if name not in CLASSIC:
        raise DatasetError(f"unknown classic dataset '{name}': use one of {', '.join(CLASSIC)}")
    root = Path(root)
    images = _image_dir(root)
    big = name in ("oxford105k", "paris106k")
    dist_dir = _distractors(root, Path(distractors) if distractors else None, name) if big else None
    gts = read_classic_gt(_find_gt_dir(root, Path(gt_dir) if gt_dir else None))
    found = scan_images(images, exclude=[d for d in (dist_dir, root / "gt") if d], by_stem=True)
    if name.startswith("paris"):
        found = {n: p for n, p in found.items() if n not in PARIS_DROPPED}
    if not found:
        raise DatasetError(f"no images in {images}: expected <root>/jpg/*.jpg or images in <root>")
    names, paths = list(found), list(found.values())
    queries, truths = [], []
    for base, image, box, pos, junk in gts:
        if image not in found:
            raise DatasetError(
                f"query image '{image}' (from {base}_query.txt) is not among the {len(found)} images under {images}"
            )
        queries.append(Query(name=image, path=found[image], box=box))
        truths.append(Truth(positives=pos, junk=junk))
    if dist_dir is not None:
        names, paths = _add_distractors(names, paths, dist_dir)
    return Dataset(name, "classic", names, paths, queries, {"all": truths})


def load_revisited(root: str | Path, name: str = "roxford5k", *, distractors: str | Path | None = None) -> Dataset:
    """ROxford5k / RParis6k from ``gnd_<name>.pkl``: settings easy, medium, hard."""
    if name not in REVISITED:
        raise DatasetError(f"unknown revisited dataset '{name}': use one of {', '.join(REVISITED)}")
    root = _require_dir(Path(root), "dataset")
    pkl = root / f"gnd_{name}.pkl"
    if not pkl.is_file() and (root / name / pkl.name).is_file():
        root = root / name
        pkl = root / pkl.name
    if not pkl.is_file():
        raise DatasetError(f"ground-truth file {pkl} is missing: download gnd_{name}.pkl into --root")
    gnd = safe_pickle.load(pkl)
    try:
        imlist = [str(s) for s in gnd["imlist"]]
        qimlist = [str(s) for s in gnd["qimlist"]]
        entries = list(gnd["gnd"])
    except (KeyError, TypeError):
        raise DatasetError(f"{pkl}: expected a dict with 'imlist', 'qimlist' and 'gnd'") from None
    if len(entries) != len(qimlist):
        raise DatasetError(f"{pkl}: {len(entries)} 'gnd' entries for {len(qimlist)} queries")
    images = _image_dir(root)

    def path_of(n: str) -> Path:
        return images / (n if Path(n).suffix.lower() in IMAGE_EXTENSIONS else n + ".jpg")

    paths = [path_of(n) for n in imlist]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise DatasetError(f"{len(missing)} database images of {name} are missing, e.g. {missing[0]}")

    def names_of(key: str, entry: dict, qi: int) -> frozenset[str]:
        idx = np.asarray(entry.get(key, ()), dtype=np.int64).ravel()
        if idx.size and (idx.min() < 0 or idx.max() >= len(imlist)):
            raise DatasetError(f"{pkl}: query {qi} '{key}' index out of range of imlist")
        return frozenset(imlist[i] for i in idx.tolist())

    queries = []
    settings: dict[str, list[Truth]] = {"easy": [], "medium": [], "hard": []}
    for qi, (qname, entry) in enumerate(zip(qimlist, entries)):
        qpath = path_of(qname)
        if not qpath.is_file():
            raise DatasetError(f"query image {qpath} of {name} is missing")
        bbx = entry.get("bbx")
        box = tuple(float(v) for v in np.asarray(bbx).ravel()[:4]) if bbx is not None else None
        queries.append(Query(name=qname, path=qpath, box=box))  # type: ignore[arg-type]
        easy, hard, junk = (names_of(k, entry, qi) for k in ("easy", "hard", "junk"))
        n_easy, n_hard = (len(np.asarray(entry.get(k, ())).ravel()) for k in ("easy", "hard"))
        settings["easy"].append(Truth(easy, junk | hard, npos=n_easy, junk_wins=False))
        settings["medium"].append(Truth(easy | hard, junk, npos=n_easy + n_hard, junk_wins=False))
        settings["hard"].append(Truth(hard, junk | easy, npos=n_hard, junk_wins=False))
    names = list(imlist)
    if distractors is not None:
        names, paths = _add_distractors(names, paths, _require_dir(Path(distractors), "distractor"))
    return Dataset(name, "revisited", names, paths, queries, settings)


def load_holidays(root: str | Path) -> Dataset:
    """INRIA Holidays: ``NNNNMM.jpg``; ``MM == 00`` is the query of group ``NNNN``."""
    images = _image_dir(Path(root))
    found = scan_images(images, by_stem=True)
    bad = [n for n in found if not (len(n) == 6 and n.isdigit())]
    if bad:
        raise DatasetError(f"Holidays image '{bad[0]}' in {images} is not named NNNNMM.jpg")
    if not found:
        raise DatasetError(f"no images in {images}: expected <root>/jpg/NNNNMM.jpg")
    groups: dict[str, list[str]] = defaultdict(list)
    for n in found:
        groups[n[:4]].append(n)
    queries, truths = [], []
    for n in found:
        if n.endswith("00"):
            pos = frozenset(m for m in groups[n[:4]] if m != n)
            if not pos:
                continue
            queries.append(Query(name=n, path=found[n]))
            truths.append(Truth(positives=pos, exclude=frozenset({n})))
    return Dataset("holidays", "holidays", list(found), list(found.values()), queries, {"all": truths})


def _split_list(cell: str) -> list[str]:
    return [image_name(v) for v in cell.replace(";", " ").split() if v]


def load_generic(root: str | Path, csv_path: str | Path | None = None) -> Dataset:
    """A folder of images plus ground truth from a CSV (see module doc) or sub-folder groups.

    Every query is removed from its own ranking. Images under ``root`` not named in the CSV
    stay in the database as distractors.
    """
    root = _require_dir(Path(root), "dataset")
    if csv_path is None:
        for cand in ("groups.csv", "queries.csv", "gt.csv"):
            if (root / cand).is_file():
                csv_path = root / cand
                break
    found = scan_images(root)
    if not found:
        raise DatasetError(f"no images under {root}")
    if csv_path is None:
        groups: dict[str, list[str]] = defaultdict(list)
        for n in found:
            if "/" in n:
                groups[n.rsplit("/", 1)[0]].append(n)
        if not groups:
            raise DatasetError(
                f"{root}: no ground truth: add groups.csv (image,group) or queries.csv "
                "(query,positives), pass --gt FILE, or put each group's images in a sub-folder"
            )
        return _group_dataset(root, found, {n: g for g, ms in groups.items() for n in ms})
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise DatasetError(f"ground-truth CSV {csv_path} does not exist")
    with open(csv_path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    cols = {c.strip().lower(): c for c in (rows[0].keys() if rows else [])}
    if "image" in cols and "group" in cols:
        membership = {}
        for r in rows:
            n = image_name(r[cols["image"]].strip())
            if n not in found:
                raise DatasetError(f"{csv_path}: image '{n}' is not under {root}")
            membership[n] = r[cols["group"]].strip()
        return _group_dataset(root, found, membership)
    pos_col = cols.get("positives") or cols.get("positive")
    if "query" not in cols or pos_col is None:
        raise DatasetError(
            f"{csv_path}: expected a header 'image,group' or 'query,positives[,junk]', "
            f"got {', '.join(cols) or 'nothing'}"
        )
    pos_map: dict[str, set[str]] = defaultdict(set)
    junk_map: dict[str, set[str]] = defaultdict(set)
    for r in rows:
        q = image_name(r[cols["query"]].strip())
        pos_map[q].update(_split_list(r[pos_col] or ""))
        if "junk" in cols:
            junk_map[q].update(_split_list(r[cols["junk"]] or ""))
    queries, truths = [], []
    for q in pos_map:
        if q not in found:
            raise DatasetError(f"{csv_path}: query image '{q}' is not under {root}")
        unknown = sorted(p for p in pos_map[q] | junk_map[q] if p not in found)
        if unknown:
            raise DatasetError(f"{csv_path}: image '{unknown[0]}' (for query '{q}') is not under {root}")
        if not pos_map[q] - {q}:
            raise DatasetError(f"{csv_path}: query '{q}' has no positives")
        queries.append(Query(name=q, path=found[q]))
        truths.append(Truth(frozenset(pos_map[q] - {q}), frozenset(junk_map[q]), frozenset({q})))
    return Dataset("generic", "generic", list(found), list(found.values()), queries, {"all": truths})


def _group_dataset(root: Path, found: dict[str, Path], membership: dict[str, str]) -> Dataset:
    groups: dict[str, list[str]] = defaultdict(list)
    for n, g in membership.items():
        groups[g].append(n)
    queries, truths = [], []
    for n in found:
        if n in membership and len(groups[membership[n]]) > 1:
            queries.append(Query(name=n, path=found[n]))
            pos = frozenset(m for m in groups[membership[n]] if m != n)
            truths.append(Truth(positives=pos, exclude=frozenset({n})))
    if not queries:
        raise DatasetError(f"{root}: no group has two or more images, so there is nothing to query")
    return Dataset("generic", "generic", list(found), list(found.values()), queries, {"all": truths})


def load_dataset(
    name: str,
    root: str | Path,
    *,
    gt: str | Path | None = None,
    distractors: str | Path | None = None,
) -> Dataset:
    """Load dataset ``name`` (one of :data:`DATASETS`) from ``root``.

    ``gt``: the classic gt folder or the generic CSV; ``distractors``: the extra database folder.
    """
    key = name.lower()
    if key in CLASSIC:
        return load_classic(root, key, gt_dir=gt, distractors=distractors)
    if key in REVISITED:
        return load_revisited(root, key, distractors=distractors)
    if key == "holidays":
        return load_holidays(root)
    if key == "generic":
        return load_generic(root, gt)
    raise DatasetError(f"unknown dataset '{name}': use one of {', '.join(DATASETS)}")
