"""ONNX export: parity gate, model card, golden vector, backbones at many sizes."""

from __future__ import annotations

import glob
import os

import numpy as np
import pytest
import torch

from regatt_export.build import EncoderConfig, build_encoder
from regatt_export.onnx_export import ParityError, check_parity, export_onnx
from regatt_sdk import Encoder
from regatt_sdk.card import ModelCard, read_card

SIZES = (
    ("portrait", 130, 70),
    ("landscape", 70, 130),
    ("square", 96, 96),
    ("1:4", 40, 160),
    ("4:1", 160, 40),
    ("tiny", 16, 16),
)


@pytest.mark.parametrize(
    "backbone,attention,levels",
    [
        ("resnet18", "context", 5),
        ("resnet18", "regional", 3),
        ("resnet18", "none", 6),
        ("efficientnet-lite0", "context", 5),
    ],
)
def test_export_parity_many_sizes(tmp_path, backbone, attention, levels):
    enc, card = build_encoder(
        EncoderConfig(
            backbone=backbone, weights="random" if backbone == "resnet18" else None, attention=attention, levels=levels
        )
    )
    out = tmp_path / "m.onnx"
    card, rows = export_onnx(enc, card, out, sizes=SIZES)
    assert all(r.ok for r in rows) and len(rows) == len(SIZES) + 1
    # sizes never traced nor checked at export time, incl. extreme aspect ratios
    extra = (("wide", 33, 700), ("tall", 500, 20), ("odd", 257, 129))
    more = check_parity(enc, out, sizes=extra)
    assert all(r.ok for r in more), more
    assert card.attention == attention and card.levels == levels and card.backbone == backbone
    # TF-SAME (dynamic Pad) convolutions only in EfficientNet; each became Conv(auto_pad)
    assert (card.provenance["graph_edits"]["same_pads_as_auto_pad"] > 0) == backbone.startswith("efficientnet")


def test_card_roundtrip_and_golden(tiny_model):
    enc = Encoder(tiny_model)
    card = enc.card
    assert ModelCard.from_json(card.to_json()) == card
    assert card.golden is not None and len(card.golden.vector) == card.dim == 512
    assert enc.verify() <= 1e-5
    assert card.outputs == ("descriptor", "boxes", "valid", "weights", "regions")
    assert card.versions["torch"] == torch.__version__


def test_parity_gate_refuses_to_write(tmp_path, monkeypatch):
    import regatt_export.onnx_export as ox

    enc, card = build_encoder(EncoderConfig(backbone="resnet18", weights="random"))
    out = tmp_path / "refused.onnx"
    real = ox.check_parity

    def sabotaged(*a, **k):
        rows = real(*a, **k)
        return [r.__class__(**{**r.__dict__, "max_abs_diff": 1.0, "ok": False}) for r in rows]

    monkeypatch.setattr(ox, "check_parity", sabotaged)
    with pytest.raises(ParityError, match="disagrees"):
        export_onnx(enc, card, out, sizes=SIZES[:2])
    assert not out.exists()
    assert not list(tmp_path.glob("*.tmp"))


def test_batch_input_and_float_input(tmp_path):
    enc, card = build_encoder(EncoderConfig(backbone="resnet18", weights="random", attention="regional"))
    out = tmp_path / "f.onnx"
    export_onnx(enc, card, out, input_dtype="float32", sizes=SIZES[:2])
    e = Encoder(out)
    assert e.card.input_dtype == "float32"
    imgs = np.random.default_rng(0).integers(0, 256, (3, 50, 70, 3), dtype=np.uint8)
    batch = e.encode_prepared(imgs)
    singles = np.stack([e.encode_prepared(imgs[i : i + 1])[0] for i in range(3)])
    np.testing.assert_allclose(batch, singles, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-5)


def test_efficientnet_weights_are_pretrained():
    """The packaged EfficientNet-Lite0 weights really classify: skimage photos with known classes."""
    from conftest import sample_photos
    from regatt_export.backbones import build_backbone, get_spec

    spec = get_spec("efficientnet-lite0")
    trunk = build_backbone("efficientnet-lite0")
    photos = sample_photos()
    # ImageNet classes: 'chelsea' is a tabby/tiger/Egyptian cat (281-285), 'coffee' an espresso/cup (967/968/504)
    import cv2

    expected = {"chelsea": {281, 282, 283, 284, 285}, "coffee": {967, 968, 504, 969}}
    for name, classes in expected.items():
        img = cv2.resize(photos[name], (224, 224))[:, :, ::-1].astype(np.float32)
        x = torch.from_numpy((img - np.array(spec.mean, np.float32)) / np.array(spec.std, np.float32)).permute(2, 0, 1)[
            None
        ]
        with torch.no_grad():
            logits = trunk.classifier(trunk(x).mean(dim=(2, 3)))
        top5 = set(logits.topk(5).indices[0].tolist())
        assert top5 & classes, (name, top5)


