"""INT8 and fp16 variants: parity gate, card records, graph structure (small random resnet18)."""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime.quantization")

from regatt_sdk.card import golden_image  # noqa: E402

logging.getLogger().setLevel(logging.ERROR)


def _qdq_int8(fp32, q) -> None:
    """onnxruntime's static QDQ quantization the way the INT8 export sets it up (per-channel
    symmetric int8 weights, uint8 activations; Conv, Clip and Pad), ``fp32`` -> ``q``, calibrated
    on 4 seeded random ``x (1, 3, 32+i, 30-i)`` inputs."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    rng = np.random.default_rng(0)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter([{"x": rng.standard_normal((1, 3, 32 + i, 30 - i)).astype(np.float32)} for i in range(4)])

        def get_next(self):
            return next(self.items, None)

    quantize_static(
        str(fp32),
        str(q),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        op_types_to_quantize=["Conv", "Clip", "Pad"],
        extra_options={"WeightSymmetric": True},
    )


@pytest.fixture(scope="module")
def fp32_model(tmp_path_factory) -> Path:
    from regatt_export.build import EncoderConfig, build_encoder
    from regatt_export.onnx_export import export_onnx

    out = tmp_path_factory.mktemp("fp32") / "r18.onnx"
    encoder, card = build_encoder(EncoderConfig(backbone="resnet18", weights="random", max_side=128))
    export_onnx(encoder, card, out, sizes=(("portrait", 128, 96), ("square", 64, 64)))
    return out


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory) -> Path:
    """A few generated 'photos' of different shapes, written as JPEG files."""
    root = tmp_path_factory.mktemp("photos")
    for i, (h, w) in enumerate([(120, 160), (160, 120), (100, 100), (90, 200), (140, 140), (130, 170)]):
        cv2.imwrite(str(root / f"p{i}.jpg"), golden_image(h, w, 40 + i))
    return root


def _card(path: Path):
    from regatt_sdk.card import read_card as read_card_file

    return read_card_file(path)


def test_int8_export_passes_gate_and_records_calibration(fp32_model, photo_dir, tmp_path):
    from regatt_export.quantize import Int8Options, quantize_int8
    from regatt_sdk.encoder import Encoder

    out = tmp_path / "m.int8.onnx"
    card, parity = quantize_int8(fp32_model, out, photo_dir, Int8Options(count=4, holdout=2, min_cosine=0.5))
    assert out.is_file() and parity.ok and parity.count == 2
    stored = _card(out)
    assert stored.precision == "int8" == card.precision
    cal = stored.provenance["calibration"]
    assert cal["folder"] == str(photo_dir.resolve()) and cal["count"] == 4 and cal["method"] == "minmax"
    assert stored.provenance["parity"]["min_cosine"] >= 0.5
    import onnx

    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    enc = Encoder(out, device="cpu", threads=1)
    enc.verify()  # golden recomputed on the int8 graph
    assert enc.encode(golden_image(100, 130, 3)).shape == (enc.dim,)


def _unused_initializers(path: Path) -> list[str]:
    import onnx

    from regatt_export.graph_edits import _graph_reads

    g = onnx.load(str(path)).graph
    used = _graph_reads(g) | {o.name for o in g.output}
    return [t.name for t in g.initializer if t.name not in used]


def _load_warnings(path: Path) -> list[str]:
    """onnxruntime's warning lines (stderr, default severity) when a session loads ``path``."""
    import subprocess
    import sys

    code = "import sys, onnxruntime as ort; ort.InferenceSession(sys.argv[1], providers=['CPUExecutionProvider'])"
    done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return [line for line in done.stderr.splitlines() if "initializer" in line.lower()]


def test_variants_carry_no_unused_initializers(same_pad_model, photo_dir, tmp_path):
    """Quantization leaves the Constant min/max of the Clips (ReLU6) it folded into QDQ ranges
    behind (60 on the default backbone); they are dropped before writing, so loading the INT8 or
    fp16 file prints no 'Removing initializer' warnings."""
    from regatt_export.fp16 import convert_fp16
    from regatt_export.quantize import Int8Options, quantize_int8

    int8, fp16 = tmp_path / "m.int8.onnx", tmp_path / "m.fp16.onnx"
    card, _ = quantize_int8(same_pad_model, int8, photo_dir, Int8Options(count=3, holdout=2, min_cosine=0.0))
    assert card.provenance["quantization"]["unused_initializers_removed"] > 0  # there were some
    card16, _ = convert_fp16(same_pad_model, fp16, min_cosine=0.0)
    assert card16.provenance["fp16"]["unused_initializers_removed"] >= 0
    for path in (int8, fp16):
        assert _unused_initializers(path) == [], path
        assert _load_warnings(path) == [], path


