"""``regatt whiten``: the PCA-whitening maths, the CLI end to end, and bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from regatt_sdk.cli.app import main


def cli(args: list[str]) -> None:
    """Run ``regatt <args>`` in-process; success exits with code 0."""
    try:
        main(args)
    except SystemExit as exc:
        assert exc.code in (0, None), exc.code


def test_learn_whitening_whitens_and_stores_negated_mean():
    from regatt_export.whiten import learn_whitening

    rng = np.random.default_rng(0)
    x = rng.normal(size=(4000, 6)) @ rng.normal(size=(6, 6)) + 5.0
    mean, comps, lam = learn_whitening(x, power=0.5)
    v = (x + mean) @ comps.T.astype(np.float64)  # the inference formula
    assert np.allclose(v.mean(axis=0), 0, atol=1e-4)
    assert np.allclose(np.cov(v.T), np.eye(6), atol=1e-3)
    assert np.all(np.diff(lam) <= 1e-9)  # eigenvalues sorted, largest first
    _, comps_d, _ = learn_whitening(x, dim=3, shrinkage=1.0, power=0.5)
    assert comps_d.shape == (3, 6)
    # full shrinkage = one common scale: a rotation scaled uniformly
    gram = comps_d @ comps_d.T
    assert np.allclose(gram, gram[0, 0] * np.eye(3), atol=1e-6)


def test_whiten_cli_matches_encoder_pooling_and_exports(photo_dir, tmp_path, capsys):
    out = tmp_path / "w.npz"
    cli(
        [
            "whiten",
            str(photo_dir),
            "-o",
            str(out),
            "--backbone",
            "resnet18",
            "--weights",
            "random",
            "-S",
            "96",
            "--levels",
            "3",
            "--dim",
            "64",
            "--shrinkage",
            "0.2",
            "--cache",
            str(tmp_path / "cache"),
            "--no-progress",
        ]
    )
    assert "6 photos" in capsys.readouterr().out
    from regatt_export.build import EncoderConfig, build_encoder
    from regatt_export.official import load_whitening_file
    from regatt_sdk.imageio import read_image
    from regatt_sdk.preprocess import prepare

    wh = load_whitening_file(out, 512)
    assert (wh.in_dim, wh.out_dim) == (512, 64)
    enc, card = build_encoder(
        EncoderConfig(backbone="resnet18", weights="random", attention="none", whitening=str(out), levels=3)
    )
    assert enc.dim == 64 and card.dim == 64
    # the stored mean is minus the mean of exactly the encoder's own regional max vectors
    rows = []
    with torch.no_grad():
        for p in sorted(photo_dir.glob("*.jpg")):
            img = torch.from_numpy(prepare(read_image(p), 96))[None]
            rmax, _, _, valid = enc.regional(img, enc.backbone(enc.normalize_input(img)))
            rows.append(rmax[0, valid].double())
    expected = -torch.cat(rows).mean(0).float()
    assert torch.allclose(wh.mean, expected, atol=1e-4)


def _fails(args: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    return capsys.readouterr().err


def test_whiten_bad_inputs(photo_dir, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    base = ["--backbone", "resnet18", "--weights", "random", "-S", "64", "--no-cache", "--no-progress"]
    assert "no images found" in _fails(["whiten", str(empty), "-o", str(tmp_path / "w.npz"), *base], capsys)
    assert "--dim must be in 1..512" in _fails(
        ["whiten", str(photo_dir), "-o", str(tmp_path / "w.npz"), "--dim", "600", *base], capsys
    )
    assert "--shrinkage" in _fails(
        ["whiten", str(photo_dir), "-o", str(tmp_path / "w.npz"), "--shrinkage", "2", *base], capsys
    )
    # a whitening file for another dimension is refused by name, by export and by train
    other = tmp_path / "w2048.npz"
    np.savez(other, mean=np.zeros(2048, np.float32), components=np.eye(16, 2048, dtype=np.float32))
    from regatt_export.official import load_whitening_file
    from regatt_export.weights import WeightsError

    with pytest.raises(WeightsError, match="2048-d regional vectors, the backbone gives 512"):
        load_whitening_file(other, 512)
    err = _fails(
        [
            "export",
            "-o",
            str(tmp_path / "m.onnx"),
            "--backbone",
            "resnet18",
            "--weights",
            "random",
            "--whitening",
            str(other),
        ],
        capsys,
    )
    assert "2048-d" in err
    err = _fails(
        [
            "train",
            str(photo_dir),
            "-o",
            str(tmp_path / "a.pth"),
            "--objective",
            "contrastive",
            "--whitening",
            str(other),
            *base[:4],
            "--no-cache",
            "--no-progress",
        ],
        capsys,
    )
    assert "2048-d" in err


@pytest.mark.parametrize("size", [(96, 128), (64, 64), (200, 60)])
def test_pool_regions_equals_encoder_regional(size):
    """The slicing pool used for training/whitening = the encoder's own (exported) pooling."""
    import torch.nn as nn

    from regatt_export.backbones import get_spec
    from regatt_export.encoder import RegionalAttentionEncoder
    from regatt_export.featcache import pool_regions
    from regatt_export.head import Attention

    spec = get_spec("resnet18")
    enc = RegionalAttentionEncoder(nn.Identity(), spec, Attention(spec.channels, "context"), None, 5)
    h, w = size
    feat = torch.rand(2, spec.channels, -(-h // 32), -(-w // 32))
    rmax, rmean, gmean, valid = enc.regional(torch.empty(2, h, w, 3), feat)
    a, m, g = pool_regions(enc, feat, h, w)
    assert torch.equal(a, rmax[:, valid])
    assert torch.allclose(m, rmean[:, valid], atol=1e-6)
    assert torch.allclose(g, gmean, atol=1e-6)


def test_learn_lw_whitens_matching_pairs_and_orders_by_separation():
    """Lw: differences of same-landmark photos become white; the first direction separates the
    landmarks best."""
    from regatt_export.whiten import learn_lw

    rng = np.random.default_rng(0)
    c, k, n = 5, 6, 40
    centres = np.zeros((k, c))
    centres[:, 3] = rng.normal(size=k) * 10  # landmarks differ along axis 3 only
    mix = rng.normal(size=(c, c))
    labels = np.repeat(np.arange(k), n)
    xi = centres[labels] + rng.normal(size=(k * n, c)) @ mix
    photo = np.repeat(np.arange(k * n), 3)  # 3 regions per photo, averaging to xi
    offs = rng.normal(size=(k * n, 3, c))
    offs -= offs.mean(axis=1, keepdims=True)
    vectors = (xi[:, None, :] + offs).reshape(-1, c)
    mean, comps, lam = learn_lw(vectors, photo, labels)
    assert np.allclose(mean, -vectors.mean(0), atol=1e-5)
    w = (xi - xi.mean(0)) @ comps.T.astype(np.float64)
    within = w - np.stack([w[labels == j].mean(0) for j in range(k)])[labels]
    # Sigma_S (pair differences) = 2 x the pooled within-landmark covariance: whitened, the
    # differences of matching pairs have unit covariance, the photos about their landmark half
    assert np.allclose(np.cov(within.T) * (k * n - 1) / (k * n - k), 0.5 * np.eye(c), atol=1e-6)
    assert lam[0] > 10 * lam[1]  # one direction carries the landmark differences
    between = np.stack([w[labels == j].mean(0) for j in range(k)])
    assert between[:, 0].std() > 10 * between[:, 1:].std(axis=0).max()
    _, comps3, _ = learn_lw(vectors, photo, labels, dim=3, shrinkage=0.5)
    assert comps3.shape == (3, c)


@pytest.fixture
def landmark_dir(tmp_path, photos) -> Path:
    """Three landmark folders of 3 photos each (crops and flips of the bundled photos)."""
    import cv2

    root = tmp_path / "landmarks"
    for k, name in enumerate(("astronaut", "coffee", "chelsea")):
        (root / name).mkdir(parents=True)
        img = photos[name]
        for j, view in enumerate((img, img[20:, 10:], img[:, ::-1])):
            cv2.imwrite(str(root / name / f"{j}.jpg"), np.ascontiguousarray(view))
    return root


def test_whiten_lw_cli_end_to_end(landmark_dir, tmp_path, capsys):
    out = tmp_path / "lw.npz"
    base = [
        "--backbone",
        "resnet18",
        "--weights",
        "random",
        "-S",
        "64",
        "--levels",
        "2",
        "--cache",
        str(tmp_path / "cache"),
        "--no-progress",
    ]
    cli(["whiten", str(landmark_dir), "-o", str(out), "--method", "lw", "--dim", "32", "--shrinkage", "0.3", *base])
    assert "learned (lw) whitening from 9 photos of 3 landmarks" in capsys.readouterr().out
    from regatt_export.build import EncoderConfig, build_encoder

    enc, card = build_encoder(
        EncoderConfig(backbone="resnet18", weights="random", attention="none", whitening=str(out), levels=2)
    )
    assert enc.dim == 32
    with np.load(out, allow_pickle=False) as z:
        assert float(z["supervised"]) == 1.0 and float(z["landmarks"]) == 3.0
    # PCA on two named landmark folders only (the paper's "PCA Landmark" on a part of a tree)
    cli(["whiten", str(landmark_dir), "-o", str(tmp_path / "pca.npz"), "--landmarks", "coffee,chelsea", *base])
    assert "from 6 photos of 2 landmarks" in capsys.readouterr().out


def test_whiten_lw_bad_inputs(landmark_dir, tmp_path, capsys):
    import shutil

    base = ["--backbone", "resnet18", "--weights", "random", "-S", "64", "--no-cache", "--no-progress"]
    out = ["-o", str(tmp_path / "w.npz")]
    err = _fails(["whiten", str(landmark_dir), *out, "--method", "lw", "--landmarks", "coffee", *base], capsys)
    assert "at least 2 landmarks" in err and "coffee" in err
    err = _fails(["whiten", str(landmark_dir), *out, "--landmarks", "coffee,louvre", *base], capsys)
    assert "no landmark folder named louvre" in err
    err = _fails(["whiten", str(landmark_dir), *out, "--method", "zca", *base], capsys)
    assert "--method must be one of pca, lw" in err
    for extra in ("1.jpg", "2.jpg"):
        (landmark_dir / "chelsea" / extra).unlink()
    err = _fails(["whiten", str(landmark_dir), *out, "--method", "lw", *base], capsys)
    assert "chelsea: 1 photo" in err and "at least 2 photos of each landmark" in err
    flat = tmp_path / "flat"
    shutil.copytree(landmark_dir / "coffee", flat)
    err = _fails(["whiten", str(flat), *out, "--method", "lw", *base], capsys)
    assert "no landmark sub-folders" in err


def test_mixture_moments_weigh_each_set_equally():
    """The moments of the union of a small and a large set, each weighted 1/2, equal those of
    the plain union after repeating the small set's rows to the large set's size."""
    from regatt_export.whiten import mixture_moments

    rng = np.random.default_rng(0)
    a = rng.normal(size=(30, 4)) + 5.0
    b = rng.normal(size=(90, 4)) @ rng.normal(size=(4, 4))
    moments = [(x.mean(0), np.cov(x.T, bias=True)) for x in (a, b)]
    mu, cov = mixture_moments(moments)
    union = np.concatenate([np.repeat(a, 3, axis=0), b])
    assert np.allclose(mu, union.mean(0))
    assert np.allclose(cov, np.cov(union.T, bias=True))
    plain = np.concatenate([a, b])  # unweighted, the large set dominates: not the same
    assert not np.allclose(mu, plain.mean(0), atol=0.1)