def test_efficientnet_top1_on_imagenet_sample(shared_dir):
    """Top-1 of the packaged weights on 100 of the shared ImageNet photos (skips without them)."""
    import cv2

    from regatt_export.backbones import build_backbone, get_spec

    files = sorted(glob.glob(str(shared_dir / "data" / "imagenet-sample" / "*.JPEG")))
    if not files:
        pytest.skip("no ImageNet sample")
    wnids = sorted({os.path.basename(f).split("_")[0] for f in files})
    spec, trunk = get_spec("efficientnet-lite0"), build_backbone("efficientnet-lite0")
    correct = 0
    subset = files[::10]
    for f in subset:
        img = cv2.imread(f)[:, :, ::-1]
        h, w = img.shape[:2]
        s = 256 / min(h, w)
        img = cv2.resize(img, (round(w * s), round(h * s)))
        h, w = img.shape[:2]
        img = img[(h - 224) // 2 : (h - 224) // 2 + 224, (w - 224) // 2 : (w - 224) // 2 + 224].astype(np.float32)
        x = torch.from_numpy((img - np.array(spec.mean, np.float32)) / np.array(spec.std, np.float32)).permute(2, 0, 1)[
            None
        ]
        with torch.no_grad():
            pred = trunk.classifier(trunk(x).mean(dim=(2, 3))).argmax().item()
        correct += wnids[pred] == os.path.basename(f).split("_")[0]
    assert correct / len(subset) >= 0.7


@pytest.fixture(scope="module")
def default_export(tmp_path_factory):
    """The built-in default (EfficientNet-Lite0, packaged weights) exported, checked at 3 sizes."""
    enc, card = build_encoder(EncoderConfig())
    out = tmp_path_factory.mktemp("default") / "default.onnx"
    card, rows = export_onnx(enc, card, out, sizes=SIZES[:3])
    return enc, card, rows, out


def _attrs(node) -> dict:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def test_default_export_has_no_dynamic_pad_before_a_depthwise_conv(default_export):
    """The fp32 file's strided TF-SAME convolutions are Conv(auto_pad=SAME_UPPER) with no Pad
    in front, and that edited graph matched PyTorch at untraced sizes of both parities."""
    import onnx

    enc, card, rows, out = default_export
    assert card.backbone == "efficientnet-lite0" and card.precision == "fp32"
    g = onnx.load(str(out)).graph
    producer = {o: n for n in g.node for o in n.output}
    convs = [n for n in g.node if n.op_type == "Conv"]
    depthwise = [n for n in convs if _attrs(n).get("group", 1) > 1]
    assert depthwise and not [n for n in depthwise if n.input[0] in producer and producer[n.input[0]].op_type == "Pad"]
    assert "Pad" not in {n.op_type for n in g.node}
    same = [n for n in convs if _attrs(n).get("auto_pad") == b"SAME_UPPER"]
    assert len(same) == card.provenance["graph_edits"]["same_pads_as_auto_pad"]
    strided_dw = [n for n in depthwise if list(_attrs(n).get("strides", [1, 1])) != [1, 1]]
    assert strided_dw and all(n in same for n in strided_dw)
    assert all(r.ok for r in rows) and read_card(out) == card
    # more untraced sizes, odd and even on each axis (the pads differ by parity)
    more = check_parity(enc, out, sizes=(("odd", 77, 123), ("even-odd", 64, 37), ("small", 9, 17)))
    assert all(r.ok for r in more), more


def test_default_export_passes_the_openvino_fp32_gate(default_export):
    """OpenVINO runs the edited fp32 graph within the fp32 gate (golden and untraced sizes)."""
    pytest.importorskip("openvino")
    from regatt_sdk.engines.gate import FP32_ATOL

    _, _, _, out = default_export
    enc = Encoder(out, engine="openvino", threads=1)  # refused (ModelError) when the gate fails
    gate = next(g for g in enc.choice.gates if g.engine == "openvino")
    assert gate.passed and gate.max_diff <= FP32_ATOL and len(gate.checks) > 1


def test_graph_edit_leaves_graphs_without_pairs_unchanged(default_export, tmp_path):
    """``edit_graph`` rewrites nothing when there is no dynamic TF-SAME Pad -> Conv pair: an
    already edited export (so INT8/fp16 do not edit twice), and a net whose only Pads are a
    constant one and the one in front of a dilated convolution."""
    import shutil

    import onnx

    timm_layers = pytest.importorskip("timm.layers")
    from onnx_trace import dynamic_hw_onnx
    from regatt_export.backbones.same_pad import replace_same_convs
    from regatt_export.onnx_export import edit_graph

    edited = tmp_path / "edited.onnx"
    shutil.copyfile(default_export[3], edited)
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.ZeroPad2d((1, 0, 1, 0)),
        torch.nn.Conv2d(3, 8, 3, stride=2),
        torch.nn.ReLU(),
        timm_layers.Conv2dSame(8, 4, 3, stride=1, dilation=2),
    ).eval()
    assert replace_same_convs(net) == 1
    plain = tmp_path / "plain.onnx"
    plain.write_bytes(dynamic_hw_onnx(net))
    for path in (edited, plain):
        before = path.read_bytes()
        assert edit_graph(path) == {"same_pads_as_auto_pad": 0}
        assert path.read_bytes() == before
    assert [n.op_type for n in onnx.load(str(plain)).graph.node].count("Pad") == 2


def test_default_export_ships_the_packaged_attention_and_whitening(default_export):
    """The built-in default is R-MAC + the packaged whitening + the packaged retrieval-trained
    context attention (PROVENANCE.md), not a random initialisation."""
    import torch

    from regatt_export.build import DEFAULT_ATTENTION, default_assets
    from regatt_sdk.card import read_card

    enc, _, _, out = default_export
    card = read_card(out)
    assert card.attention == DEFAULT_ATTENTION == "context"
    assert card.provenance["attention_weights"] == "efficientnet-lite0-attention-context.pth"
    assets = default_assets(EncoderConfig(attention="context"))
    packaged = torch.load(assets["attention"], weights_only=True)
    fc1 = enc.attention.fc1.weight.detach()
    assert torch.equal(fc1, packaged["conv_att_1.weight"][..., 0]), "the default's attention is the packaged file"
