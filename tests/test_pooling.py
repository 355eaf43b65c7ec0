"""Regional pooling against a naive loop over the release's cell rounding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from regatt_export.pooling import _sparse_pick, box_cells, box_mean, roi_max, table_max
from release_reference import reference_regions


def _round_half_away(v: float) -> int:
    return int(np.floor(v + 0.5))


def naive_cells(x: int, y: int, s: int, fh: int, fw: int) -> tuple[int, int, int, int]:
    cx1, cx2 = _round_half_away(x / 32), _round_half_away((x + s - 1) / 32)
    cy1, cy2 = _round_half_away(y / 32), _round_half_away((y + s - 1) / 32)
    xs, ys = min(max(cx1, 0), fw - 1), min(max(cy1, 0), fh - 1)
    xe = min(max(xs + max(cx2 - cx1 + 1, 1), xs + 1), fw)
    ye = min(max(ys + max(cy2 - cy1 + 1, 1), ys + 1), fh)
    return ys, ye, xs, xe


@pytest.mark.parametrize("h,w", [(768, 1024), (1024, 768), (16, 16), (300, 4000), (64, 2048), (77, 123), (33, 40)])
def test_pooling_matches_naive_loop(h, w):
    torch.manual_seed(h * 7 + w)
    fh, fw = (h + 31) // 32, (w + 31) // 32
    feat = torch.randn(2, 6, fh, fw)
    regions = reference_regions(h, w)
    boxes = torch.tensor([[x, y, x + s - 1, y + s - 1] for x, y, s, _ in regions.tolist()], dtype=torch.float64)
    y0, y1, x0, x1 = box_cells(boxes, 32, torch.tensor(fh), torch.tensor(fw))
    by_roi = roi_max(feat, boxes, 32)
    by_table = table_max(feat, y0, y1, x0, x1)
    means = box_mean(feat, y0, y1, x0, x1)
    for r, (x, y, s, _) in enumerate(regions.tolist()):
        ys, ye, xs, xe = naive_cells(x, y, s, fh, fw)
        assert (int(y0[r]), int(y1[r]), int(x0[r]), int(x1[r])) == (ys, ye, xs, xe)
        cell = feat[:, :, ys:ye, xs:xe]
        assert torch.equal(by_table[:, r], cell.amax(dim=(2, 3)))  # a max is exact
        assert torch.equal(by_roi[:, r], cell.amax(dim=(2, 3)))
        torch.testing.assert_close(means[:, r], cell.mean(dim=(2, 3)), atol=1e-6, rtol=1e-6)


def test_sparse_table_every_interval():
    torch.manual_seed(0)
    t = torch.randn(1, 3, 2, 70)
    starts, stops = zip(*[(a, b) for a in range(70) for b in range(a + 1, 71)])
    out = _sparse_pick(t, torch.tensor(starts), torch.tensor(stops), dim=3, diagonal=False)
    for i, (a, b) in enumerate(zip(starts, stops)):
        assert torch.equal(out[..., i], t[..., a:b].amax(dim=-1))


def test_half_coordinates_round_away_from_zero():
    # level 5 of a 1024 square: x = 0, 170, 341, 512, 683, side 341 (x2 = x + 340)
    xs = torch.tensor([0.0, 170, 341, 512, 683], dtype=torch.float64)
    boxes = torch.stack([xs, xs, xs + 340, xs + 340], dim=1)
    y0, y1, x0, x1 = box_cells(boxes, 32, torch.tensor(32), torch.tensor(32))
    assert x0.tolist() == [0, 5, 11, 16, 21]  # 170/32 = 5.3, 341/32 = 10.66, 683/32 = 21.3
    assert x1.tolist() == [12, 17, 22, 28, 32]  # x2/32 rounded, +1, clipped: 10.6, 15.9, 21.3, 26.6, 31.97
    # exact halves: 16 px -> 0.5 -> 1 (half-to-even would give 0), 48 -> 1.5 -> 2
    halves = torch.tensor([[16.0, 48.0, 47.0, 79.0]], dtype=torch.float64)
    y0, y1, x0, x1 = box_cells(halves, 32, torch.tensor(32), torch.tensor(32))
    assert (int(x0[0]), int(y0[0]), int(x1[0]), int(y1[0])) == (1, 2, 2, 3)
