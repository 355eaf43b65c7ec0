"""Groups from similar pairs: connected components, or tight groups around a representative.

Input: ``n`` items and pairs ``(i (P,), j (P,), score (P,))`` (from :mod:`.pairs`). A *group* is
a list of at least two item indices; items in no pair are singletons and are not reported.

* ``components``: connected components (union-find). One chain of close pairs makes one group,
  even when its two ends are not similar: right for bursts, loose for copies.
* ``tight``: greedy stars. The item with the most pairs (ties: highest summed score, then lowest
  index) becomes a representative and takes every still-unassigned item paired with it; repeat.
  Every member is then above the threshold to its representative.

Each :class:`Group` lists its members best first (the representative, then by descending
similarity to it, then by index) with their similarity to the representative.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import RegattError

MODES = ("components", "tight")


@dataclass(frozen=True)
class Group:
    """``members`` item indices ``(M,)``, ``scores`` similarity to ``members[0]`` (the
    representative, score 1) ``(M,)``."""

    members: np.ndarray
    scores: np.ndarray

    @property
    def representative(self) -> int:
        return int(self.members[0])

    def __len__(self) -> int:
        return int(self.members.size)


def _find(parent: np.ndarray, x: int) -> int:
    root = x
    while parent[root] != root:
        root = parent[root]
    while parent[x] != root:  # path compression
        parent[x], x = root, parent[x]
    return root


def components(n: int, i: np.ndarray, j: np.ndarray) -> list[np.ndarray]:
    """Connected components of size >= 2 of the graph on ``n`` nodes with edges ``(i, j)``,
    each as sorted indices; components ordered by their smallest index."""
    parent = np.arange(n, dtype=np.int64)
    for a, b in zip(i.tolist(), j.tolist()):
        ra, rb = _find(parent, a), _find(parent, b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    roots = np.array([_find(parent, x) for x in range(n)], dtype=np.int64)
    order = np.argsort(roots, kind="stable")
    cuts = np.flatnonzero(np.diff(roots[order])) + 1
    return [g for g in np.split(order, cuts) if g.size >= 2]


def _adjacency(n: int, i: np.ndarray, j: np.ndarray, s: np.ndarray):
    """CSR adjacency (both directions): ``(offsets (n+1,), neighbours, scores)``."""
    src = np.concatenate([i, j])
    dst = np.concatenate([j, i])
    sc = np.concatenate([s, s]).astype(np.float64)
    order = np.lexsort((dst, src))
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.add.at(offsets, src + 1, 1)
    return np.cumsum(offsets), dst[order], sc[order]


def tight_groups(n: int, i: np.ndarray, j: np.ndarray, s: np.ndarray) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """Greedy stars: ``[(representative, members (M,), scores (M,))]`` (members exclude the
    representative; see the module docstring)."""
    off, nb, sc = _adjacency(n, i, j, s)
    degree = np.diff(off)
    # summed scores per row (reduceat fails when the last rows have no pairs)
    strength = np.bincount(np.repeat(np.arange(n), degree), weights=sc, minlength=n)
    order = np.lexsort((np.arange(n), -strength, -degree))
    taken = np.zeros(n, dtype=bool)
    out = []
    for rep in order.tolist():
        if taken[rep] or degree[rep] == 0:
            continue
        neigh, scores = nb[off[rep] : off[rep + 1]], sc[off[rep] : off[rep + 1]]
        free = ~taken[neigh]
        if not free.any():
            continue
        taken[rep] = True
        taken[neigh[free]] = True
        out.append((rep, neigh[free], scores[free]))
    return out


def _ordered(rep: int, members: np.ndarray, scores: np.ndarray) -> Group:
    order = np.lexsort((members, -scores))
    return Group(
        members=np.concatenate([[rep], members[order]]).astype(np.int64),
        scores=np.concatenate([[1.0], scores[order]]).astype(np.float32),
    )


def group_pairs(
    n: int,
    pairs: tuple[np.ndarray, np.ndarray, np.ndarray],
    mode: str = "components",
    similarity=None,
) -> list[Group]:
    """Groups of ``n`` items from ``pairs``; ``mode`` ``components`` or ``tight``.

    ``similarity(rep, members) -> (M,)`` scores members against a representative for the
    ``components`` mode (e.g. descriptor cosines); by default the pair's own score where the
    pair exists, else the best score along a pair of the member. Groups are ordered by size
    (largest first), then by their representative.
    """
    i, j, s = (np.asarray(a) for a in pairs)
    if n < 0 or (i.size and (min(i.min(), j.min()) < 0 or max(i.max(), j.max()) >= n)):
        raise RegattError(f"pair indices fall outside the {n} items")
    if mode == "tight":
        groups = [_ordered(r, m, sc) for r, m, sc in tight_groups(n, i, j, s)]
    elif mode == "components":
        off, nb, sc = _adjacency(n, i, j, s)
        groups = []
        for comp in components(n, i, j):
            strength = np.array([sc[off[x] : off[x + 1]].sum() for x in comp])
            rep = int(comp[np.lexsort((comp, -strength))[0]])
            rest = comp[comp != rep]
            if similarity is not None:
                scores = np.asarray(similarity(rep, rest), dtype=np.float64)
            else:
                direct = {int(a): float(b) for a, b in zip(nb[off[rep] : off[rep + 1]], sc[off[rep] : off[rep + 1]])}
                scores = np.array([direct.get(int(x), float(sc[off[x] : off[x + 1]].max())) for x in rest])
            groups.append(_ordered(rep, rest, scores))
    else:
        raise RegattError(f"unknown grouping '{mode}': use one of {', '.join(MODES)}")
    groups.sort(key=lambda g: (-len(g), g.representative))
    return groups


def pairs_in_groups(groups: list[Group]) -> set[tuple[int, int]]:
    """Every within-group pair ``(a, b)``, ``a < b`` (for pairwise precision and recall)."""
    out: set[tuple[int, int]] = set()
    for g in groups:
        m = sorted(int(x) for x in g.members)
        out.update((a, b) for k, a in enumerate(m) for b in m[k + 1 :])
    return out
