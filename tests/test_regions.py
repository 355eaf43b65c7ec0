"""The R-MAC grid against hand-worked tables and the reference formulation."""

from __future__ import annotations

import random

import pytest
import torch

from regatt_export.regions import rmac_boxes, slot_layout
from release_reference import reference_regions


def grid(h: int, w: int, levels: int = 5) -> list[tuple[int, int, int]]:
    """Sorted ``(side, y, x)`` of the real regions."""
    boxes, valid = rmac_boxes(
        torch.tensor(float(h), dtype=torch.float64), torch.tensor(float(w), dtype=torch.float64), levels
    )
    out = []
    for x1, y1, x2, _ in boxes[valid].tolist():
        out.append((int(x2 - x1 + 1), int(y1), int(x1)))
    return sorted(out)


def table(levels: dict[int, tuple[list[int], list[int]]]) -> list[tuple[int, int, int]]:
    """Expand ``{side: (ys, xs)}`` into sorted ``(side, y, x)``."""
    return sorted((s, y, x) for s, (ys, xs) in levels.items() for y in ys for x in xs)


SQUARE_1024 = {
    1024: ([0], [0]),
    682: ([0, 342], [0, 342]),
    512: ([0, 256, 512], [0, 256, 512]),
    409: ([0, 205, 410, 615], [0, 205, 410, 615]),
    341: ([0, 170, 341, 512, 683], [0, 170, 341, 512, 683]),
}
# 768 x 1024 (H x W): the long side gets Wd = 1 extra region per level
LANDSCAPE_768x1024 = {
    768: ([0], [0, 256]),
    512: ([0, 256], [0, 256, 512]),
    384: ([0, 192, 384], [0, 213, 426, 640]),
    307: ([0, 153, 307, 461], [0, 179, 358, 537, 717]),
    256: ([0, 128, 256, 384, 512], [0, 153, 307, 460, 614, 768]),
}


def test_square_table():
    assert grid(1024, 1024) == table(SQUARE_1024)
    assert len(grid(1024, 1024)) == 55


def test_landscape_4_3_table():
    assert grid(768, 1024) == table(LANDSCAPE_768x1024)
    assert len(grid(768, 1024)) == 70


def test_portrait_3_4_is_the_transpose():
    portrait = {s: (xs, ys) for s, (ys, xs) in LANDSCAPE_768x1024.items()}
    assert grid(1024, 768) == table(portrait)


def test_one_to_four():
    g = grid(256, 1024)
    assert len(g) == 130  # Wd = 5: sum of l * (l + 5)
    level1 = [r for r in g if r[0] == 256]
    assert level1 == [(256, 0, x) for x in (0, 153, 307, 460, 614, 768)]


def test_ten_by_1024():
    g = grid(10, 1024)
    assert len(g) == 145  # Wd = 6: sum of l * (l + 6)
    level1 = [r for r in g if r[0] == 10]
    assert level1 == [(10, 0, x) for x in (0, 169, 338, 507, 676, 845, 1014)]
    assert sorted({y for s, y, _ in g if s == 6}) == [0, 4]  # level 2: side 6, two rows
    assert all(x + s <= 1024 for s, _, x in g)


@pytest.mark.parametrize("levels", [1, 3, 4, 5, 6])
def test_matches_reference_on_random_sizes(levels):
    rng = random.Random(levels)
    sizes = [(rng.randint(3, 3000), rng.randint(3, 3000)) for _ in range(300)]
    sizes += [(16, 16), (1024, 1024), (683, 1024), (3, 1000), (4000, 300)]
    for h, w in sizes:
        ref = sorted((int(s), int(y), int(x)) for x, y, s, _ in reference_regions(h, w, levels).tolist())
        assert grid(h, w, levels) == ref, (h, w)


def test_slot_layout_counts():
    assert slot_layout(5).n_boxes == sum(l * l + 12 * l for l in range(1, 6))
    with pytest.raises(ValueError):
        slot_layout(0)


def test_regions_inside_image():
    for h, w in [(17, 999), (999, 17), (3, 3), (100, 101)]:
        for s, y, x in grid(h, w):
            assert 0 <= x and x + s <= w and 0 <= y and y + s <= h
