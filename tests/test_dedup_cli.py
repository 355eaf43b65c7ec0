"""``regatt dedup`` end to end with the tiny exported model (random weights) on scikit-image
photos and known edits: outputs, keep policy, --show, --move-to and --undo, the copy check
(``--preset near``, also on a model exported without ``--explain``), bad input."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from conftest import TINY_ONNX, sample_photos  # noqa: E402
from regatt_sdk.cli.app import main  # noqa: E402
from regatt_sdk.dedup import edits  # noqa: E402
from regatt_sdk.dedup.moves import MANIFEST  # noqa: E402
from test_dedup import edited_copy  # noqa: E402


def run_main(args: list[str]) -> int:
    with pytest.raises(SystemExit) as info:
        main(args)
    return int(info.value.code or 0)


def make_folder(root: Path) -> dict[str, Path]:
    """Six photos at 160 px plus three edited copies of ``astronaut`` (one of them bigger)."""
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    out = {}
    for name, img in sample_photos().items():
        small = cv2.resize(img, (160, round(160 * img.shape[0] / img.shape[1])), interpolation=cv2.INTER_AREA)
        out[name] = root / f"{name}.jpg"
        cv2.imwrite(str(out[name]), small)
        if name == "astronaut":
            for e in ("jpeg_q20", "colour"):
                out[f"{name}_{e}"] = root / "copies" / f"{name}_{e}.jpg"
                out[f"{name}_{e}"].parent.mkdir(exist_ok=True)
                cv2.imwrite(str(out[f"{name}_{e}"]), edits.apply(e, small, rng))
            big = cv2.resize(img, (240, 240))
            out["astronaut_big"] = root / "copies" / "astronaut_big.jpg"
            cv2.imwrite(str(out["astronaut_big"]), big)
    return out


def read_rows(out: Path) -> list[dict]:
    with open(out / "groups.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> dict[str, Path]:
    return make_folder(tmp_path_factory.mktemp("dedup") / "photos")


def test_threshold_groups_keep_largest_and_report(tiny_model, folder, tmp_path, capsys):
    root = folder["astronaut"].parent
    out = tmp_path / "out"
    code = run_main(["dedup", str(tiny_model), str(root), "-o", str(out), "--threshold", "0.97",
                     "--keep", "largest", "--show", str(tmp_path / "show"), "--no-progress"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    rows = read_rows(out)
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["group"], []).append(r)
    astro = [g for g in groups.values() if any(r["name"].endswith("astronaut.jpg") for r in g)]
    assert astro, f"the astronaut and its copies were not grouped: {rows}"
    members = {Path(r["name"]).name for r in astro[0]}
    assert {"astronaut.jpg", "astronaut_jpeg_q20.jpg", "astronaut_big.jpg"} <= members
    kept = [r for r in astro[0] if r["action"] == "keep"]
    assert len(kept) == 1 and kept[0]["name"].endswith("astronaut_big.jpg")  # most pixels
    for g in groups.values():
        assert sum(r["action"] == "keep" for r in g) == 1
        assert float(g[0]["score"]) == 1.0 and all(-1 <= float(r["score"]) <= 1 for r in g)
    removed = (out / "remove.txt").read_text().split()
    assert len(removed) == sum(r["action"] == "remove" for r in rows)
    listed = json.loads((out / "groups.json").read_text())
    assert len(listed) == len(groups)
    html = (tmp_path / "show" / "index.html").read_text()
    assert html.count("<tr>") == len(groups) + 1
    sheet = cv2.imread(str(tmp_path / "show" / "group_0001.png"))
    assert sheet is not None and sheet.shape[0] > 100
    assert all(Path(p).exists() for p in removed)  # nothing moved or deleted without --move-to


def test_move_to_and_undo(tiny_model, folder, tmp_path):
    root = tmp_path / "photos"
    files = make_folder(root)
    moved = tmp_path / "moved"
    out = tmp_path / "out"
    assert run_main(["dedup", str(tiny_model), str(root), "-o", str(out), "--threshold", "0.97",
                     "--move-to", str(moved), "--no-progress"]) == 0  # fmt: skip
    removed = (out / "remove.txt").read_text().split()
    assert removed and not any(Path(p).exists() for p in removed)
    manifest = json.loads((moved / MANIFEST).read_text())
    assert sorted(m["src"] for m in manifest["moves"]) == sorted(str(Path(p).resolve()) for p in removed)
    assert all(Path(m["dst"]).is_file() for m in manifest["moves"])
    assert run_main(["dedup", "--undo", str(moved)]) == 0
    assert all(p.exists() for p in files.values())


def test_preset_near_runs_the_copy_check(tiny_model, folder, tmp_path, capsys):
    out = tmp_path / "out"
    code = run_main(["dedup", str(tiny_model), str(folder["astronaut"].parent), "-o", str(out),
                     "--preset", "near", "--group", "tight", "--no-progress"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    assert "preset near" in capsys.readouterr().out
    for r in read_rows(out):
        assert 0.0 <= float(r["score"]) <= 1.0  # copy probabilities


@pytest.fixture(scope="module")
def copies_folder(tmp_path_factory) -> Path:
    """Five photos, and an edited copy (rotated, scaled, sheared, cropped, re-lit, JPEG) of two."""
    root = tmp_path_factory.mktemp("copies") / "photos"
    (root / "edited").mkdir(parents=True)
    for k, (name, img) in enumerate(sample_photos().items()):
        if name == "hubble_deep_field":
            continue
        cv2.imwrite(str(root / f"{name}.jpg"), img)
        if name in ("astronaut", "coffee"):
            cv2.imwrite(str(root / "edited" / f"{name}.jpg"), edited_copy(img, k))
    return root


@pytest.mark.parametrize("which", ["tiny_model", "without_explain"])
def test_preset_near_groups_an_edited_copy_and_not_other_photos(which, request, copies_folder, tmp_path, capsys):
    # the committed fixture model has no regional outputs (exported without --explain)
    model = TINY_ONNX if which == "without_explain" else request.getfixturevalue("tiny_model")
    if which == "without_explain":
        from regatt_sdk.card import read_card

        assert "regions" not in read_card(model).outputs
    out = tmp_path / "out"
    code = run_main(["dedup", str(model), str(copies_folder), "-o", str(out), "--preset", "near", "--no-progress"])
    assert code == 0, capsys.readouterr().err
    groups: dict[str, set[str]] = {}
    for r in read_rows(out):
        groups.setdefault(r["group"], set()).add(Path(r["name"]).relative_to(copies_folder).as_posix())
    found = sorted(sorted(g) for g in groups.values())
    assert found == [["astronaut.jpg", "edited/astronaut.jpg"], ["coffee.jpg", "edited/coffee.jpg"]], found


def test_copy_check_uses_a_store_s_local_features(copies_folder, tmp_path, monkeypatch):
    import importlib

    from regatt_sdk.collection import Collection
    from regatt_sdk.encoder import Encoder
    from regatt_sdk.pipeline import encode_to_store

    store = tmp_path / "store"
    encode_to_store(Encoder(TINY_ONNX), [str(copies_folder)], store, local=True, progress=False)

    def refuse(*args, **kwargs):
        raise AssertionError("local features extracted although the store has them")

    monkeypatch.setattr(importlib.import_module("regatt_sdk.local.extract"), "extract", refuse)
    found = Collection.open(store, TINY_ONNX).duplicates(preset="near")
    groups: dict[int, set[str]] = {}
    for r in found.rows:
        groups.setdefault(r.group, set()).add(Path(r.name).relative_to(copies_folder).as_posix())
    assert sorted(sorted(g) for g in groups.values()) == [
        ["astronaut.jpg", "edited/astronaut.jpg"],
        ["coffee.jpg", "edited/coffee.jpg"],
    ]
    assert not found.skipped and not [n for n in found.notes if "local features" in n]


def test_bad_input(tiny_model, folder, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run_main(["dedup", str(tiny_model), str(empty), "-o", str(tmp_path / "o1"), "--no-progress"]) == 2
    assert "nothing to deduplicate" in capsys.readouterr().err
    assert run_main(["dedup", str(tiny_model), str(empty), "-o", str(tmp_path / "o2"), "--threshold", "1.5"]) == 2
    assert "outside [-1, 1]" in capsys.readouterr().err
    # a store made by another model
    from regatt_sdk.store import FeatureStore

    other = tmp_path / "other_store"
    with FeatureStore.create(other, card_hash="0123456789abcdef", dim=512) as st:
        st.append(["x.jpg"], np.full((1, 512), 512**-0.5, dtype=np.float32))
    assert run_main(["dedup", str(tiny_model), "--store", str(other), "-o", str(tmp_path / "o3"),
                     "--threshold", "0.9"]) == 2  # fmt: skip
    assert "another model" in capsys.readouterr().err
    assert run_main(["dedup", "--store", str(other), "-o", str(tmp_path / "o4"), "--preset", "near"]) == 2
    assert "give the MODEL" in capsys.readouterr().err
    assert run_main(["dedup", str(tiny_model), str(folder["coffee"]), "-o", str(tmp_path / "o5"),
                     "--keep", "newest"]) == 2  # fmt: skip
    assert "unknown keep policy" in capsys.readouterr().err
