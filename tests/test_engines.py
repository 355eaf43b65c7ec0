"""The engine seam: one device parser, onnxruntime provider options, the model card read
without a session, and the encoder talking to an engine."""

from __future__ import annotations

import numpy as np
import pytest

from regatt_sdk.card import read_card, read_metadata
from regatt_sdk.engines import Device, open_engine, parse_device
from regatt_sdk.engines.ort import choose_providers
from regatt_sdk.errors import ModelError

ALL_PROVIDERS = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


@pytest.mark.parametrize(
    "text, want",
    [
        ("cpu", Device("cpu")),
        ("auto", Device("auto")),
        ("cuda", Device("cuda")),
        ("cuda:1", Device("cuda", 1)),
        ("CUDA:0", Device("cuda", 0)),
        ("tensorrt:3", Device("tensorrt", 3)),
        ("openvino", Device("openvino")),
        ("openvino:GPU.1", Device("openvino", target="GPU.1")),
    ],
)
def test_parse_device(text, want):
    assert parse_device(text) == want
    assert parse_device(str(want)) == want


@pytest.mark.parametrize("text", ["gpu", "cuda:x", "cuda:", "cpu:1", "tensorrt:-1", ""])
def test_parse_device_refuses_with_the_forms(text):
    with pytest.raises(ModelError, match=r"cuda\[:N\]"):
        parse_device(text)


def _options(providers, name):
    return next(p[1] for p in providers if isinstance(p, tuple) and p[0] == name)


def test_cuda_index_reaches_onnxruntime_as_device_id():
    p = choose_providers("cuda:1", available=ALL_PROVIDERS)
    assert [x[0] if isinstance(x, tuple) else x for x in p] == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert _options(p, "CUDAExecutionProvider")["device_id"] == "1"
    assert _options(p, "CUDAExecutionProvider")["cudnn_conv_algo_search"] == "HEURISTIC"
    trt = choose_providers("tensorrt:2", available=ALL_PROVIDERS)
    assert _options(trt, "TensorrtExecutionProvider")["device_id"] == "2"
    assert _options(trt, "CUDAExecutionProvider")["device_id"] == "2"
    assert "device_id" not in _options(choose_providers("cuda", available=ALL_PROVIDERS), "CUDAExecutionProvider")
    assert choose_providers("cpu", available=ALL_PROVIDERS) == ["CPUExecutionProvider"]
    auto = choose_providers("auto", available=["CPUExecutionProvider"])
    assert auto == ["CPUExecutionProvider"]


def test_openvino_is_not_an_onnxruntime_device():
    with pytest.raises(ModelError, match="openvino"):
        choose_providers("openvino:CPU", available=ALL_PROVIDERS)


def test_card_is_read_from_the_file_without_a_session(tiny_model):
    card = read_card(tiny_model)
    assert card.dim in (32, 512) and card.backbone in ("tiny", "resnet18") and card.golden is not None
    assert "regatt.card" in read_metadata(tiny_model)


def test_read_card_names_the_file(tmp_path):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\xff\xff\xff\xff not protobuf")
    with pytest.raises(ModelError, match="junk.onnx"):
        read_card(junk)
    with pytest.raises(ModelError, match="not found"):
        read_card(tmp_path / "missing.onnx")


def test_engine_runs_named_outputs_and_describes_itself(tiny_model):
    from regatt_sdk.card import golden_image

    eng = open_engine(tiny_model, "cpu", threads=1)
    assert eng.name == "onnxruntime" and eng.input_name == "image"
    assert "descriptor" in eng.output_names
    out = eng.run(golden_image(64, 96, 1)[None], ["descriptor"])
    dim = read_card(tiny_model).dim
    assert list(out) == ["descriptor"] and out["descriptor"].shape == (1, dim)
    np.testing.assert_allclose(np.linalg.norm(out["descriptor"], axis=1), 1.0, rtol=1e-5)
    info = eng.describe()
    assert info["engine"] == "onnxruntime" and info["device"] == "cpu"
    assert info["providers"][0] == "CPUExecutionProvider"


def test_encoder_uses_the_engine_it_is_given(tiny_model):
    from regatt_sdk.card import golden_image
    from regatt_sdk.encoder import Encoder

    calls = []
    eng = open_engine(tiny_model, "cpu", threads=1)

    class Counting:
        name, device = eng.name, eng.device
        input_name, output_names, providers = eng.input_name, eng.output_names, eng.providers

        def run(self, feed, outputs=None):
            calls.append((feed.shape, tuple(outputs or ())))
            return eng.run(feed, outputs)

        def describe(self):
            return eng.describe()

    enc = Encoder(tiny_model, engine=Counting(), max_side=96)
    vec = enc.encode(golden_image(64, 96, 2))
    assert vec.shape == (enc.dim,) and calls == [((1, 64, 96, 3), ("descriptor",))]


def test_memory_plans_reach_the_session_and_give_the_same_descriptors(tiny_model):
    """``memory=``: ``pattern`` is onnxruntime's default, ``arena`` turns the per-shape memory
    pattern off, ``lean`` the arena too; the descriptors are the same bits either way."""
    from regatt_sdk.card import golden_image
    from regatt_sdk.encoder import Encoder

    images = [golden_image(64, 96, 3), golden_image(80, 60, 4)]
    want = {"pattern": (True, True), "arena": (False, True), "lean": (False, False)}
    vecs = {}
    for plan, (pattern, arena) in want.items():
        enc = Encoder(tiny_model, device="cpu", threads=1, max_side=96, memory=plan)
        opts = enc.engine.session.get_session_options()
        assert (opts.enable_mem_pattern, opts.enable_cpu_mem_arena) == (pattern, arena), plan
        assert enc.engine.describe()["memory"] == plan
        vecs[plan] = enc.encode(images)
    np.testing.assert_array_equal(vecs["arena"], vecs["pattern"])
    np.testing.assert_array_equal(vecs["lean"], vecs["pattern"])
    with pytest.raises(ModelError, match="memory plan 'small'"):
        Encoder(tiny_model, device="cpu", memory="small")


def test_unknown_device_fails_before_any_work(tiny_model):
    from regatt_sdk.encoder import Encoder

    with pytest.raises(ModelError, match="unknown device 'gpu'"):
        Encoder(tiny_model, device="gpu")


def test_committed_fixture_matches_its_golden_vector():
    """The runtime-only tests' model (tests/fixtures/tiny.onnx) still reproduces its card's
    golden descriptor on this onnxruntime."""
    from pathlib import Path

    from regatt_sdk.encoder import Encoder

    path = Path(__file__).parent / "fixtures" / "tiny.onnx"
    enc = Encoder(path, device="cpu", threads=1)
    assert enc.card.backbone == "tiny" and "boxes" in enc.card.outputs
    assert enc.verify() <= 1e-4