def test_drop_unused_initializers_keeps_what_subgraphs_and_outputs_read():
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from regatt_export.graph_edits import drop_unused_initializers

    def init(name):
        return numpy_helper.from_array(np.ones(2, np.float32), name)

    then = helper.make_graph([helper.make_node("Identity", ["sub_w"], ["t"])], "then", [],
                             [helper.make_tensor_value_info("t", TensorProto.FLOAT, [2])])  # fmt: skip
    nodes = [
        helper.make_node("Constant", [], ["dead"], value=init("c")),  # nothing reads it
        helper.make_node("Add", ["x", "w"], ["y"]),
        helper.make_node("If", ["cond"], ["z"], then_branch=then, else_branch=then),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT if n != "cond" else TensorProto.BOOL, [2] if n != "cond" else [])
         for n in ("x", "cond")] + [helper.make_tensor_value_info("unused", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2]) for n in ("y", "z", "out_w")],
        initializer=[init("w"), init("sub_w"), init("out_w"), init("unused")],
    )  # fmt: skip
    model = helper.make_model(graph)
    assert drop_unused_initializers(model) == 2
    assert [n.op_type for n in model.graph.node] == ["Add", "If"]
    assert sorted(t.name for t in model.graph.initializer) == ["out_w", "sub_w", "w"]
    assert [i.name for i in model.graph.input] == ["x", "cond"]  # its graph input went too
    onnx.checker.check_model(model)
    assert drop_unused_initializers(model) == 0


def test_int8_gate_refuses_impossible_threshold(fp32_model, photo_dir, tmp_path):
    from regatt_export.onnx_export import ParityError
    from regatt_export.quantize import Int8Options, quantize_int8

    out = tmp_path / "refused.onnx"
    with pytest.raises(ParityError, match="FAIL"):
        quantize_int8(fp32_model, out, photo_dir, Int8Options(count=3, holdout=2, min_cosine=1.0 + 1e-6))
    assert not out.exists()
    assert not list(tmp_path.glob("*.tmp"))


def test_int8_keeps_head_and_first_conv_fp32(fp32_model):
    import onnx

    from regatt_export.graph_edits import backbone_nodes, inline_constant_identities

    model = onnx.load(str(fp32_model))
    inline_constant_identities(model)
    body = backbone_nodes(model)
    names = [n.name for n in body]
    assert all("backbone" in n for n in names)  # nothing of the head or the normalisation
    assert sum(n.op_type == "Conv" for n in body) == sum(n.op_type == "Conv" for n in model.graph.node)


def test_fp16_structure_and_parity(fp32_model, tmp_path):
    import onnx
    from onnx import TensorProto

    from regatt_export.fp16 import convert_fp16

    out = tmp_path / "m.fp16.onnx"
    card, parity = convert_fp16(fp32_model, out, min_cosine=0.99)
    model = onnx.load(str(out))
    inits = {t.name: t.data_type for t in model.graph.initializer}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    assert convs and all(inits[n.input[1]] == TensorProto.FLOAT16 for n in convs)
    assert model.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.UINT8
    # the head (whitening/attention MatMuls) stays fp32
    matmul_weights = [
        inits[i] for n in model.graph.node if n.op_type in ("MatMul", "Gemm") for i in n.input if i in inits
    ]
    assert all(t == TensorProto.FLOAT for t in matmul_weights)
    assert card.precision == "fp16" == _card(out).precision
    if parity is not None:  # onnxruntime here runs fp16 kernels
        assert parity.ok and parity.min_cosine > 0.999


def test_parity_images_must_be_disjoint(fp32_model, photo_dir, tmp_path):
    from regatt_export.calibration import CalibrationError
    from regatt_export.quantize import Int8Options, quantize_int8

    with pytest.raises(CalibrationError, match="also calibration"):
        quantize_int8(fp32_model, tmp_path / "x.onnx", photo_dir, Int8Options(count=3, parity_dir=str(photo_dir)))


