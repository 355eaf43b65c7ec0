"""Average precision and mean AP exactly as each official evaluation program computes them.

Three official rules, all "trapezoid" APs over the positives' ranks (SPEC section 5):

* :func:`compute_ap` — the classic Oxford5k / Paris6k ``compute_ap.cpp``: walk the ranked names,
  skip junk, after each non-junk item update recall and precision and add a trapezoid.
* :func:`compute_ap_revisited` — ``revisitop``'s ``compute_ap(ranks, nres)`` on the junk-adjusted
  0-based positions of the positives, and :func:`compute_map_revisited` (mAP and mP@k, with the
  revisited protocol's quirks: queries without positives are left out of the mean,
  ``P@k`` uses ``min(max(pos), k)``).
* :func:`compute_ap_holidays` — INRIA Holidays' ``score_ap_from_ranks_1(ranks, nres)`` on the
  ranks of the true positives in a ranking from which the query itself was removed.

The three give the same number for the same ranking (they are the same trapezoid rule written
three ways); they differ in how positives and junk are counted, which the dataset decides.
The official C++ accumulates in float32; these accumulate in float64 (differences < 1e-6).

:func:`evaluate` scores whole rankings ``(Q, N)`` against a :class:`~regatt_sdk.datasets.Dataset`
and returns percentages per protocol setting.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

#: the revisited protocol's precision cut-offs (mP@1, mP@5, mP@10)
DEFAULT_KAPPAS: tuple[int, ...] = (1, 5, 10)


def compute_ap(ranked: Sequence[str], positives: Iterable[str], junk: Iterable[str] = ()) -> float:
    """AP of one ranking by the classic Oxford rule (``compute_ap.cpp``).

    ``ranked``: image names, best first (usually the whole database). ``positives``, ``junk``:
    name sets (``good`` + ``ok`` and ``junk``; duplicates in the files count once, as the
    program reads them into ``std::set``). Junk items neither count nor consume a rank; a name
    that is both positive and junk is junk. Positives never retrieved lower recall.
    Raises ``ValueError`` when there are no positives (the program would divide by zero).
    """
    pos = set(positives)
    amb = set(junk)
    if not pos:
        raise ValueError("compute_ap: the query has no positives")
    hits = 0
    j = 0  # non-junk items seen
    positions: list[int] = []  # 0-based position of each hit among non-junk items
    for name in ranked:
        if name in amb:
            continue
        if name in pos:
            positions.append(j)
            hits += 1
        j += 1
    return _trapezoid_ap(np.asarray(positions, dtype=np.float64), len(pos))


def _trapezoid_ap(positions: np.ndarray, npos: int) -> float:
    """Sum over hits of ``(1/npos) * (precision before + precision at the hit) / 2``.

    ``positions``: sorted 0-based ranks (junk removed) of the retrieved positives, shape (P,).
    """
    if positions.size == 0:
        return 0.0
    ntp = np.arange(positions.size, dtype=np.float64)
    before = np.where(positions == 0, 1.0, ntp / np.maximum(positions, 1.0))
    after = (ntp + 1.0) / (positions + 1.0)
    return float(np.sum((before + after) / 2.0) / npos)


def compute_ap_revisited(ranks: Sequence[int] | np.ndarray, nres: int) -> float:
    """revisitop's ``compute_ap``: ``ranks`` are the sorted 0-based positions of the positives
    after junk removal, ``nres`` the number of positives (each list entry counts)."""
    ap = 0.0
    recall_step = 1.0 / nres
    for j, rank in enumerate(np.asarray(ranks).tolist()):
        precision_0 = 1.0 if rank == 0 else float(j) / rank
        precision_1 = float(j + 1) / (rank + 1)
        ap += (precision_0 + precision_1) * recall_step / 2.0
    return ap


def compute_ap_holidays(tp_ranks: Sequence[int] | np.ndarray, nres: int) -> float:
    """INRIA Holidays' ``score_ap_from_ranks_1``: ``tp_ranks`` are the 0-based ranks of the true
    positives (ascending) in the ranking without the query, ``nres`` the number of positives."""
    ap = 0.0
    recall_step = 1.0 / nres
    for ntp, rank in enumerate(np.asarray(tp_ranks).tolist()):
        precision_0 = 1.0 if rank == 0 else ntp / float(rank)
        precision_1 = (ntp + 1) / float(rank + 1)
        ap += (precision_1 + precision_0) * recall_step / 2.0
    return ap


def positive_positions(
    ranking: np.ndarray, positives: np.ndarray, junk: np.ndarray, exclude: np.ndarray | None = None
) -> np.ndarray:
    """0-based positions of the positives in ``ranking`` after removing junk (and ``exclude``).

    ``ranking``: (N,) database indices, best first. ``positives``, ``junk``, ``exclude``: index
    arrays into the database. A positive that is also junk or excluded is dropped from the walk,
    as in the classic program. Returns (P,) int64, ascending (as revisitop's junk adjustment).
    """
    ranking = np.asarray(ranking, dtype=np.int64)
    positives = np.asarray(positives, dtype=np.int64)
    junk = np.asarray(junk, dtype=np.int64)
    exclude = np.zeros(0, np.int64) if exclude is None else np.asarray(exclude, dtype=np.int64)
    size = 1 + max(int(a.max(initial=-1)) for a in (ranking, positives, junk, exclude))
    skip = np.zeros(size, dtype=bool)
    skip[junk] = True
    skip[exclude] = True
    is_pos = np.zeros(size, dtype=bool)
    is_pos[positives] = True
    kept = ranking[~skip[ranking]]
    return np.flatnonzero(is_pos[kept]).astype(np.int64)


def precision_at(positions: np.ndarray, kappas: Sequence[int]) -> np.ndarray:
    """revisitop's P@k for one query: ``kq = min(max(pos), k)``, ``#(pos <= kq) / kq`` (1-based).

    ``positions``: (P,) 0-based junk-adjusted positions, P >= 1. Returns (len(kappas),).
    """
    pos = np.asarray(positions) + 1
    out = np.zeros(len(kappas), dtype=np.float64)
    if pos.size == 0:
        return out
    for i, k in enumerate(kappas):
        kq = min(int(pos.max()), int(k))
        out[i] = float((pos <= kq).sum()) / kq
    return out


@dataclass(frozen=True)
class GroundTruth:
    """One query's ground truth in one protocol setting, as database indices.

    ``positives``/``junk``: (P,), (J,) int64 indices into the database list; ``npos`` is the
    positive count the official program divides by (may exceed ``len(positives)`` when a
    listed positive is not in the database, e.g. the 20 dropped Paris images).
    ``exclude``: indices removed from this query's ranking (Holidays: the query itself).
    ``junk_wins``: a positive also listed as junk is junk (classic program, True) or stays a
    positive whose position still counts only the junk above it (revisitop, False).
    """

    positives: np.ndarray
    junk: np.ndarray
    npos: int
    exclude: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    junk_wins: bool = True


@dataclass
class SettingResult:
    """Scores of one protocol setting: ``map`` and ``mp`` (mP@k) in percent, per-query APs (0..1,
    NaN for queries without positives, which are left out of the mean)."""

    name: str
    map: float
    aps: np.ndarray
    mp: dict[int, float]


def evaluate_setting(
    rankings: np.ndarray,
    gts: Sequence[GroundTruth],
    *,
    name: str = "all",
    kappas: Sequence[int] = DEFAULT_KAPPAS,
) -> SettingResult:
    """mAP (%) and mP@k (%) of ``rankings`` (Q, N) database indices, best first, against ``gts``.

    Row ``i`` of ``rankings`` is query ``i``'s ranking of the whole database. Queries with
    ``npos == 0`` get AP NaN and are left out of the means (revisited protocol).
    """
    rankings = np.asarray(rankings)
    if rankings.ndim != 2 or rankings.shape[0] != len(gts):
        raise ValueError(f"rankings must be (Q, N) with Q = {len(gts)} queries, got shape {rankings.shape}")
    aps = np.full(len(gts), np.nan)
    prs = np.full((len(gts), len(kappas)), np.nan)
    for i, gt in enumerate(gts):
        if gt.npos == 0:
            continue
        if gt.junk_wins:
            pos = positive_positions(rankings[i], gt.positives, gt.junk, gt.exclude)
        else:
            row = rankings[i]
            if gt.exclude.size:
                row = row[~np.isin(row, gt.exclude)]
            pos = _positions_keep_overlap(row, gt.positives, gt.junk)
        aps[i] = _trapezoid_ap(pos.astype(np.float64), gt.npos)
        prs[i] = precision_at(pos, kappas)
    valid = ~np.isnan(aps)
    if not valid.any():
        raise ValueError(f"setting '{name}': no query has any positive")
    return SettingResult(
        name=name,
        map=float(aps[valid].mean() * 100.0),
        aps=aps,
        mp={int(k): float(prs[valid, j].mean() * 100.0) for j, k in enumerate(kappas)},
    )


def compute_map_revisited(
    ranks: np.ndarray, gnd: Sequence[Mapping[str, Sequence[int]]], kappas: Sequence[int] = ()
) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    """revisitop's ``compute_map``: ``ranks`` (N, Q) database indices per column, ``gnd`` a list of
    dicts with ``ok`` and optional ``junk`` index lists. Returns ``(map, aps, pr, prs)`` as
    fractions (not percent), exactly as the official function."""
    ranks = np.asarray(ranks)
    gts = []
    for g in gnd:
        ok = np.asarray(g["ok"], dtype=np.int64).ravel()
        junk = np.asarray(g.get("junk", ()), dtype=np.int64).ravel()
        gts.append(GroundTruth(positives=ok, junk=junk, npos=int(ok.size)))
    aps = np.full(len(gts), np.nan)
    prs = np.full((len(gts), len(kappas)), np.nan)
    for i, gt in enumerate(gts):
        if gt.npos == 0:
            continue
        # revisitop keeps a positive that is also junk (in1d on each list separately)
        pos = _positions_keep_overlap(ranks[:, i], gt.positives, gt.junk)
        aps[i] = compute_ap_revisited(pos, gt.npos)
        prs[i] = precision_at(pos, kappas)
    valid = ~np.isnan(aps)
    mean_ap = float(aps[valid].mean()) if valid.any() else float("nan")
    pr = prs[valid].mean(axis=0) if valid.any() else np.full(len(kappas), np.nan)
    return mean_ap, aps, pr, prs


def _positions_keep_overlap(ranking: np.ndarray, ok: np.ndarray, junk: np.ndarray) -> np.ndarray:
    """revisitop's position adjustment: each positive's position minus the junk ranked above it."""
    pos = np.flatnonzero(np.isin(ranking, ok))
    jpos = np.flatnonzero(np.isin(ranking, junk))
    return pos - np.searchsorted(jpos, pos, side="left")


@dataclass
class EvalResult:
    """Scores of one dataset: one :class:`SettingResult` per protocol setting."""

    dataset: str
    settings: dict[str, SettingResult]

    @property
    def map(self) -> float:
        """The headline mAP (%): the only setting, or Medium for the revisited protocol."""
        if "medium" in self.settings:
            return self.settings["medium"].map
        return next(iter(self.settings.values())).map

    def to_dict(self) -> dict:
        return {
            name: {
                "map": round(s.map, 4),
                **{f"mp@{k}": round(v, 4) for k, v in s.mp.items()},
                "num_queries": int((~np.isnan(s.aps)).sum()),
            }
            for name, s in self.settings.items()
        }


def evaluate(
    rankings: np.ndarray,
    settings: Mapping[str, Sequence[GroundTruth]],
    *,
    dataset: str = "",
    kappas: Sequence[int] = DEFAULT_KAPPAS,
) -> EvalResult:
    """Score ``rankings`` (Q, N) under each named setting (``{"all": gts}`` or easy/medium/hard)."""
    return EvalResult(
        dataset=dataset,
        settings={name: evaluate_setting(rankings, gts, name=name, kappas=kappas) for name, gts in settings.items()},
    )
