"""Region/attention pictures (regatt explain) and labelled evaluation grids (regatt eval --show)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from regatt_sdk import explain as ex
from regatt_sdk import grid as gr
from regatt_sdk.datasets import Dataset, Query, Truth

sys.path.insert(0, str(Path(__file__).parent))


def test_weight_map_sums_covering_boxes() -> None:
    boxes = np.array([[0, 0, 3, 3], [2, 2, 5, 3], [4, 0, 9, 9]], dtype=np.float32)
    weights = np.array([1.0, 2.0, 0.5], dtype=np.float32)
    heat = ex.weight_map((4, 6), boxes, weights)
    expect = np.zeros((4, 6), np.float32)
    for (x1, y1, x2, y2), w in zip(boxes.astype(int), weights):
        expect[y1 : y2 + 1, x1 : x2 + 1] += w  # inclusive boxes, clipped by numpy
    np.testing.assert_allclose(heat, expect, atol=1e-6)


def test_figure_layout_ranks_and_colours() -> None:
    img = np.full((120, 200, 3), 90, np.uint8)
    boxes = np.array([[0, 0, 99, 99], [100, 20, 199, 119], [50, 10, 149, 109]], np.float32)
    expl = ex.Explanation(img, boxes, np.array([0.2, 0.9, 0.5], np.float32), np.zeros(4, np.float32))
    assert expl.order().tolist() == [1, 2, 0]
    np.testing.assert_allclose(expl.shares().sum(), 1.0, atol=1e-6)
    fig = ex.explanation_figure(expl, top=2, size=100)
    assert fig.shape == (60 + 44, 2 * 100 + 8, 3) and fig.dtype == np.uint8
    drawn = ex.draw_regions(img, boxes, expl.weights, top=1)
    assert np.any(drawn[20:120, 100] != 90) and np.all(drawn[60:100, 0] == 90)  # only the top box


def test_explain_api_and_cli(tiny_model: Path, photo_dir: Path, tmp_path: Path, capsys) -> None:
    from regatt_sdk.encoder import Encoder
    from test_encode_cli import run_main

    enc = Encoder(tiny_model, device="cpu", max_side=96)
    expl = ex.explain(enc, photo_dir / "coffee.jpg")
    h, w = expl.image.shape[:2]
    assert max(h, w) == 96 and expl.boxes.shape == (expl.weights.size, 4) and expl.weights.size > 1
    assert expl.boxes[:, [0, 1]].min() >= 0 and expl.boxes[:, 2].max() <= w - 1
    assert expl.boxes[:, 3].max() <= h - 1
    np.testing.assert_allclose(expl.descriptor, enc.encode(str(photo_dir / "coffee.jpg")), atol=1e-5)

    out = tmp_path / "fig" / "coffee.png"
    code = run_main(["explain", str(photo_dir / "coffee.jpg"), "--model", str(tiny_model),
                     "-o", str(out), "--max-side", "96", "--top", "3", "--size", "160"])  # fmt: skip
    lines = capsys.readouterr().out.splitlines()
    assert code == 0 and cv2.imread(str(out)).shape[1] == 2 * 160 + 8
    assert lines[0].startswith(f"{expl.weights.size} regions") and len(lines) == 1 + expl.weights.size


def test_explain_refuses_model_without_region_outputs(tiny_model: Path, photo_dir: Path,
                                                      tmp_path: Path, capsys) -> None:  # fmt: skip
    onnx = pytest.importorskip("onnx")
    from regatt_sdk.card import CARD_KEY
    from test_encode_cli import run_main

    proto = onnx.load(str(tiny_model))
    for prop in proto.metadata_props:
        if prop.key == CARD_KEY:
            card = json.loads(prop.value)
            card["outputs"] = ["descriptor"]
            prop.value = json.dumps(card)
    plain = tmp_path / "plain.onnx"
    onnx.save(proto, str(plain))
    code = run_main(["explain", str(photo_dir / "coffee.jpg"), "-m", str(plain), "-o", str(tmp_path / "x.png")])
    err = capsys.readouterr().err
    assert code == 2 and "re-export with  regatt export --explain" in err
    assert run_main(["explain", str(photo_dir / "coffee.jpg"), "-o", str(tmp_path / "x.png")]) == 2
    assert "--model" in capsys.readouterr().err


def test_labels_and_grid_frames(photos) -> None:
    truth = Truth(positives=frozenset({"a", "both"}), junk=frozenset({"j", "both"}))
    assert [gr.truth_label(n, truth) for n in ("a", "j", "x", "both")] == [
        "correct", "junk", "wrong", "junk"]  # fmt: skip
    assert gr.truth_label("both", Truth(frozenset({"both"}), frozenset({"both"}), junk_wins=False)) == "correct"
    img = photos["coffee"]
    grid = gr.labelled_grid(img, [("a", 0.9, img, "correct"), ("x", 0.5, img, "wrong"),
                                  ("j", 0.4, None, "junk")], tile=100, columns=4)  # fmt: skip
    assert grid.shape == (134, 400, 3)
    # the result tiles' frames: green for correct, red for wrong (BGR)
    assert tuple(grid[40, 101]) == gr.LABEL_COLOURS["correct"]
    assert tuple(grid[40, 201]) == gr.LABEL_COLOURS["wrong"]
    with pytest.raises(ValueError, match="unknown label"):
        gr.labelled_grid(img, [("a", 1.0, img, "maybe")])


def test_eval_show_writes_one_picture_per_query(tiny_model: Path, photos, tmp_path: Path, capsys) -> None:
    from test_encode_cli import run_main

    root = tmp_path / "groups"
    for name in ("coffee", "chelsea", "astronaut"):
        (root / name).mkdir(parents=True)
        cv2.imwrite(str(root / name / "a.jpg"), photos[name])
        cv2.imwrite(str(root / name / "b.jpg"), cv2.flip(photos[name], 1))
    show = tmp_path / "show"
    code = run_main(["eval", str(tiny_model), "--dataset", "generic", "--root", str(root),
                     "--store", str(tmp_path / "st"), "--max-side", "96", "--no-progress",
                     "--qe", "0", "--show", str(show), "--show-count", "2", "--show-top", "3"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    pictures = sorted(show.glob("*.png"))
    assert len(pictures) == 2 and pictures[0].name.startswith("000_")
    assert cv2.imread(str(pictures[0])).shape == (234, 4 * 200, 3)  # query + 3 results


def test_save_eval_grids_skips_excluded(photo_dir: Path, tmp_path: Path) -> None:
    names = ["astronaut", "coffee", "chelsea"]
    ds = Dataset("generic", "generic", names, [photo_dir / f"{n}.jpg" for n in names],
                 [Query("astronaut", photo_dir / "astronaut.jpg", (10, 10, 200, 200))],
                 {"all": [Truth(frozenset({"coffee"}), exclude=frozenset({"astronaut"}))]})  # fmt: skip
    db = np.eye(3, dtype=np.float32)
    q = np.array([[1.0, 0.6, 0.2]], np.float32)
    out = gr.save_eval_grids(tmp_path, ds, q, db, count=5, top=2)
    assert [p.name for p in out] == ["000_astronaut.png"]
    grid = cv2.imread(str(out[0]))
    assert tuple(grid[100, 201]) == gr.LABEL_COLOURS["correct"]  # coffee first, astronaut excluded
    assert tuple(grid[100, 401]) == gr.LABEL_COLOURS["wrong"]


def test_box_share_in_explain(tiny_model: Path, photo_dir: Path, tmp_path: Path, capsys) -> None:
    """``regatt explain --box``: the printed share is the summed weight of the regions mostly
    inside the box (original pixels scaled to the resized image), against the uniform share."""
    from regatt_sdk.encoder import Encoder
    from test_encode_cli import run_main

    img = photo_dir / "coffee.jpg"
    h0, w0 = cv2.imread(str(img)).shape[:2]
    box = (0, 0, w0 // 2, h0)  # the left half, original pixels
    expl = ex.explain(Encoder(tiny_model, device="cpu", max_side=96), img)
    r = max(expl.image.shape[:2]) / max(h0, w0)
    mask = ex.inside_mask(expl.boxes, tuple(v * r for v in box))
    assert 0 < mask.sum() < mask.size
    share, uniform = ex.box_share(expl.boxes, expl.weights, tuple(v * r for v in box))
    assert share == pytest.approx(expl.weights[mask].sum() / expl.weights.sum(), rel=1e-6)
    assert uniform == pytest.approx(mask.mean())
    code = run_main(["explain", str(img), "-m", str(tiny_model), "-o", str(tmp_path / "b.png"), "--max-side", "96",
                     "-q", "--box", ",".join(str(v) for v in box)])  # fmt: skip
    out = capsys.readouterr().out
    assert (
        code == 0
        and f"{100 * share:.1f}% of the attention weight" in out
        and f"uniform weights: {100 * uniform:.1f}%" in out
    )
    assert (
        run_main(
            [
                "explain",
                str(img),
                "-m",
                str(tiny_model),
                "-o",
                str(tmp_path / "c.png"),
                "--roi",
                "0,0,50,50",
                "--box",
                "0,0,9,9",
            ]
        )
        == 2
    )
    assert "without --roi" in capsys.readouterr().err