def test_cosines_flags_non_finite():
    from regatt_export.parity import cosines

    a = np.ones((2, 4), np.float32)
    b = a.copy()
    b[1, 0] = np.nan
    cos = cosines(a, b)
    assert cos[0] == pytest.approx(1.0) and cos[1] == -np.inf


def test_run_bound_matches_plain_run(fp32_model):
    """The IO-binding path (used on CUDA) gives the plain run's result (checked here on CPU)."""
    from regatt_sdk.engines.ort import create_session, run_bound, runs_on_gpu

    sess = create_session(fp32_model, "cpu")
    assert not runs_on_gpu(sess)
    feed = golden_image(64, 80, 9)[None]
    want = sess.run(["descriptor"], {"image": feed})[0]
    got = run_bound(sess, "image", feed, "descriptor")
    np.testing.assert_array_equal(got, want)


def test_resnet_stem_is_quantized_by_default_and_can_stay_fp32(fp32_model, photo_dir, tmp_path):
    import onnx

    from regatt_export.graph_edits import backbone_nodes, inline_constant_identities
    from regatt_export.quantize import Int8Options, quantize_int8

    model = onnx.load(str(fp32_model))
    inline_constant_identities(model)
    stem = next(n.name for n in backbone_nodes(model) if n.op_type == "Conv")
    card, _ = quantize_int8(fp32_model, tmp_path / "a.onnx", photo_dir, Int8Options(count=3, holdout=2, min_cosine=0.5))
    assert stem not in card.provenance["quantization"]["excluded"]
    card, _ = quantize_int8(
        fp32_model,
        tmp_path / "b.onnx",
        photo_dir,
        Int8Options(count=3, holdout=2, min_cosine=0.5, exclude_first_conv=True),
    )
    assert stem in card.provenance["quantization"]["excluded"]


