"""Regional pooling against a naive loop over the release's cell rounding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from regatt_export.pooling import box_pool, interval_max
from regatt_export.regions import axis_cells, slot_layout
from release_reference import reference_regions


def _round_half_away(v: float) -> int:
    return int(np.floor(v + 0.5))


@pytest.mark.parametrize("h,w", [(768, 1024), (1024, 768), (16, 16), (300, 4000), (64, 2048), (77, 123), (33, 40)])
def test_box_pool_matches_naive_loop(h, w):
    torch.manual_seed(h * 7 + w)
    fh, fw = (h + 31) // 32, (w + 31) // 32
    feat = torch.randn(2, 6, fh, fw)
    to = lambda v, dt: torch.tensor(v, dtype=dt)  # noqa: E731
    y0, y1, x0, x1, valid = axis_cells(to(float(h), torch.float64), to(float(w), torch.float64), 5, 32, to(fh, torch.int64), to(fw, torch.int64))
    layout = slot_layout(5)
    by, bx = torch.tensor(layout.box_y), torch.tensor(layout.box_x)
    rmax, rmean = box_pool(feat, y0, y1, x0, x1, by, bx)
    got = {}
    for r in torch.nonzero(valid).flatten().tolist():
        key = (int(y0[by[r]]), int(y1[by[r]]), int(x0[bx[r]]), int(x1[bx[r]]))
        got[key] = (rmax[:, r], rmean[:, r])
    expected = 0
    for x, y, s, _ in reference_regions(h, w).tolist():
        cx1, cx2 = _round_half_away(x / 32), _round_half_away((x + s - 1) / 32)
        cy1, cy2 = _round_half_away(y / 32), _round_half_away((y + s - 1) / 32)
        xs = min(max(cx1, 0), fw - 1)
        ys = min(max(cy1, 0), fh - 1)
        xe = min(max(xs + max(cx2 - cx1 + 1, 1), xs + 1), fw)
        ye = min(max(ys + max(cy2 - cy1 + 1, 1), ys + 1), fh)
        cell = feat[:, :, ys:ye, xs:xe]
        mx, mn = got[(ys, ye, xs, xe)]
        assert torch.equal(mx, cell.amax(dim=(2, 3)))  # a max is exact
        torch.testing.assert_close(mn, cell.mean(dim=(2, 3)), atol=1e-6, rtol=1e-6)
        expected += 1
    assert expected == int(valid.sum())


def test_interval_max_all_intervals():
    torch.manual_seed(0)
    t = torch.randn(1, 3, 2, 70)
    starts, stops = [], []
    for a in range(70):
        for b in range(a + 1, 71):
            starts.append(a)
            stops.append(b)
    out = interval_max(t, torch.tensor(starts), torch.tensor(stops), dim=3)
    for i, (a, b) in enumerate(zip(starts, stops)):
        assert torch.equal(out[..., i], t[..., a:b].amax(dim=-1))


def test_half_coordinates_round_away_from_zero():
    # x1 = 16 px -> 0.5 cell: the release rounds to 1 (half-to-even would give 0)
    to = lambda v, dt: torch.tensor(v, dtype=dt)  # noqa: E731
    y0, y1, x0, x1, valid = axis_cells(to(1024.0, torch.float64), to(1024.0, torch.float64), 5, 32, to(32, torch.int64), to(32, torch.int64))
    # level 5 of a 1024 square: x = 0, 170, 341, 512, 683, side 341 -> x2 = 340, 510, 681, 852, 1023
    layout = slot_layout(5)
    lvl5 = [i for i, (lv, p) in enumerate(zip(layout.axis_level, layout.axis_pos)) if lv == 5 and p < 5]
    starts = [int(x0[i]) for i in lvl5]
    assert starts == [int(np.floor(v / 32 + 0.5)) for v in (0, 170, 341, 512, 683)]
    assert starts[2] == 11  # 341 / 32 = 10.66 -> 11
    stops = [int(x1[i]) for i in lvl5]
    assert stops[0] == 12  # x2 = 340 -> 10.625 -> 11 inclusive, so cells [0, 12)
