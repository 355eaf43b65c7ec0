"""``regatt train`` end to end on a tiny fixture: ResNet-18 with random weights, 64-px crops,
photos from scikit-image named by (real) WordNet ids."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from conftest import sample_photos
from regatt_sdk.cli.app import main


def cli(args: list[str]) -> None:
    """Run ``regatt <args>`` in-process; success exits with code 0."""
    try:
        main(args)
    except SystemExit as exc:
        assert exc.code in (0, None), exc.code

WNIDS = ("n01440764", "n01443537", "n01484850")
TINY = ["--backbone", "resnet18", "--weights", "random", "--crop", "64", "--short-min", "64", "--short-max", "80",
        "--levels", "2", "--views", "2", "--val-fraction", "0.25", "--patience", "9", "--no-progress"]


def make_labelled(folder: Path, bad_wnid: str | None = None) -> Path:
    """12 small photos (6 samples x original/flipped), named ``<wnid>_<name><k>.jpg``."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, (name, img) in enumerate(sample_photos().items()):
        for k, im in enumerate((img, cv2.flip(img, 1))):
            wnid = bad_wnid if bad_wnid and i == 0 else WNIDS[i % 3]
            cv2.imwrite(str(folder / f"{wnid}_{name}{k}.jpg"), cv2.resize(im, (96, 80)))
    return folder


@pytest.fixture(scope="module")
def labelled(tmp_path_factory) -> Path:
    return make_labelled(tmp_path_factory.mktemp("train") / "photos")


def _state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)


def test_train_resume_matches_uninterrupted_and_is_deterministic(labelled, tmp_path, capsys):
    cache = ["--cache", str(tmp_path / "cache")]
    cli(["train", str(labelled), "-o", str(tmp_path / "a.pth"), "--epochs", "2", *TINY, *cache])
    out = capsys.readouterr().out
    assert "wrote" in out and "computed" in out
    # an interrupted run: 1 epoch, then resumed to 2; the features now all come from the cache
    cli(["train", str(labelled), "-o", str(tmp_path / "b.pth"), "--epochs", "1", *TINY, *cache])
    cli(["train", str(labelled), "-o", str(tmp_path / "b.pth"), "--epochs", "2", "--resume", *TINY, *cache])
    out = capsys.readouterr().out
    assert "resumed" in out and " 0 computed" in out
    last_a = _state(tmp_path / "a.ckpt" / "checkpoint.pt")["attention"]
    last_b = _state(tmp_path / "b.ckpt" / "checkpoint.pt")["attention"]
    for key in last_a:
        assert torch.equal(last_a[key], last_b[key]), key
    written = _state(tmp_path / "a.pth")
    assert written["conv_att_1.weight"].shape == (64, 1024, 1)  # context: 2 x 512 channels

    from regatt_export.build import EncoderConfig, build_encoder

    enc, card = build_encoder(EncoderConfig(backbone="resnet18", weights="random", attention_weights=str(tmp_path / "a.pth")))
    assert torch.equal(enc.attention.fc1.weight, written["conv_att_1.weight"][:, :, 0])
    assert card.attention == "context"


def test_train_contrastive_label_free_regional(tmp_path, photo_dir, capsys):
    cli(["train", str(photo_dir), "-o", str(tmp_path / "c.pth"), "--objective", "contrastive", "--attention", "regional",
          "--epochs", "1", "--val-fraction", "0.34", "--uniform-prior", "0.1", *TINY[:-5], "--no-progress", "--no-cache"])
    assert "val_instance_top1" in capsys.readouterr().out
    assert _state(tmp_path / "c.pth")["conv_att_1.weight"].shape == (64, 512, 1)


def _fails(args: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    return capsys.readouterr().err


def test_train_bad_inputs(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no images found" in _fails(["train", str(empty), "-o", str(tmp_path / "x.pth"), *TINY, "--no-cache"], capsys)
    bad = make_labelled(tmp_path / "bad", bad_wnid="n99999999")
    err = _fails(["train", str(bad), "-o", str(tmp_path / "x.pth"), *TINY, "--no-cache"], capsys)
    assert "n99999999" in err and "1000 ImageNet classes" in err
    unnamed = tmp_path / "unnamed"
    unnamed.mkdir()
    cv2.imwrite(str(unnamed / "holiday.jpg"), np.zeros((64, 64, 3), np.uint8))
    assert "WordNet id" in _fails(["train", str(unnamed), "-o", str(tmp_path / "x.pth"), *TINY, "--no-cache"], capsys)
    err = _fails(["train", str(tmp_path / "bad"), "-o", str(tmp_path / "x.pth"), "--resume", "--objective", "contrastive", *TINY, "--no-cache"], capsys)
    assert "no checkpoint" in err