def test_fused_uint8_pads_give_the_same_bytes(tmp_path):
    """DQ -> Pad -> Q of the dynamic TF-SAME padding becomes one uint8 Pad; outputs unchanged."""
    import onnx
    import torch

    from onnx_trace import dynamic_hw_onnx

    timm_layers = pytest.importorskip("timm.layers")
    from regatt_export.backbones.same_pad import replace_same_convs
    from regatt_export.graph_edits import fuse_qdq_pads
    from regatt_sdk.engines.ort import create_session

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1),
        torch.nn.ReLU6(),
        timm_layers.Conv2dSame(8, 8, 3, stride=2, groups=8),
        torch.nn.ReLU6(),
        timm_layers.Conv2dSame(8, 4, 5, stride=2),
    ).eval()
    replace_same_convs(net)
    fp32 = tmp_path / "f.onnx"
    fp32.write_bytes(dynamic_hw_onnx(net))

    q = tmp_path / "q.onnx"
    _qdq_int8(fp32, q)
    model = onnx.load(str(q))
    assert fuse_qdq_pads(model) == 2
    producer = {o: n.op_type for n in model.graph.node for o in n.output}
    pads = [n for n in model.graph.node if n.op_type == "Pad"]
    assert len(pads) == 2 and all(producer.get(n.input[0]) != "DequantizeLinear" for n in pads)
    assert all(producer.get(n.input[0]) != "DequantizeLinear" for n in model.graph.node if n.op_type == "Shape")
    fused = tmp_path / "fused.onnx"
    onnx.save(model, str(fused))
    a = create_session(q, providers=["CPUExecutionProvider"])
    b = create_session(fused, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    for h, w in [(32, 32), (31, 17), (9, 40)]:
        x = rng.standard_normal((1, 3, h, w)).astype(np.float32)
        np.testing.assert_array_equal(a.run(None, {"x": x})[0], b.run(None, {"x": x})[0])


def test_keep_fp32_patterns_leave_those_nodes_unquantized(fp32_model, photo_dir, tmp_path):
    import onnx

    from regatt_export.graph_edits import default_fp32_nodes
    from regatt_export.quantize import Int8Options, quantize_int8

    assert default_fp32_nodes("efficientnet-lite0") == ("/blocks.0/",) and default_fp32_nodes("resnet18") == ()
    out = tmp_path / "k.onnx"
    card, _ = quantize_int8(
        fp32_model, out, photo_dir, Int8Options(count=3, holdout=2, min_cosine=0.5, keep_fp32=("/layer4/",))
    )
    assert card.provenance["quantization"]["kept_fp32_patterns"] == ["/layer4/"]
    model = onnx.load(str(out))
    producer = {o: n for n in model.graph.node for o in n.output}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    kept = [n for n in convs if "/layer4/" in n.name]
    assert kept, "the pattern matched no convolution"
    # a kept conv has float weights; a quantized one reads its weights through a DequantizeLinear
    assert all(getattr(producer.get(n.input[1]), "op_type", "") != "DequantizeLinear" for n in kept)
    others = [
        n for n in convs if "/layer4/" not in n.name and n.name not in card.provenance["quantization"]["excluded"]
    ]
    assert others and all(producer[n.input[1]].op_type == "DequantizeLinear" for n in others)


def test_same_pads_become_auto_pad_exactly_and_only_when_they_follow_the_rule():
    """Dynamic TF-SAME Pad -> Conv pairs become one Conv(auto_pad=SAME_UPPER), bit-identical at
    every size; a Pad whose amounts are not that convolution's SAME rule, or in front of a
    dilated convolution (no auto_pad SAME in onnxruntime), is left alone."""
    import onnx
    import torch

    timm_layers = pytest.importorskip("timm.layers")
    from onnx_trace import dynamic_hw_onnx
    from regatt_export.backbones.same_pad import replace_same_convs
    from regatt_export.graph_edits import same_pads_to_auto_pad
    from regatt_sdk.engines.ort import create_session

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        timm_layers.Conv2dSame(3, 8, 3, stride=2),
        torch.nn.ReLU6(),
        timm_layers.Conv2dSame(8, 8, 5, stride=2, groups=8),
        torch.nn.ReLU6(),
        timm_layers.Conv2dSame(8, 4, 3, stride=1, dilation=2),
    ).eval()
    assert replace_same_convs(net) == 3
    raw = dynamic_hw_onnx(net)
    model = onnx.load_from_string(raw)
    assert same_pads_to_auto_pad(model) == 2
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("Pad") == 1 and ops.count("Shape") == 2 and ops.count("Conv") == 3  # the dilated one's
    a = create_session(raw, providers=["CPUExecutionProvider"])
    b = create_session(model.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    for h, w in [(32, 32), (31, 17), (1, 1), (2, 9), (45, 8)]:
        x = rng.standard_normal((1, 3, h, w)).astype(np.float32)
        np.testing.assert_array_equal(a.run(None, {"x": x})[0], b.run(None, {"x": x})[0])
    # the same pads in front of a stride-1 convolution are not its SAME rule: kept
    tampered = onnx.load_from_string(raw)
    first = next(n for n in tampered.graph.node if n.op_type == "Conv")
    next(a for a in first.attribute if a.name == "strides").ints[:] = [1, 1]
    assert same_pads_to_auto_pad(tampered) == 1
    assert [n.op_type for n in tampered.graph.node].count("Pad") == 2


def test_openvino_runs_a_quantized_same_pad_graph_like_onnxruntime(tmp_path):
    """The graph pattern behind the broken OpenVINO INT8: a 1x1 convolution with per-channel
    bias, quantized, then a stride-2 TF-SAME depthwise convolution. With the dynamic Pad,
    OpenVINO 2026.4 (dynamic shapes) used channel 0's bias for every channel (cosine 0.34);
    after :func:`same_pads_to_auto_pad` both engines give the same numbers."""
    ov = pytest.importorskip("openvino")
    import onnx
    import torch

    timm_layers = pytest.importorskip("timm.layers")
    from onnx_trace import dynamic_hw_onnx
    from regatt_export.backbones.same_pad import replace_same_convs
    from regatt_export.graph_edits import fuse_qdq_pads, same_pads_to_auto_pad
    from regatt_sdk.engines.ort import create_session

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 1),
        torch.nn.ReLU6(),
        timm_layers.Conv2dSame(16, 16, 3, stride=2, groups=16),
        torch.nn.ReLU6(),
        torch.nn.Conv2d(16, 8, 1),
    ).eval()
    with torch.no_grad():
        net[0].bias.copy_(torch.linspace(-2, 3, 16))  # channels with clearly different biases
    replace_same_convs(net)
    model = onnx.load_from_string(dynamic_hw_onnx(net))
    assert same_pads_to_auto_pad(model) == 1
    fp32, q = tmp_path / "f.onnx", tmp_path / "q.onnx"
    onnx.save(model, str(fp32))

    _qdq_int8(fp32, q)
    quantized = onnx.load(str(q))
    fuse_qdq_pads(quantized)
    onnx.save(quantized, str(q))
    ort_session = create_session(q, providers=["CPUExecutionProvider"])
    compiled = ov.Core().compile_model(str(q), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    rng = np.random.default_rng(1)
    for h, w in [(31, 40), (32, 32), (17, 50)]:
        x = rng.standard_normal((1, 3, h, w)).astype(np.float32)
        want = ort_session.run(None, {"x": x})[0]
        got = compiled({0: x})[compiled.outputs[0]]
        assert got.shape == want.shape
        cos = float(want.ravel() @ got.ravel() / (np.linalg.norm(want) * np.linalg.norm(got)))
        assert cos > 0.999, f"{h}x{w}: OpenVINO vs onnxruntime cosine {cos:.4f}"


@pytest.fixture(scope="module")
def same_pad_model(tmp_path_factory) -> Path:
    """A random-weight EfficientNet-Lite0 encoder (TF-SAME stride-2 convolutions) whose batch
    norms have random statistics, so its folded convolution biases differ per channel."""
    import torch

    from regatt_export.build import EncoderConfig, build_encoder
    from regatt_export.onnx_export import export_onnx

    encoder, card = build_encoder(EncoderConfig(backbone="efficientnet-lite0", weights="random", max_side=128))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for mod in encoder.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.copy_(torch.randn(mod.num_features, generator=g))
                mod.bias.copy_(2 * torch.randn(mod.num_features, generator=g))
    out = tmp_path_factory.mktemp("effnet") / "e.onnx"
    export_onnx(encoder, card, out, sizes=(("portrait", 128, 96), ("square", 64, 64)))
    return out


def test_int8_same_pad_model_passes_the_openvino_gate(same_pad_model, photo_dir, tmp_path, monkeypatch):
    """The default backbone's INT8 QDQ export runs on OpenVINO with onnxruntime's descriptors
    (the gate: cosine >= 0.99 at the golden and untraced sizes; 0.976 before the fix).

    This fixture (4 calibration photos, no learned head) describes every photo nearly alike
    (its reference finds the gate's copies at ~28 mAP), so rankings are noise and the retrieval
    gate (tests/test_precision_gate.py) cannot judge it: it is opened up here, and only the
    descriptor gate this test is about decides."""
    pytest.importorskip("openvino")
    import onnx

    from regatt_export.quantize import Int8Options, quantize_int8
    from regatt_sdk.encoder import Encoder
    from regatt_sdk.engines import retrieval
    from regatt_sdk.engines.gate import INT8_MIN_COSINE

    monkeypatch.setattr(retrieval, "MIN_TOP10", 0.0)
    monkeypatch.setattr(retrieval, "MAX_MAP_DROP", 100.0)
    monkeypatch.setenv("REGATT_ENGINE_CACHE", str(tmp_path / "engines.json"))

    out = tmp_path / "e.int8.onnx"
    card, _ = quantize_int8(same_pad_model, out, photo_dir, Int8Options(count=4, holdout=2, min_cosine=0.5))
    # the fp32 export made the edit (5 stride-2 TF-SAME convolutions); quantization found none left
    assert card.provenance["graph_edits"]["same_pads_as_auto_pad"] == 5
    assert card.provenance["quantization"]["same_pads_as_auto_pad"] == 0
    assert "Pad" not in {n.op_type for n in onnx.load(str(out)).graph.node}
    enc = Encoder(out, engine="openvino", threads=1)  # refused (ModelError) when the gate fails
    gate = next(g for g in enc.choice.gates if g.engine == "openvino")
    assert gate.passed and gate.min_cosine >= INT8_MIN_COSINE and len(gate.checks) > 1
