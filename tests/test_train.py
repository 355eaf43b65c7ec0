"""``regatt train`` end to end on a tiny fixture: ResNet-18 with random weights, 64-px crops,
photos from scikit-image named by (real) WordNet ids."""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import sample_photos
from regatt_sdk.cli.app import main


def cli(args: list[str]) -> None:
    """Run ``regatt <args>`` in-process; success exits with code 0."""
    try:
        main(args)
    except SystemExit as exc:
        assert exc.code in (0, None), exc.code


WNIDS = ("n01440764", "n01443537", "n01484850")
TINY = [
    "--backbone",
    "resnet18",
    "--weights",
    "random",
    "--crop",
    "64",
    "--short-min",
    "64",
    "--short-max",
    "80",
    "--levels",
    "2",
    "--views",
    "2",
    "--val-fraction",
    "0.25",
    "--patience",
    "9",
    "--no-progress",
]


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

    enc, card = build_encoder(
        EncoderConfig(backbone="resnet18", weights="random", attention_weights=str(tmp_path / "a.pth"))
    )
    assert torch.equal(enc.attention.fc1.weight, written["conv_att_1.weight"][:, :, 0])
    assert card.attention == "context"


def test_train_contrastive_label_free_regional(tmp_path, photo_dir, capsys):
    cli(
        [
            "train",
            str(photo_dir),
            "-o",
            str(tmp_path / "c.pth"),
            "--objective",
            "contrastive",
            "--attention",
            "regional",
            "--epochs",
            "1",
            "--val-fraction",
            "0.34",
            "--uniform-prior",
            "0.1",
            *TINY[:-5],
            "--no-progress",
            "--no-cache",
        ]
    )
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
    assert "no images found" in _fails(
        ["train", str(empty), "-o", str(tmp_path / "x.pth"), *TINY, "--no-cache"], capsys
    )
    bad = make_labelled(tmp_path / "bad", bad_wnid="n99999999")
    err = _fails(["train", str(bad), "-o", str(tmp_path / "x.pth"), *TINY, "--no-cache"], capsys)
    assert "n99999999" in err and "1000 ImageNet classes" in err
    unnamed = tmp_path / "unnamed"
    unnamed.mkdir()
    cv2.imwrite(str(unnamed / "holiday.jpg"), np.zeros((64, 64, 3), np.uint8))
    assert "WordNet id" in _fails(["train", str(unnamed), "-o", str(tmp_path / "x.pth"), *TINY, "--no-cache"], capsys)
    err = _fails(
        [
            "train",
            str(tmp_path / "bad"),
            "-o",
            str(tmp_path / "x.pth"),
            "--resume",
            "--objective",
            "contrastive",
            *TINY,
            "--no-cache",
        ],
        capsys,
    )
    assert "no checkpoint" in err


# -- the landmark (retrieval) objective ------------------------------------------------------

LM = [
    "--objective",
    "landmark",
    "--backbone",
    "resnet18",
    "--weights",
    "random",
    "--max-side",
    "64",
    "--levels",
    "2",
    "--batch",
    "4",
    "--per-landmark",
    "2",
    "--no-progress",
]


