"""The release importer and the exported release pipeline against the naive reference.

Synthetic weights in the official format (random, but with the real file names, keys, shapes
and dtypes) stand in for the authors' ``weights.tar``.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torchvision

from regatt_export.build import EncoderConfig, build_encoder
from regatt_export.onnx_export import export_onnx
from regatt_export.weights import WeightsError
from regatt_sdk import Encoder
from release_reference import reference_descriptor

C = 2048


def reference_trunk(state: dict[str, torch.Tensor]) -> torch.nn.Module:
    """Caffe ResNet-101 built independently of the project: stride on conv1, ceil max-pool."""
    net = torchvision.models.resnet101(weights=None)
    net.maxpool = torch.nn.MaxPool2d(3, 2, 0, ceil_mode=True)
    for layer in (net.layer2, net.layer3, net.layer4):
        layer[0].conv1.stride, layer[0].conv2.stride = (2, 2), (1, 1)
    net.load_state_dict(state, strict=False)
    net.fc = torch.nn.Identity()
    net.avgpool = torch.nn.Identity()
    net.eval()

    class Trunk(torch.nn.Module):
        def forward(self, x):
            x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
            return net.layer4(net.layer3(net.layer2(net.layer1(x))))

    return Trunk().eval()


def write_release(d: Path, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    net = torchvision.models.resnet101(weights=None)
    state = {}
    for k, v in net.state_dict().items():
        if k.endswith("num_batches_tracked"):
            continue  # saved by an old PyTorch
        if k.endswith("running_var"):
            v = 0.5 + torch.rand(v.shape, generator=g)
        elif k.endswith("running_mean") or k.endswith(".bias"):
            v = 0.1 * torch.randn(v.shape, generator=g)
        elif k.endswith(".weight") and v.ndim == 1:
            v = 0.5 + 0.5 * torch.rand(v.shape, generator=g)
        state[k] = v.clone()
    torch.save(state, d / "resnet101_caffeProto.pth")
    att = {
        "conv_att_1.weight": 0.02 * torch.randn(64, 2 * C, 1, generator=g),
        "conv_att_1.bias": 0.1 * torch.randn(64, generator=g),
        "conv_att_2.weight": 0.5 * torch.randn(1, 64, 1, generator=g),
        "conv_att_2.bias": torch.zeros(1),
    }
    torch.save(att, d / "ContextAwareRegionalAttention_weights.pth")
    rng = np.random.default_rng(seed)
    comps = rng.normal(0, 1 / np.sqrt(C), (C, C)).astype(np.float32)
    mean = rng.normal(0, 0.1, C).astype(np.float32)
    np.save(d / "pca_components.npy", comps)
    np.save(d / "pca_mean.npy", mean)
    return {"state": state, "att": att, "comps": comps, "mean": mean}


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    d = tmp_path_factory.mktemp("release")
    return d, write_release(d)


def _reference(rel, trunk, path: Path, S: int, roi=None, variant="context") -> np.ndarray:
    img = cv2.imread(str(path))
    h, w = img.shape[:2]
    nh, nw = int(np.round(h * S / max(h, w))), int(np.round(w * S / max(h, w)))
    img = cv2.resize(img, (nw, nh))
    if roi is not None:
        ratio = S / max(h, w)
        x1, y1, x2, y2 = np.round(np.array(roi, dtype=np.float32) * ratio).astype(int)
        img = img[y1:y2, x1:x2]
    return reference_descriptor(
        trunk, img, rel["mean"], rel["comps"], rel["att"] if variant != "none" else None, variant
    )


def _check(got: np.ndarray, want: np.ndarray) -> None:
    assert np.abs(got - want).max() <= 2e-5
    assert float(got @ want) / (np.linalg.norm(got) * np.linalg.norm(want)) >= 0.99999


@pytest.mark.slow
def test_official_export_matches_release(release, tmp_path, photo_dir):
    d, rel = release
    out = tmp_path / "official.onnx"
    from typer.testing import CliRunner

    from regatt_sdk.cli.app import build

    result = CliRunner().invoke(build(), ["export", "--official", str(d), "-o", str(out)])
    assert result.exit_code == 0, result.output
    trunk = reference_trunk(rel["state"])
    coffee = photo_dir / "coffee.jpg"  # 400 x 600 -> 683 x 1024
    enc1024 = Encoder(out, device="cpu")
    assert enc1024.card.preset == "official" and enc1024.dim == C
    _check(enc1024.encode(coffee), _reference(rel, trunk, coffee, 1024))
    enc512 = Encoder(out, device="cpu", max_side=512)
    rocket = photo_dir / "rocket.jpg"  # 427 x 640 portrait-ish photo
    _check(enc512.encode(rocket), _reference(rel, trunk, rocket, 512))
    box = (100.5, 40.0, 500.25, 300.0)
    _check(enc512.encode(coffee, roi=box), _reference(rel, trunk, coffee, 512, roi=box))


@pytest.mark.slow
def test_official_baseline_variant(release, tmp_path, photo_dir):
    d, rel = release
    enc, card = build_encoder(EncoderConfig(official=str(d), attention="none"))
    out = tmp_path / "baseline.onnx"
    export_onnx(enc, card, out, sizes=(("landscape", 96, 128), ("tall", 200, 50)))
    trunk = reference_trunk(rel["state"])
    chelsea = photo_dir / "chelsea.jpg"
    _check(Encoder(out, max_side=512).encode(chelsea), _reference(rel, trunk, chelsea, 512, variant="none"))


def test_importer_fails_loudly(tmp_path, release):
    d, rel = release
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in d.iterdir():
        (bad / f.name).symlink_to(f)
    (bad / "pca_mean.npy").unlink()
    with pytest.raises(WeightsError, match="pca_mean.npy"):
        build_encoder(EncoderConfig(official=str(bad)))
    np.save(bad / "pca_mean.npy", np.zeros(100, dtype=np.float32))
    with pytest.raises(WeightsError, match="mean"):
        build_encoder(EncoderConfig(official=str(bad)))
    (bad / "pca_mean.npy").unlink()
    np.save(bad / "pca_mean.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(WeightsError, match="pca_mean.npy"):
        build_encoder(EncoderConfig(official=str(bad)))


def test_importer_rejects_misshaped_and_missing_tensors(tmp_path, release):
    d, rel = release
    bad = tmp_path / "bad2"
    bad.mkdir()
    for f in d.iterdir():
        if f.name != "ContextAwareRegionalAttention_weights.pth":
            (bad / f.name).symlink_to(f)
    att = dict(rel["att"])
    att["conv_att_1.weight"] = torch.zeros(64, 2048, 1)
    torch.save(att, bad / "ContextAwareRegionalAttention_weights.pth")
    with pytest.raises(WeightsError, match="conv_att_1.weight"):
        build_encoder(EncoderConfig(official=str(bad)))
    del att["conv_att_2.bias"]
    att["conv_att_1.weight"] = rel["att"]["conv_att_1.weight"]
    torch.save(att, bad / "ContextAwareRegionalAttention_weights.pth")
    with pytest.raises(WeightsError, match="conv_att_2.bias"):
        build_encoder(EncoderConfig(official=str(bad)))
    state = dict(rel["state"])
    del state["layer3.5.conv2.weight"]
    torch.save(state, tmp_path / "trunk.pth")
    with pytest.raises(WeightsError, match="missing"):
        build_encoder(EncoderConfig(backbone="resnet101-caffe", weights=str(tmp_path / "trunk.pth")))


def test_pickled_weights_are_refused(tmp_path):
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("executed",))

    p = tmp_path / "evil.pth"
    with open(p, "wb") as f:
        pickle.dump({"x": Evil()}, f)
    with pytest.raises(WeightsError, match="evil.pth"):
        build_encoder(EncoderConfig(backbone="resnet18", weights=str(p)))
