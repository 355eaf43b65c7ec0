"""AP / mAP against independent re-implementations of the official programs, hand-worked
rankings on the shipped fixtures, and (when ../shared is present) the real Oxford5k gt files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from paths import GT_FIXTURES as FIXTURES  # noqa: E402
from paths import SHARED_GT
from regatt_sdk.datasets import read_classic_gt
from regatt_sdk.evaluation import (
    GroundTruth,
    compute_ap,
    compute_ap_holidays,
    compute_ap_revisited,
    compute_map_revisited,
    evaluate,
    evaluate_setting,
    positive_positions,
    precision_at,
)

needs_shared = pytest.mark.skipif(not SHARED_GT.is_dir(), reason=f"real Oxford5k gt not available at {SHARED_GT}")


# --------------------------------------------------------------------------- references
# Written from the official sources, line by line, independently of regatt_sdk.


def cpp_compute_ap(pos: set, amb: set, ranked_list: list, dtype=float) -> float:
    """compute_ap.cpp (Oxford/Paris): ``float`` arithmetic when dtype=np.float32."""
    old_recall = dtype(0.0)
    old_precision = dtype(1.0)
    ap = dtype(0.0)
    intersect_size = 0
    j = 0
    for item in ranked_list:
        if item in amb:
            continue
        if item in pos:
            intersect_size += 1
        recall = dtype(intersect_size) / dtype(len(pos))
        precision = dtype(intersect_size) / (dtype(j) + dtype(1.0))
        ap += (recall - old_recall) * ((old_precision + precision) / dtype(2.0))
        old_recall = recall
        old_precision = precision
        j += 1
    return float(ap)


def revisitop_compute_map(ranks, gnd, kappas=()):
    """revisitop/python/evaluate.py compute_map (ranks: (N, Q))."""

    def compute_ap(ranks, nres):
        nimgranks = len(ranks)
        ap = 0
        recall_step = 1.0 / nres
        for j in np.arange(nimgranks):
            rank = ranks[j]
            if rank == 0:
                precision_0 = 1.0
            else:
                precision_0 = float(j) / rank
            precision_1 = float(j + 1) / (rank + 1)
            ap += (precision_0 + precision_1) * recall_step / 2.0
        return ap

    mAP = 0.0
    nq = len(gnd)
    aps = np.zeros(nq)
    pr = np.zeros(len(kappas))
    prs = np.zeros((nq, len(kappas)))
    nempty = 0
    for i in np.arange(nq):
        qgnd = np.array(gnd[i]["ok"])
        if qgnd.shape[0] == 0:
            aps[i] = float("nan")
            prs[i, :] = float("nan")
            nempty += 1
            continue
        try:
            qgndj = np.array(gnd[i]["junk"])
        except KeyError:
            qgndj = np.empty(0)
        pos = np.arange(ranks.shape[0])[np.isin(ranks[:, i], qgnd)]
        junk = np.arange(ranks.shape[0])[np.isin(ranks[:, i], qgndj)]
        k = 0
        ij = 0
        if len(junk):
            ip = 0
            while ip < len(pos):
                while ij < len(junk) and pos[ip] > junk[ij]:
                    k += 1
                    ij += 1
                pos[ip] = pos[ip] - k
                ip += 1
        ap = compute_ap(pos, len(qgnd))
        mAP = mAP + ap
        aps[i] = ap
        pos += 1
        for j in np.arange(len(kappas)):
            kq = min(max(pos), kappas[j])
            prs[i, j] = (pos <= kq).sum() / kq
        pr = pr + prs[i, :]
    mAP = mAP / (nq - nempty)
    pr = pr / (nq - nempty)
    return mAP, aps, pr, prs


def holidays_ap(ranks, nres):
    """holidays_map.py score_ap_from_ranks_1."""
    ap = 0.0
    recall_step = 1.0 / nres
    for ntp, rank in enumerate(ranks):
        if rank == 0:
            precision_0 = 1.0
        else:
            precision_0 = ntp / float(rank)
        precision_1 = (ntp + 1) / float(rank + 1)
        ap += (precision_1 + precision_0) * recall_step / 2.0
    return ap


# --------------------------------------------------------------------------- hand-worked


def test_compute_ap_hand_worked_on_fixture():
    # all_souls_1: good {026, 091 (listed twice)}, ok {041}, junk {220, 013}: 3 positives
    (base, image, box, pos, junk), _ = read_classic_gt(FIXTURES / "oxford")
    assert base == "all_souls_1" and image == "all_souls_000013"
    assert pos == {"all_souls_000026", "all_souls_000091", "all_souls_000041"}
    ranked = [
        "all_souls_000013",
        "all_souls_000026",
        "x",
        "all_souls_000220",
        "all_souls_000041",
        "y",
        "all_souls_000091",
    ]
    # non-junk walk: 026 (hit, p=1), x (p=1/2), 041 (hit, p=2/3), y (p=2/4), 091 (hit, p=3/5)
    expected = (1 / 3) * (1 + 1) / 2 + (1 / 3) * (1 / 2 + 2 / 3) / 2 + (1 / 3) * (2 / 4 + 3 / 5) / 2
    assert compute_ap(ranked, pos, junk) == pytest.approx(expected, abs=1e-12)
    assert compute_ap(sorted(pos) + ["x", "y"], pos, junk) == pytest.approx(1.0)
    # a positive never retrieved caps recall: 2 of 3 found at the top
    assert compute_ap(["all_souls_000026", "all_souls_000041"], pos, junk) == pytest.approx(2 / 3)


def test_junk_never_counts_even_when_positive():
    assert compute_ap(["a", "b"], {"a", "b"}, {"a"}) == pytest.approx(0.5)
    assert compute_ap(["j", "j", "a"], {"a"}, {"j"}) == pytest.approx(1.0)


def test_compute_ap_refuses_no_positives():
    with pytest.raises(ValueError, match="no positives"):
        compute_ap(["a"], set(), set())


def test_precision_at_uses_the_revisited_quirk():
    # positives at 1-based ranks 2 and 3: P@1 = 0; P@5: kq = min(3, 5) = 3 -> 2/3
    np.testing.assert_allclose(precision_at(np.array([1, 2]), (1, 5)), [0.0, 2 / 3])


@needs_shared
def test_real_oxford_gt_hand_worked():
    gts = {base: (image, box, pos, junk) for base, image, box, pos, junk in read_classic_gt(SHARED_GT)}
    assert len(gts) == 55
    image, box, pos, junk = gts["all_souls_1"]
    assert image == "all_souls_000013" and box == (136.5, 34.1, 648.5, 955.7)
    assert len(pos) == 78 and len(junk) == 33  # 25 good lines, one duplicated, + 54 ok
    good = sorted(Path(SHARED_GT / "all_souls_1_good.txt").read_text().split())
    a, b = good[0], good[1]
    j = sorted(junk)[0]
    # junk skipped; a hit (p=1); x miss (p=1/2); b hit (p=2/3) -> (1/78) * (1 + 7/12)
    ranked = [j, a, "not_a_positive", b]
    assert compute_ap(ranked, pos, junk) == pytest.approx(19 / 936, abs=1e-12)
    everything = sorted(pos) + sorted(junk) + ["z"] * 10
    assert compute_ap(everything, pos, junk) == pytest.approx(1.0)
    # all positives after 100 distractors
    late = [f"d{i}" for i in range(100)] + sorted(pos)
    expected = cpp_compute_ap(pos, junk, late)
    assert compute_ap(late, pos, junk) == pytest.approx(expected, abs=1e-12)
    closed_form = sum((t / (100 + t) + (t + 1) / (101 + t)) / 2 for t in range(78)) / 78
    assert expected == pytest.approx(closed_form, abs=1e-12)


@needs_shared
def test_real_oxford_gt_random_rankings_match_cpp():
    rng = np.random.default_rng(3)
    for base, image, box, pos, junk in read_classic_gt(SHARED_GT)[::7]:
        universe = sorted(pos | junk) + [f"other_{i}" for i in range(300)]
        ranked = list(rng.permutation(universe))
        ours = compute_ap(ranked, pos, junk)
        assert ours == pytest.approx(cpp_compute_ap(pos, junk, ranked), abs=1e-12)
        assert ours == pytest.approx(cpp_compute_ap(pos, junk, ranked, np.float32), abs=2e-5)


# --------------------------------------------------------------------------- cross-checks


def _random_case(rng, n=200):
    names = [f"im{i:04d}" for i in range(n)]
    pos = set(rng.choice(names, size=int(rng.integers(1, 30)), replace=False))
    junk = set(rng.choice(names, size=int(rng.integers(0, 20)), replace=False)) - pos
    ranked = list(rng.permutation(names)[: int(rng.integers(n // 2, n + 1))])
    return names, pos, junk, ranked


def test_classic_matches_cpp_on_random_rankings():
    rng = np.random.default_rng(0)
    for _ in range(200):
        _, pos, junk, ranked = _random_case(rng)
        # include overlap between positives and junk sometimes: junk wins in the C++ program
        if rng.random() < 0.3 and pos:
            junk = junk | {sorted(pos)[0]}
        assert compute_ap(ranked, pos, junk) == pytest.approx(cpp_compute_ap(pos, junk, ranked), abs=1e-12)


def test_index_evaluation_matches_name_evaluation():
    rng = np.random.default_rng(1)
    n = 300
    names = [f"im{i}" for i in range(n)]
    rankings, gts, expected = [], [], []
    for _ in range(12):
        pos = rng.choice(n, size=int(rng.integers(1, 20)), replace=False)
        junk = np.setdiff1d(rng.choice(n, size=10, replace=False), pos)
        order = rng.permutation(n)
        rankings.append(order)
        gts.append(GroundTruth(positives=np.sort(pos), junk=np.sort(junk), npos=len(pos)))
        expected.append(compute_ap([names[i] for i in order], {names[i] for i in pos}, {names[i] for i in junk}))
    res = evaluate_setting(np.array(rankings), gts)
    np.testing.assert_allclose(res.aps, expected, atol=1e-12)
    assert res.map == pytest.approx(100 * np.mean(expected))


def test_revisited_matches_revisitop_on_random_rankings():
    rng = np.random.default_rng(2)
    n, q = 150, 9
    ranks = np.stack([rng.permutation(n) for _ in range(q)], axis=1)  # (N, Q)
    gnd = []
    for i in range(q):
        ok = rng.choice(n, size=int(rng.integers(0 if i == 0 else 1, 15)), replace=False)
        junk = rng.choice(n, size=int(rng.integers(0, 15)), replace=False)  # may overlap ok
        gnd.append({"ok": ok, "junk": junk})
    ours = compute_map_revisited(ranks, gnd, [1, 5, 10])
    ref = revisitop_compute_map(ranks, gnd, [1, 5, 10])
    assert ours[0] == pytest.approx(ref[0], abs=1e-12)
    np.testing.assert_allclose(ours[1], ref[1], atol=1e-12)  # NaN where no positives
    np.testing.assert_allclose(ours[2], ref[2], atol=1e-12)
    np.testing.assert_allclose(ours[3], ref[3], atol=1e-12)
    # the same through GroundTruth(junk_wins=False) and evaluate()
    gts = [GroundTruth(np.unique(g["ok"]), np.unique(g["junk"]), len(g["ok"]), junk_wins=False) for g in gnd]
    res = evaluate(ranks.T, {"medium": gts}, dataset="r").settings["medium"]
    assert res.map == pytest.approx(100 * ref[0], abs=1e-9)
    assert res.mp[5] == pytest.approx(100 * ref[2][1], abs=1e-9)


def test_three_rules_agree_without_overlap():
    rng = np.random.default_rng(4)
    for _ in range(50):
        names, pos, junk, _ = _random_case(rng)
        ranked = list(rng.permutation(names))
        idx = {n: i for i, n in enumerate(names)}
        positions = positive_positions(
            np.array([idx[n] for n in ranked]),
            np.array([idx[n] for n in pos]),
            np.array([idx[n] for n in junk], dtype=np.int64),
        )
        classic = compute_ap(ranked, pos, junk)
        assert compute_ap_revisited(positions, len(pos)) == pytest.approx(classic, abs=1e-12)
        assert compute_ap_holidays(positions, len(pos)) == pytest.approx(classic, abs=1e-12)
        assert holidays_ap(positions.tolist(), len(pos)) == pytest.approx(classic, abs=1e-12)


def test_holidays_query_removed_from_its_ranking():
    # database 0..5; query is 0 (ranked first), positives {1, 2}
    ranking = np.array([0, 3, 1, 4, 2, 5])
    gt = GroundTruth(np.array([1, 2]), np.zeros(0, np.int64), 2, exclude=np.array([0]))
    res = evaluate_setting(ranking[None], [gt])
    # without the query: 3, 1, 4, 2 -> hits at ranks 1 and 3
    expected = holidays_ap([1, 3], 2)
    assert res.aps[0] == pytest.approx(expected)
    assert expected == pytest.approx(0.5 * (0 + 1 / 2) / 2 + 0.5 * (1 / 3 + 2 / 4) / 2)


def test_evaluate_rejects_misshaped_rankings():
    gt = GroundTruth(np.array([1]), np.zeros(0, np.int64), 1)
    with pytest.raises(ValueError, match="Q = 2"):
        evaluate_setting(np.zeros((1, 3), np.int64), [gt, gt])


# --------------------------------------------------------------------------- eval CLI
# ``cli`` runs the commands with a colour-histogram stand-in encoder (see test_search.py).

from test_search import cli, make_group_folder, model_file, sample_photos  # noqa: E402,F401


def test_cli_eval_generic_writes_json_and_reuses_store(cli, model_file, tmp_path):
    import json

    photos = make_group_folder(tmp_path / "photos")
    store, out_json = tmp_path / "store", tmp_path / "res" / "eval.json"
    args = ["eval", model_file, "--dataset", "generic", "--root", photos, "--store", store,
            "--json", out_json, "--qe", "2", "--no-progress"]  # fmt: skip
    code, out, err = cli(args)
    assert code == 0, err
    assert "generic" in out and "QE (top 2)" in out and "encoded 15 images" in err
    res = json.loads(out_json.read_text())
    assert res["dataset"] == "generic" and res["queries"] == 15 and res["images"] == 15
    # flips share the histogram, crops nearly: every photo's variants come first
    assert res["map"] == pytest.approx(100.0) and res["map_qe"] == pytest.approx(100.0)
    assert res["results"]["all"]["mp@1"] == pytest.approx(100.0)
    code, out, err = cli(args)
    assert code == 0 and "skipped 15 already in the store" in err
    code, out, err = cli(args + ["--alpha", "3", "--dba", "1"])
    assert code == 0, err
    res = json.loads(out_json.read_text())
    assert res["expansion"] == "DBA (top 1, alpha=3) + alpha-QE (top 2, alpha=3)"
    assert 0 < res["map_qe"] <= 100 and "alpha-QE" in out


def test_cli_eval_oxford_layout_crops_queries(cli, model_file, tmp_path):
    import json
    import shutil

    import cv2

    # the fixture's boxes are in pixels of ~1024-px photos
    a, b, c, d, e = (cv2.resize(p, (1024, round(1024 * p.shape[0] / p.shape[1])))
                     for p in sample_photos())  # fmt: skip
    root = tmp_path / "oxford5k"
    (root / "jpg").mkdir(parents=True)
    shutil.copytree(Path(__file__).parent / "fixtures" / "gt" / "oxford", root / "gt")
    images = {
        "all_souls_000013": a, "all_souls_000026": a[:, ::-1], "all_souls_000091": a[5:-5],
        "all_souls_000041": a[:, 4:], "all_souls_000220": b, "oxford_002985": c,
        "oxford_003521": c[::-1], "magdalen_000001": d, "magdalen_000002": e,
    }  # fmt: skip
    for name, img in images.items():
        cv2.imwrite(str(root / "jpg" / f"{name}.jpg"), img)
    out_json = tmp_path / "ox.json"
    code, out, err = cli(["eval", model_file, "-d", "oxford5k", "--root", root, "--json", out_json,
                          "--store", tmp_path / "st", "--qe", "0", "--no-progress"])  # fmt: skip
    assert code == 0, err
    res = json.loads(out_json.read_text())
    assert res["dataset"] == "oxford5k" and res["queries"] == 2 and "map_qe" not in res
    assert 0.0 < res["map"] <= 100.0
    assert "Oxford5k" in out
    # a box that leaves no pixels is reported with the query's name
    (root / "gt" / "all_souls_3_query.txt").write_text("oxc1_oxford_002985 2000 2000 2100 2100\n")
    code, _, err = cli(["eval", model_file, "-d", "oxford5k", "--root", root,
                        "--store", tmp_path / "st", "--no-progress"])  # fmt: skip
    assert code == 2 and "oxford_002985" in err and "box" in err


def test_cli_eval_bad_inputs(cli, model_file, tmp_path):
    from regatt_sdk.store import FeatureStore

    photos = make_group_folder(tmp_path / "photos")
    code, _, err = cli(["eval", model_file, "-d", "oxford5k", "--root", photos])
    assert code == 2 and "_query.txt" in err and len(err.strip().splitlines()) == 1
    code, _, err = cli(["eval", model_file, "-d", "imagenet", "--root", photos])
    assert code == 2 and "'imagenet' is unknown" in err
    store = tmp_path / "st12"
    FeatureStore.create(store, card_hash="x", dim=12).close()
    code, _, err = cli(["eval", model_file, "-d", "generic", "--root", photos, "--store", store,
                        "--no-progress"])  # fmt: skip
    assert code == 2 and "holds 12-d descriptors" in err and "--store" in err
