"""Dataset loaders on the official layouts (built in tmp dirs from the shipped gt fixtures),
the restricted unpickler, and the real Oxford5k gt files when ../shared is present."""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

from paths import GT_FIXTURES as FIXTURES  # noqa: E402
from paths import SHARED_GT
from regatt_sdk import safe_pickle
from regatt_sdk.datasets import (
    PARIS_DROPPED,
    DatasetError,
    load_dataset,
    read_classic_gt,
)
from regatt_sdk.evaluation import evaluate


def touch_images(folder: Path, names, ext=".jpg") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        (folder / n).parent.mkdir(parents=True, exist_ok=True)
        (folder / f"{n}{ext}").write_bytes(b"")


OXFORD_IMAGES = [
    "all_souls_000013",
    "all_souls_000026",
    "all_souls_000041",
    "all_souls_000091",
    "all_souls_000220",
    "oxford_002985",
    "oxford_003521",
    "magdalen_000001",
]


@pytest.fixture
def oxford_root(tmp_path):
    root = tmp_path / "oxford5k"
    touch_images(root / "jpg", OXFORD_IMAGES)
    shutil.copytree(FIXTURES / "oxford", root / "gt")
    return root


def test_oxford_classic_layout(oxford_root):
    ds = load_dataset("oxford5k", oxford_root)
    assert ds.protocol == "classic" and ds.names == sorted(OXFORD_IMAGES)
    assert [q.name for q in ds.queries] == ["all_souls_000013", "oxford_002985"]
    assert ds.queries[0].box == (136.5, 34.1, 648.5, 955.7)
    assert ds.queries[0].path == oxford_root / "jpg" / "all_souls_000013.jpg"
    assert ds.positives(0) == {"all_souls_000026", "all_souls_000091", "all_souls_000041"}
    assert ds.junk(0) == {"all_souls_000220", "all_souls_000013"}
    gt = ds.ground_truth()["all"]
    assert gt[0].npos == 3 and gt[0].exclude.size == 0
    # a perfect ranking scores 100, the query stays in the database (here it is junk)
    idx = {n: i for i, n in enumerate(ds.names)}
    first = [idx[n] for n in ("all_souls_000026", "all_souls_000041", "all_souls_000091")]
    rest = [i for i in range(len(ds.names)) if i not in first]
    second = [idx["all_souls_000013"], idx["oxford_003521"]]
    rest2 = [i for i in range(len(ds.names)) if i not in second]
    res = evaluate(np.array([first + rest, second + rest2]), ds.ground_truth(), dataset=ds.name)
    assert res.map == pytest.approx(100.0)


def test_images_directly_in_root_and_gt_dir_option(tmp_path):
    root = tmp_path / "ox"
    touch_images(root, OXFORD_IMAGES)
    ds = load_dataset("oxford5k", root, gt=FIXTURES / "oxford")
    assert len(ds.names) == len(OXFORD_IMAGES) and len(ds.queries) == 2


def test_paris_keeps_names_and_drops_the_twenty(tmp_path):
    root = tmp_path / "paris6k"
    names = [
        "paris_defense_000605",
        "paris_defense_000041",
        "paris_defense_000100",
        "paris_louvre_000136",
        "paris_louvre_000001",
    ]
    for n in names:  # official archive layout: paris/<landmark>/<name>.jpg
        touch_images(root / "paris" / n.split("_")[1], [n])
    ds = load_dataset("paris6k", root, gt=FIXTURES / "paris")
    assert "paris_louvre_000136" in PARIS_DROPPED and "paris_louvre_000136" not in ds.names
    assert len(ds.names) == 4 and ds.queries[0].name == "paris_defense_000605"
    gt = ds.ground_truth()["all"][0]
    # good {041, louvre_136 (dropped)} + ok {605}: the dropped positive still counts in npos
    assert gt.npos == 3 and gt.positives.size == 2


def test_oxford105k_adds_distractors(oxford_root, tmp_path):
    with pytest.raises(DatasetError, match="--distractors"):
        load_dataset("oxford105k", oxford_root)
    dist = tmp_path / "flickr"
    touch_images(dist / "a", ["x1", "x2"])
    touch_images(dist / "b", ["x1"])
    ds = load_dataset("oxford105k", oxford_root, distractors=dist)
    assert len(ds.names) == len(OXFORD_IMAGES) + 3
    assert ds.names[-3:] == ["a/x1", "a/x2", "b/x1"]
    # a folder named oxc1_100k under the root is found by itself, and not scanned as 5k images
    touch_images(oxford_root / "jpg" / "oxc1_100k", ["y1"])
    shutil.move(str(oxford_root / "jpg" / "oxc1_100k"), str(oxford_root / "oxc1_100k"))
    ds = load_dataset("oxford105k", oxford_root)
    assert ds.names[-1] == "y1" and len(ds.names) == len(OXFORD_IMAGES) + 1


