"""The clutter check (benchmarks/clutter_check.py): seeded pasting at a known box, the box share
of attention weight, and the mAP of pasted queries against the clean photos."""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from clutter_check import box_share, build_clutter_set, clutter_map, inside_mask, load_clutter_set  # noqa: E402


@pytest.fixture
def tiny_tree(tmp_path, photos):
    """Two landmarks of 3 photos each (crops of the bundled photos) and 20 backgrounds."""
    root = tmp_path / "landmarks"
    names = list(photos)
    for k, lm in enumerate(("arch", "tower")):
        (root / lm).mkdir(parents=True)
        img = photos[names[k]]
        for j in range(3):
            crop = img[j * 20 : img.shape[0] - j * 10, j * 15 :]
            cv2.imwrite(str(root / lm / f"p{j}.jpg"), crop)
    bg = tmp_path / "bg"
    bg.mkdir()
    rng = np.random.default_rng(1)
    for i in range(20):
        base = photos[names[2 + i % 4]]
        noisy = np.clip(base.astype(int) + rng.integers(-20, 20, base.shape), 0, 255).astype(np.uint8)
        cv2.imwrite(str(bg / f"n{i:04d}_x.JPEG"), cv2.resize(noisy, (160, 120)))
    return root, bg


#: the clutter set the build tests make: 2 landmarks x 2 photos x 2 scales, 5 distractors, S 128
SMALL = dict(part=["arch", "tower"], per_landmark=2, scales=(0.3, 0.6), distractors=5, side=128)


def test_build_pastes_at_the_box(tiny_tree, tmp_path):
    root, bg = tiny_tree
    a = build_clutter_set(root, bg, tmp_path / "a", **SMALL, seed=3)
    assert len(a.queries) == 2 * 2 * 2 and len(a.database) == 6 + 5
    # the backgrounds and distractors never overlap, and the queries' sources are database photos
    assert not {q.background for q in a.queries} & {p for p, lm in a.database if not lm}
    assert {q.source for q in a.queries} <= {p for p, lm in a.database if lm}
    for q in a.queries:
        img = cv2.imread(q.path)
        assert max(img.shape[:2]) == 128
        x1, y1, x2, y2 = q.box
        assert 0 <= x1 < x2 <= img.shape[1] and 0 <= y1 < y2 <= img.shape[0]
        h, w = img.shape[:2]
        assert max((x2 - x1) / w, (y2 - y1) / h) == pytest.approx(q.scale, abs=0.02)
        src = cv2.imread(q.source)
        expect = cv2.resize(src, (x2 - x1, y2 - y1), interpolation=cv2.INTER_AREA).astype(float)
        err = np.abs(img[y1:y2, x1:x2].astype(float) - expect).mean()
        assert err < 10  # JPEG noise only
        if x2 + 4 <= w:  # the box is exact: 4 pixels off matches worse
            assert np.abs(img[y1:y2, x1 + 4 : x2 + 4].astype(float) - expect).mean() > err
    again = load_clutter_set(tmp_path / "a")
    assert again.queries == a.queries and again.database == a.database


@pytest.mark.parametrize("seed, same", [(3, True), (4, False)])
def test_build_is_seeded(tiny_tree, tmp_path, seed, same):
    root, bg = tiny_tree
    a = build_clutter_set(root, bg, tmp_path / "a", **SMALL, seed=3)
    b = build_clutter_set(root, bg, tmp_path / "b", **SMALL, seed=seed)
    assert ([q.box for q in a.queries] == [q.box for q in b.queries]) is same
    pictures_equal = all(
        Path(qa.path).read_bytes() == Path(qb.path).read_bytes() for qa, qb in zip(a.queries, b.queries)
    )
    assert pictures_equal is same


@pytest.mark.parametrize(
    "part, options, match",
    [
        (["arch", "nowhere"], {}, "no landmark folder named nowhere"),
        (["arch", "tower"], dict(per_landmark=2, scales=(0.3, 0.6), distractors=100), "need 8 backgrounds"),
        (["lonely"], dict(per_landmark=1, scales=(0.5,), distractors=1), "lonely: 1 photo"),
    ],
)
def test_bad_input(tiny_tree, tmp_path, part, options, match):
    root, bg = tiny_tree
    (root / "lonely").mkdir()
    cv2.imwrite(str(root / "lonely" / "a.jpg"), np.zeros((30, 30, 3), np.uint8))
    with pytest.raises(ValueError, match=match):
        build_clutter_set(root, bg, tmp_path / "x", part=part, **options)


def test_box_share_counts_regions_mostly_inside():
    boxes = np.array([[0, 0, 9, 9], [10, 0, 19, 9], [5, 0, 14, 9], [0, 0, 19, 19]], dtype=float)  # inclusive
    box = (10, 0, 20, 10)  # end-exclusive: exactly region 1
    assert inside_mask(boxes, box).tolist() == [False, True, True, False]  # region 2 is half inside
    share, uniform = box_share(boxes, np.array([1.0, 3.0, 1.0, 5.0]), box)
    assert share == pytest.approx(4 / 10) and uniform == pytest.approx(0.5)
    assert box_share(boxes, np.ones(4), (100, 100, 110, 110)) == (0.0, 0.0)


def test_clutter_map_excludes_the_pasted_photo(tiny_tree, tmp_path):
    root, bg = tiny_tree
    cs = build_clutter_set(
        root, bg, tmp_path / "a", part=["arch", "tower"], per_landmark=1, scales=(0.5,), distractors=4, side=96
    )
    labels = [lm for _, lm in cs.database]
    onehot = {"arch": [1.0, 0, 0], "tower": [0, 1.0, 0], "": [0, 0, 1.0]}
    db = np.array([onehot[lm] for lm in labels])
    q = np.array([onehot[x.landmark] for x in cs.queries])
    assert clutter_map(q, db, cs) == pytest.approx(100.0)
    assert clutter_map(q, db, cs, qe=2) == pytest.approx(100.0)
    # a query that finds only its own pasted photo scores low: the source is junk, not a positive
    db2 = db.copy()
    for x in cs.queries:
        db2[[p for p, _ in cs.database].index(x.source)] = [0, 0.5, 0.5] if x.landmark == "arch" else [0.5, 0, 0.5]
    db2 /= np.linalg.norm(db2, axis=1, keepdims=True)
    near = np.array([[0.0, 0.0, 1.0] for _ in cs.queries])
    assert clutter_map(near, db2, cs) < 60
