"""The OpenVINO engine, the per-engine gate and engine choice (engine=..., precision=...)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from regatt_sdk.card import golden_image, read_card
from regatt_sdk.engines import gate
from regatt_sdk.errors import ModelError

UNTRACED = ((72, 100), (100, 72), (64, 64), (32, 128))


@pytest.fixture(scope="module")
def ov():
    return pytest.importorskip("openvino")


@pytest.fixture()
def engine_cache(tmp_path, monkeypatch):
    path = tmp_path / "engines.json"
    monkeypatch.setenv("REGATT_ENGINE_CACHE", str(path))
    return path


@pytest.fixture(scope="module")
def tampered_model(tiny_model, tmp_path_factory):
    """The tiny model with one backbone convolution's weights scaled by 1.3, card unchanged."""
    onnx = pytest.importorskip("onnx")
    from onnx import numpy_helper

    proto = onnx.load(str(tiny_model))
    convs = {n.input[1] for n in proto.graph.node if n.op_type == "Conv"}
    init = next(i for i in proto.graph.initializer if i.name in convs and np.prod(i.dims) > 1000)
    arr = numpy_helper.to_array(init) * np.float32(1.3)
    init.CopyFrom(numpy_helper.from_array(arr.astype(np.float32), init.name))
    out = tmp_path_factory.mktemp("tampered") / "tampered.onnx"
    onnx.save(proto, str(out))
    return out


def test_import_regatt_sdk_imports_neither_torch_nor_openvino():
    code = "import sys, regatt_sdk, regatt_sdk.encoder, regatt_sdk.engines; print(sorted({'torch', 'openvino'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("shapes", ["auto", "dynamic", "static"])
def test_openvino_matches_onnxruntime_at_untraced_sizes(tiny_model, ov, shapes):
    from regatt_sdk.engines.openvino import OpenVinoEngine
    from regatt_sdk.engines.ort import OrtEngine

    dim = read_card(tiny_model).dim
    ref = OrtEngine(tiny_model, "cpu", threads=1)
    eng = OpenVinoEngine(tiny_model, threads=1, shapes=shapes)
    for k, (h, w) in enumerate(UNTRACED + UNTRACED[:1]):  # the first size twice: auto compiles it static
        x = golden_image(h, w, 40 + k)[None]
        got, want = eng.run(x, ["descriptor"])["descriptor"], ref.run(x, ["descriptor"])["descriptor"]
        assert got.shape == want.shape == (1, dim)
        assert np.abs(got - want).max() <= 1e-5
    assert eng.providers == ["openvino:CPU"] and eng.describe()["precision"] == "fp32"


def test_openvino_shape_cache_is_bounded(tiny_model, ov):
    from regatt_sdk.engines.openvino import OpenVinoEngine

    eng = OpenVinoEngine(tiny_model, threads=1, shapes="static", cache_size=2)
    for h, w in UNTRACED:
        eng.run(golden_image(h, w, 1)[None])
    assert eng.compiles == 4 and eng.describe()["compiled_shapes"] == 2
    auto = OpenVinoEngine(tiny_model, threads=1, shapes="auto", cache_size=2)
    x = golden_image(64, 64, 1)[None]
    auto.run(x)
    assert auto.describe()["compiled_shapes"] == 0  # first sight: the dynamic graph
    auto.run(x)
    assert auto.describe()["compiled_shapes"] == 1  # seen again: compiled for its shape
    # once the cache is full, new shapes stay on the dynamic graph: compiles stay bounded
    for h in (40, 48, 56, 40, 48, 56, 40, 48, 56):
        auto.run(np.ascontiguousarray(x[:, :h]))
    assert auto.describe()["compiled_shapes"] == 2 and auto.compiles <= 3


def test_encoder_openvino_engine_is_gated_and_encodes(tiny_model, ov, photos):
    from regatt_sdk.encoder import Encoder

    enc = Encoder(tiny_model, engine="openvino", max_side=96, threads=1)
    ref = Encoder(tiny_model, engine="onnxruntime", max_side=96, threads=1)
    assert enc.choice.engine == "openvino" and "passed" in enc.choice.reason
    assert enc.choice.gates[0].max_diff <= 1e-5 and len(enc.choice.gates[0].checks) == 1 + len(gate.SIZES)
    imgs = [photos["coffee"], photos["camera"]]
    assert np.abs(enc.encode(imgs) - ref.encode(imgs)).max() <= 1e-5