def test_classic_errors_name_the_input(oxford_root, tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset("oxford5k", tmp_path / "nope")
    empty = tmp_path / "empty"
    touch_images(empty / "jpg", ["a"])
    with pytest.raises(DatasetError, match=r"no ground-truth files \(\*_query.txt\)"):
        load_dataset("oxford5k", empty)
    (oxford_root / "gt" / "all_souls_3_ok.txt").unlink()
    with pytest.raises(DatasetError, match="all_souls_3_ok.txt is missing"):
        load_dataset("oxford5k", oxford_root)
    shutil.copy(FIXTURES / "oxford" / "all_souls_3_ok.txt", oxford_root / "gt")
    (oxford_root / "jpg" / "oxford_002985.jpg").unlink()
    with pytest.raises(DatasetError, match="query image 'oxford_002985' .*all_souls_3_query.txt"):
        load_dataset("oxford5k", oxford_root)
    with pytest.raises(DatasetError, match="unknown dataset 'oxford6k'"):
        load_dataset("oxford6k", oxford_root)


def test_revisited_pickle_layout(tmp_path):
    root = tmp_path / "roxford5k"
    shutil.copytree(FIXTURES / "roxford5k", root)
    gnd = safe_pickle.load(root / "gnd_roxford5k.pkl")
    touch_images(root / "jpg", gnd["imlist"] + gnd["qimlist"])
    ds = load_dataset("roxford5k", root)
    assert ds.settings == ["easy", "medium", "hard"]
    assert ds.names == gnd["imlist"] and "all_souls_000013" not in ds.names
    assert ds.queries[1].box == pytest.approx((187.7, 17.1, 887.5, 238.9))
    gts = ds.ground_truth()
    assert gts["easy"][1].npos == 0  # no easy positive: left out of the Easy mean
    assert gts["medium"][0].positives.tolist() == [0, 1]
    assert gts["hard"][0].junk.tolist() == [0, 3]
    ranking = np.array([[1, 0, 3, 2, 4, 5], [5, 2, 0, 1, 3, 4]])
    res = evaluate(ranking, gts)
    assert res.settings["easy"].map == pytest.approx(100.0)  # 1 is hard = junk in easy
    # medium q0: 1, 0 first -> 1.0; q1: junk 5 skipped, 2 first -> 1.0
    assert res.map == pytest.approx(100.0)
    # hard q0: 0 (easy) is junk, 1 first -> 1.0; q1: 1.0
    assert res.settings["hard"].map == pytest.approx(100.0)
    res2 = evaluate(ranking[:, ::-1].copy(), gts)
    assert res2.settings["medium"].aps[0] < 1 and "mp@10" in res2.to_dict()["hard"]


def test_revisited_errors(tmp_path):
    with pytest.raises(DatasetError, match="gnd_rparis6k.pkl is missing"):
        load_dataset("rparis6k", tmp_path)
    shutil.copy(FIXTURES / "roxford5k" / "gnd_roxford5k.pkl", tmp_path)
    with pytest.raises(DatasetError, match="6 database images of roxford5k are missing"):
        load_dataset("roxford5k", tmp_path)


def test_holidays_layout(tmp_path):
    names = ["100000", "100001", "100002", "100100", "100101", "100200"]
    touch_images(tmp_path / "jpg", names)
    ds = load_dataset("holidays", tmp_path)
    assert [q.name for q in ds.queries] == ["100000", "100100"]  # 1002 has no positive
    assert ds.positives(0) == {"100001", "100002"}
    gt = ds.ground_truth()["all"]
    assert gt[0].exclude.tolist() == [0]
    ranking = np.array([[0, 1, 2, 3, 4, 5], [3, 4, 0, 1, 2, 5]])
    assert evaluate(ranking, ds.ground_truth()).map == pytest.approx(100.0)
    touch_images(tmp_path / "jpg", ["holiday"])
    with pytest.raises(DatasetError, match="'holiday' .* not named NNNNMM.jpg"):
        load_dataset("holidays", tmp_path)


def _generic_root(tmp_path):
    touch_images(tmp_path, ["bridge/a", "bridge/b", "tower/c", "tower/d", "tower/e", "lonely/f"])
    return tmp_path


def test_generic_groups_csv(tmp_path):
    root = _generic_root(tmp_path)
    ds = load_dataset("generic", root, gt=FIXTURES / "generic" / "groups.csv")
    assert [q.name for q in ds.queries] == ["bridge/a", "bridge/b", "tower/c", "tower/d", "tower/e"]
    assert ds.positives(2) == {"tower/d", "tower/e"}
    assert ds.truth["all"][2].exclude == {"tower/c"}


def test_generic_queries_csv_and_folders(tmp_path):
    root = _generic_root(tmp_path)
    ds = load_dataset("generic", root, gt=FIXTURES / "generic" / "queries.csv")
    assert [q.name for q in ds.queries] == ["bridge/a", "tower/c"]
    assert ds.positives(1) == {"tower/d", "tower/e"} and ds.junk(1) == {"lonely/f"}
    by_folder = load_dataset("generic", root)  # no CSV: sub-folders are the groups
    assert len(by_folder.queries) == 5 and by_folder.positives(0) == {"bridge/b"}


def test_generic_errors(tmp_path):
    root = _generic_root(tmp_path)
    bad = tmp_path / "bad.csv"
    bad.write_text("name,label\na,b\n")
    with pytest.raises(DatasetError, match="expected a header 'image,group'"):
        load_dataset("generic", root, gt=bad)
    bad.write_text("query,positives\nbridge/zz.jpg,bridge/a\n")
    with pytest.raises(DatasetError, match="query image 'bridge/zz' is not under"):
        load_dataset("generic", root, gt=bad)
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset("generic", root, gt=tmp_path / "missing.csv")


# --------------------------------------------------------------------------- safe pickle


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_safe_pickle_round_trips_plain_data(protocol):
    data = {
        "imlist": ["a", "b"],
        "gnd": [
            {"bbx": np.array([1.5, 2.0, 3.0, 4.0]), "easy": np.arange(3, dtype=np.int32), "hard": [], "junk": (1, 2)}
        ],
        "s": {1, 2},
        "x": np.float64(2.5),
        "m": np.arange(6, dtype=">i4").reshape(2, 3).T,
        "b": b"",
    }
    out = safe_pickle.loads(pickle.dumps(data, protocol=protocol))
    np.testing.assert_array_equal(out["gnd"][0]["bbx"], data["gnd"][0]["bbx"])
    np.testing.assert_array_equal(out["m"], data["m"])
    assert out["gnd"][0]["easy"].dtype == np.int32 and out["s"] == {1, 2} and out["x"] == 2.5


@pytest.mark.parametrize(
    "payload",
    [Evil(), np.array([{"a": 1}], dtype=object), [pickle.PickleError]],
    ids=["os.system", "object-array", "class"],
)
def test_safe_pickle_refuses_code(payload, tmp_path):
    blob = pickle.dumps(payload, protocol=2)
    with pytest.raises(safe_pickle.UnsafePickleError):
        safe_pickle.loads(blob)
    path = tmp_path / "gnd_roxford5k.pkl"
    path.write_bytes(blob)
    with pytest.raises(safe_pickle.UnsafePickleError, match="gnd_roxford5k.pkl"):
        load_dataset("roxford5k", tmp_path)


def test_safe_pickle_refuses_garbage():
    with pytest.raises(safe_pickle.UnsafePickleError, match="not a readable pickle"):
        safe_pickle.loads(b"\x80\x02}q\x00")


# --------------------------------------------------------------------------- real gt


@pytest.mark.skipif(not SHARED_GT.is_dir(), reason=f"real Oxford5k gt not at {SHARED_GT}")
def test_real_oxford_gt_files_read_completely(tmp_path):
    gts = read_classic_gt(SHARED_GT)
    assert len(gts) == 55
    assert all(not image.startswith("oxc1_") for _, image, _, _, _ in gts)
    landmarks = {base.rsplit("_", 1)[0] for base, *_ in gts}
    assert len(landmarks) == 11
    # every query image and positive is a database name; a dataset built on them loads
    names = set()
    for _, image, _, pos, junk in gts:
        names |= {image} | pos | junk
    touch_images(tmp_path / "jpg", sorted(names))
    ds = load_dataset("oxford5k", tmp_path, gt=SHARED_GT)
    assert len(ds.queries) == 55 and ds.queries[0].name == "all_souls_000013"
    npos = [g.npos for g in ds.ground_truth()["all"]]
    assert npos[0] == 78 and min(npos) > 0