def make_landmarks(root: Path, photos_per: int = 3, single: str | None = None) -> Path:
    """4 'landmarks' (one scikit-image photo each), ``photos_per`` crops/flips of it each;
    ``single`` gets one photo only."""
    root.mkdir(parents=True, exist_ok=True)
    for name, img in list(sample_photos().items())[:4]:
        d = root / name
        d.mkdir()
        h, w = img.shape[:2]
        for k in range(1 if name == single else photos_per):
            crop = img[k * h // 10 : h - (2 - k) * h // 12, (2 - k) * w // 12 : w - k * w // 10]
            if k % 2:
                crop = cv2.flip(crop, 1)
            cv2.imwrite(str(d / f"{k}.jpg"), cv2.resize(crop, (80, 64)))
    return root


@pytest.fixture(scope="module")
def landmarks(tmp_path_factory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("landmarks")
    bg = base / "backgrounds"
    bg.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        cv2.imwrite(str(bg / f"bg{i}.png"), rng.integers(0, 255, (60, 90, 3), dtype=np.uint8))
    return make_landmarks(base / "photos"), bg


def _split_args(root: Path) -> list[str]:
    names = sorted(p.name for p in root.iterdir())
    return ["--train-landmarks", ",".join(names[:2]), "--val-landmarks", ",".join(names[2:])]


def test_landmark_objective_resume_is_bit_identical(landmarks, tmp_path, capsys):
    root, bg = landmarks
    args = [
        *LM,
        *_split_args(root),
        "--backgrounds",
        str(bg),
        "--views",
        "2",
        "--optimizer",
        "adam",
        "--lr",
        "1e-2",
        "--patience",
        "9",
        "--cache",
        str(tmp_path / "cache"),
    ]
    cli(["train", str(root), "-o", str(tmp_path / "a.pth"), "--epochs", "3", *args])
    out = capsys.readouterr().out
    assert "val_map" in out and "clutter_map" in out and "clean_map" in out
    cli(["train", str(root), "-o", str(tmp_path / "b.pth"), "--epochs", "1", *args])
    cli(["train", str(root), "-o", str(tmp_path / "b.pth"), "--epochs", "3", "--resume", *args])
    out = capsys.readouterr().out
    assert "resumed" in out and "0 computed" in out
    a = _state(tmp_path / "a.ckpt" / "checkpoint.pt")
    b = _state(tmp_path / "b.ckpt" / "checkpoint.pt")
    for key in a["attention"]:
        assert torch.equal(a["attention"][key], b["attention"][key]), key
    untimed = [[{k: v for k, v in row.items() if k != "s"} for row in json.loads(x["history"])] for x in (a, b)]
    assert untimed[0] == untimed[1] and len(untimed[0]) == 3
    assert all(math.isfinite(row["loss"]) for row in untimed[0])
    for key, value in _state(tmp_path / "a.pth").items():
        assert torch.equal(value, _state(tmp_path / "b.pth")[key]), key
    assert _state(tmp_path / "a.pth")["conv_att_1.weight"].shape == (64, 1024, 1)


def test_landmark_objective_bad_inputs(landmarks, tmp_path, capsys):
    root, bg = landmarks
    names = sorted(p.name for p in root.iterdir())
    out = ["-o", str(tmp_path / "x.pth"), "--no-cache"]
    err = _fails(["train", str(root), *out, *LM, "--train-landmarks", names[0], "--val-landmarks", ""], capsys)
    assert "1 training landmark" in err and ">= 2" in err
    err = _fails(
        ["train", str(root), *out, *LM, "--train-landmarks", f"{names[0]},nowhere", "--val-landmarks", ""], capsys
    )
    assert "nowhere" in err and "match no folder" in err
    lonely = make_landmarks(tmp_path / "lonely", single=names[1])
    err = _fails(["train", str(lonely), *out, *LM, *_split_args(lonely)], capsys)
    assert f"{names[1]}: landmark with 1 photo" in err
    err = _fails(["train", str(root), *out, *LM, *_split_args(root), "--views", "2"], capsys)
    assert "--backgrounds" in err
    one = tmp_path / "one"
    (one / "only").mkdir(parents=True)
    assert "training landmark" in _fails(["train", str(one), *out, *LM], capsys)


def _synthetic_bank(n_landmarks: int = 4, photos: int = 6, regions: int = 8, channels: int = 16, seed: int = 0):
    """Region 0 of every photo carries its landmark's pattern (and a cue in its mean vector that
    marks it); the other regions are clutter shared by no two photos."""
    from regatt_export.landmark_train import RegionBank

    g = torch.Generator().manual_seed(seed)
    protos = F.normalize(torch.randn(n_landmarks, channels, generator=g), dim=1)
    labels = torch.arange(n_landmarks).repeat_interleave(photos)
    m = len(labels)
    v = torch.randn(m, regions, channels, generator=g)
    v[:, 0] = protos[labels] * 2.0 + 0.3 * torch.randn(m, channels, generator=g)
    rmean = torch.randn(m, regions, channels, generator=g) * 0.3
    rmean[:, 0, 0] += 2.0
    bank = RegionBank.__new__(RegionBank)
    bank.v = F.normalize(v, dim=-1).half()
    bank.rmean = rmean.half()
    bank.gmean = rmean.mean(1).half()
    bank.mask = torch.ones(m, regions, dtype=torch.bool)
    return bank, labels


def test_landmark_objective_moves_weight_to_the_region_with_the_signal():
    from regatt_export.head import Attention
    from regatt_export.landmark_train import LandmarkData

    bank, labels = _synthetic_bank()
    val_bank, val_labels = _synthetic_bank(seed=1)
    data = LandmarkData.__new__(LandmarkData)
    data.train, data.train_labels, data.views = bank, labels, 1
    data.val, data.val_labels, data.val_items = val_bank, val_labels, list(range(len(val_labels)))
    data.train_items = list(range(len(labels)))
    torch.manual_seed(0)
    att = Attention(16, "regional")
    before = data.validate(att, 0.1)
    uniform = data.validate(att, 0.1, uniform=True)
    opt = torch.optim.Adam(att.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    for _ in range(30):
        for idx in data.batches(gen, batch=8, per_landmark=2):
            opt.zero_grad()
            data.loss(att, idx, gen, tau=0.1, prior=0.0).backward()
            opt.step()
    after = data.validate(att, 0.1)
    _, phi = val_bank.descriptors(att, torch.arange(len(val_bank)))
    share = float((phi[:, 0] / phi.sum(1)).mean().detach())
    assert share > 3 / 8, share  # uniform would be 1/8
    assert after["val"] > max(uniform["val"], before["val"]) + 0.1, (after, uniform, before)


def test_supcon_and_map_basics():
    from regatt_export.landmark_train import mean_ap, supcon_loss

    labels = torch.tensor([0, 0, 1, 1])
    good = F.normalize(torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]]), dim=1)
    bad = good[[0, 2, 1, 3]]
    assert supcon_loss(good, labels, 0.1) < supcon_loss(bad, labels, 0.1)
    own = torch.arange(4)
    assert mean_ap(good @ good.t(), labels, labels, own) == pytest.approx(1.0)
    # the query's own row never counts: identical descriptors of different landmarks get AP 1/2
    flat = torch.ones(4, 4)
    assert mean_ap(flat, labels, labels, own) <= 1.0


def test_classify_reads_several_folders(tmp_path):
    from regatt_export.train import TrainConfig, Trainer

    a = make_labelled(tmp_path / "a")
    b = make_labelled(tmp_path / "b")
    cfg = TrainConfig(
        data=str(a),
        extra_data=(str(b),),
        output=str(tmp_path / "x.pth"),
        backbone="resnet18",
        weights="random",
        val_fraction=0.25,
    )
    t = Trainer(cfg, log=lambda s: None)
    names = [it.name for it in t.train_items + t.val_items]
    assert len(names) == 24 and len(set(names)) == 24 and any(n.startswith("b/") for n in names)