def test_tampered_model_is_refused_by_every_engine(tampered_model, ov):
    from regatt_sdk.encoder import Encoder

    for engine in ("onnxruntime", "openvino", None):
        with pytest.raises(ModelError, match="refused: golden"):
            Encoder(tampered_model, engine=engine, threads=1)


def test_auto_refuses_when_no_engine_passes(tampered_model, ov, engine_cache):
    from regatt_sdk.encoder import Encoder

    with pytest.raises(ModelError, match="no engine passed its gate"):
        Encoder(tampered_model, engine="auto", threads=1)


def test_auto_picks_a_gated_engine_says_why_and_caches(tiny_model, ov, engine_cache):
    from regatt_sdk.encoder import Encoder

    first = Encoder(tiny_model, engine="auto", threads=1)
    assert first.choice.engine in ("onnxruntime", "openvino")
    assert "fastest gated engine" in first.choice.reason and set(first.choice.probe_ms) == {"onnxruntime", "openvino"}
    assert all(g.passed for g in first.choice.gates) and engine_cache.exists()
    again = Encoder(tiny_model, engine="auto", threads=1)
    assert again.choice.cached and again.choice.engine == first.choice.engine


def test_bf16_is_opt_in_gated_by_cosine_and_refused_on_onnxruntime(tiny_model, ov):
    from regatt_sdk.encoder import Encoder
    from regatt_sdk.engines.openvino import cpu_supports

    with pytest.raises(ModelError, match="onnxruntime has no bf16"):
        Encoder(tiny_model, engine="onnxruntime", precision="bf16")
    if not cpu_supports("bf16"):
        with pytest.raises(ModelError, match="no BF16 support"):
            Encoder(tiny_model, engine="openvino", precision="bf16")
        return
    enc = Encoder(tiny_model, engine="openvino", precision="bf16", threads=1)
    assert enc.choice.precision == "bf16" and enc.choice.gates[0].min_cosine >= gate.BF16_MIN_COSINE
    assert enc.engine.describe()["precision"] == "bf16"


def test_engine_and_device_arguments_are_checked(tiny_model):
    from regatt_sdk.encoder import Encoder

    with pytest.raises(ModelError, match="unknown engine 'tensorflow'"):
        Encoder(tiny_model, engine="tensorflow")
    with pytest.raises(ModelError, match="unknown precision 'int4'"):
        Encoder(tiny_model, precision="int4")
    with pytest.raises(ModelError, match="openvino:GPU"):
        Encoder(tiny_model, device="cuda:0", engine="openvino")
    with pytest.raises(ModelError, match="run by the openvino engine"):
        Encoder(tiny_model, device="openvino:CPU", engine="onnxruntime")


def test_gate_rules_on_a_fake_engine(tiny_model):
    card = read_card(tiny_model)
    from regatt_sdk.engines.ort import OrtEngine

    ort = OrtEngine(tiny_model, "cpu", threads=1)

    def exact(x):
        return ort.run(x, ["descriptor"])["descriptor"]

    def noisy(x):  # off by ~1e-3 everywhere: not exact, but cosine ~0.9999
        y = exact(x)
        return y + np.float32(1e-3) * np.sign(np.sin(np.arange(y.shape[1], dtype=np.float32)))

    ok = gate.check(exact, card, engine="fake", reference=exact)
    assert ok.passed and ok.max_diff <= 1e-6
    bad = gate.check(noisy, card, engine="fake", reference=exact)
    assert not bad.passed and "needs max |diff| <= 1e-05" in bad.reason
    assert gate.check(noisy, card, engine="fake", precision="bf16", reference=exact).passed
    crashed = gate.check(lambda x: 1 / 0, card, engine="fake", reference=exact)
    assert not crashed.passed and "error: division by zero" in crashed.reason
