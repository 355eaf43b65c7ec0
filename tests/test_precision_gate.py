"""The retrieval-level gate, ``precision="auto"`` and the SDK's own onnxruntime sessions (issue 24).

Torch-free (the runtime's tests): the tiny fixture, the photos shipped in the package; the
OpenVINO parts skip where it is not installed. No timing assertions: the speed of engines side
by side is ``benchmarks/side_by_side.py``'s; here the mechanism (reference sessions made without
spinning and closed after use).
"""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest

from regatt_sdk.card import read_card
from regatt_sdk.compose import EncoderOptions, OptionError
from regatt_sdk.engines import choose, retrieval
from regatt_sdk.engines.ort import SPIN_KEY, OrtEngine, import_ort, session_options, spins
from regatt_sdk.errors import ModelError


@pytest.fixture()
def engine_cache(tmp_path, monkeypatch):
    path = tmp_path / "engines.json"
    monkeypatch.setenv("REGATT_ENGINE_CACHE", str(path))
    return path


@pytest.fixture()
def ov():
    return pytest.importorskip("openvino")


def _live_ort() -> set[int]:
    return {id(o) for o in gc.get_objects() if type(o) is OrtEngine and o.session is not None}


def _run(engine, card):
    return lambda x: engine.run(x, [card.output_name])[card.output_name]


def test_photo_set_ships_with_the_package_one_shape_known_transformations():
    images, groups, labels = retrieval.photo_set()
    assert len(images) == 8 * (1 + len(retrieval.TRANSFORMS)) == len(groups) == len(labels)
    assert {im.shape for im in images} == {(192, 256, 3)} and all(im.dtype == np.uint8 for im in images)
    assert sorted(set(groups)) == list(range(8)) and labels[1].endswith("/" + retrieval.TRANSFORMS[0])
    base = images[0]
    for kind in retrieval.TRANSFORMS:  # each transformation changes the photo, deterministically
        out = retrieval.transform(base, kind)
        assert out.shape == base.shape and np.abs(out.astype(int) - base).mean() > 2
        assert np.array_equal(out, retrieval.transform(base, kind))
    with pytest.raises(ValueError, match="unknown transformation"):
        retrieval.transform(base, "rotate")


def test_judge_passes_the_reference_and_says_which_check_failed_by_how_much():
    groups = retrieval.photo_set()[1]
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((8, 64))
    ref = np.stack([centres[g] + 0.3 * rng.standard_normal(64) for g in groups]).astype(np.float32)
    same = retrieval.judge(ref, ref, groups, engine="fake", precision="bf16")
    assert same.passed and same.top10_mean == 1.0 and same.map_delta == 0.0 and "ranks 40 photos" in same.reason
    scrambled = rng.standard_normal(ref.shape).astype(np.float32)  # no relation to the photos
    bad = retrieval.judge(scrambled, ref, groups, engine="fake", precision="bf16")
    assert not bad.passed and bad.top10_mean < retrieval.MIN_TOP10 and bad.map_delta < -retrieval.MAX_MAP_DROP
    assert "refused by the retrieval gate: top-10 agreement" in bad.reason and "short by" in bad.reason
    assert "copies mAP" in bad.reason and "beyond the -1 allowed by" in bad.reason
    nan = retrieval.judge(ref * np.nan, ref, groups, engine="fake", precision="bf16")
    assert not nan.passed and "not finite" in nan.reason


def test_copies_map_and_top_agreement_by_hand():
    groups = [0, 0, 1, 1]
    v = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9]], np.float32)
    assert retrieval.copies_map(v, groups) == pytest.approx(100.0)
    swapped = np.array([[1, 0], [0, 1], [0.9, 0.1], [0.1, 0.9]], np.float32)  # rows 1 and 2 swap photos
    assert retrieval.copies_map(swapped, groups) < 100.0
    assert retrieval.top_agreement(v, v, k=1).tolist() == [1.0] * 4
    assert retrieval.top_agreement(swapped, v, k=1).mean() < 1.0


def test_retrieval_check_on_the_tiny_model(tiny_model):
    card = read_card(tiny_model)
    ort = OrtEngine(tiny_model, "cpu", threads=1)
    ref = retrieval.describe(_run(ort, card), card)
    assert ref.shape == (40, card.dim)
    ok = retrieval.check(_run(ort, card), ref, card, engine="onnxruntime", precision="fp32")
    assert ok.passed and ok.top10_mean == 1.0 and ok.map_delta == 0.0 and 0 < ok.map_reference <= 100
    crashed = retrieval.check(lambda x: 1 / 0, ref, card, engine="fake", precision="bf16")
    assert not crashed.passed and "error: division by zero" in crashed.reason


def test_reference_model_finds_the_fp32_source_beside_a_variant(tiny_model, tmp_path):
    import shutil
    from dataclasses import replace

    card = read_card(tiny_model)
    assert retrieval.reference_model(tiny_model, card) == (tiny_model, "onnxruntime fp32")
    shutil.copy(tiny_model, tmp_path / "model.onnx")
    variant = replace(card, precision="int8", golden=None, provenance={**card.provenance, "quantization": {"x": 1}})
    assert retrieval.family(variant) == retrieval.family(card)
    fake = tmp_path / "model-int8.onnx"
    fake.write_bytes(b"")  # only its card matters here: passed in
    assert retrieval.reference_model(fake, variant) == (tmp_path / "model.onnx", "onnxruntime fp32 on model.onnx")
    flipped = replace(variant, golden=replace(card.golden, vector=[-v for v in card.golden.vector]))
    assert retrieval.reference_model(fake, flipped)[0] is None  # same card, other weights
    other = replace(variant, dim=card.dim + 1)
    path, label = retrieval.reference_model(fake, other)
    assert path is None and "no fp32 source beside it" in label


def test_a_named_engine_is_retrieval_gated_and_says_so(tiny_model, engine_cache):
    from regatt_sdk.encoder import Encoder

    enc = Encoder(tiny_model, engine="onnxruntime", threads=1)
    (ranked,) = enc.choice.retrieval
    assert ranked.passed and "is the reference" in ranked.reason
    assert "retrieval|" in engine_cache.read_text()  # the verdict is cached with the model and machine
    again = Encoder(tiny_model, engine="onnxruntime", threads=1)
    assert again.choice.retrieval[0].reason.endswith("(cached)")


def test_a_variant_that_ranks_differently_is_refused_with_the_numbers(tiny_model, ov, engine_cache, monkeypatch):
    from regatt_sdk.encoder import Encoder

    monkeypatch.setattr(retrieval, "MIN_TOP10", 1.01)  # no variant but the reference itself can meet it
    with pytest.raises(
        ModelError, match=r"openvino fp32 refused by the retrieval gate: top-10 agreement 1\.000 < 1\.01"
    ):
        Encoder(tiny_model, engine="openvino", threads=1)
    monkeypatch.setattr(retrieval, "MIN_TOP10", 0.85)
    engine_cache.unlink()
    enc = Encoder(tiny_model, engine="openvino", threads=1)
    assert enc.choice.retrieval[0].passed and "ranks 40 photos as onnxruntime fp32" in enc.choice.reason
    # the gate ran the set on the dynamic graph: no static-graph slot (nor compile) spent on its shape
    assert enc.engine.shapes == "auto" and enc.engine.describe()["compiled_shapes"] == 0


def test_reference_sessions_do_not_spin_and_are_closed_after_the_gate(tiny_model, ov, engine_cache, monkeypatch):
    from regatt_sdk.encoder import Encoder
    from regatt_sdk.engines import ort

    made: list[tuple[weakref.ref, bool]] = []
    real = choose.reference_engine

    def spy(model, threads):
        engine = real(model, threads)
        made.append((weakref.ref(engine), spins(engine.session)))
        return engine

    monkeypatch.setattr(choose, "reference_engine", spy)
    monkeypatch.setattr(choose, "_REFERENCE", {})  # the retrieval gate's reference runs again

    gc.collect()
    before = _live_ort()
    enc = Encoder(tiny_model, engine="openvino", threads=1)
    gc.collect()
    assert len(made) >= 2  # the descriptor gate's and the retrieval gate's references
    assert [s for _, s in made] == [False] * len(made)  # none spins
    assert all(r() is None or r().session is None for r, _ in made)  # all released
    assert _live_ort() - before == set()  # nothing of onnxruntime stays alive beside the OpenVINO encoder
    own = Encoder(tiny_model, engine="onnxruntime", threads=1)
    assert own.engine.spinning is ort.ENCODER_SPINNING and own.engine.describe()["spinning"] is ort.ENCODER_SPINNING
    assert enc.engine.name == "openvino"


def test_spinning_reaches_the_session_options():
    rt = import_ort()
    assert spins(session_options(rt, 1))  # onnxruntime's default
    assert not spins(session_options(rt, 1, spinning=False))
    assert session_options(rt, 1, spinning=False).get_session_config_entry(SPIN_KEY) == "0"
    assert spins(session_options(rt, 1, spinning=True))


def test_a_closed_engine_refuses_to_run(tiny_model):
    engine = OrtEngine(tiny_model, "cpu", threads=1)
    engine.close()
    with pytest.raises(ModelError, match="closed"):
        engine.run(np.zeros((1, 32, 32, 3), np.uint8))


def test_precision_auto_is_an_option_everywhere():
    assert EncoderOptions(precision="auto").precision == "auto"
    with pytest.raises(OptionError, match="auto, fp32, bf16"):
        EncoderOptions(precision="int4")


def test_precision_auto_picks_the_fastest_variant_that_passes_and_caches(tiny_model, ov, engine_cache, monkeypatch):
    from regatt_sdk.encoder import Encoder

    monkeypatch.setattr(choose, "cpu_info", lambda: ("test CPU", {"avx512f", "avx512_bf16", "amx_bf16"}))
    monkeypatch.setattr("regatt_sdk.engines.openvino.cpu_supports", lambda precision, target="CPU": True)
    gc.collect()
    before = _live_ort()
    first = Encoder(tiny_model, engine="auto", precision="auto", threads=1)
    gc.collect()  # the probe's losers and the gates' references are released: only the chosen engine lives
    assert _live_ort() - before <= ({id(first.engine)} if first.choice.engine == "onnxruntime" else set())
    assert (first.choice.engine, first.choice.precision) in {
        ("onnxruntime", "fp32"), ("openvino", "fp32"), ("openvino", "bf16"),
    }  # fmt: skip
    assert "fastest variant that passes the retrieval gate" in first.choice.reason
    assert "bf16 units: amx_bf16, avx512_bf16" in first.choice.reason
    assert set(first.choice.probe_ms) | {k for k in first.choice.reason.split("; refused: ")[1:]} >= {
        "onnxruntime fp32", "openvino fp32",
    }  # fmt: skip
    assert all(r.passed for r in first.choice.retrieval if f"{r.engine} {r.precision}" in first.choice.probe_ms)
    again = Encoder(tiny_model, engine="auto", precision="auto", threads=1)
    assert again.choice.cached and (again.choice.engine, again.choice.precision) == (
        first.choice.engine,
        first.choice.precision,
    )


def test_precision_auto_falls_back_to_the_exact_engines_without_bf16_flags(tiny_model, engine_cache, monkeypatch):
    from regatt_sdk.encoder import Encoder

    monkeypatch.setattr(choose, "cpu_info", lambda: ("test CPU", {"avx2", "fma", "avx512f", "avx512_vnni"}))
    enc = Encoder(tiny_model, engine="auto", precision="auto", threads=1)
    assert enc.choice.precision == "fp32" and enc.choice.engine in choose.ENGINES
    assert enc.choice.reason.startswith("precision auto -> fp32: this CPU has no bf16 unit (no amx_bf16 / avx512_bf16")
    assert "fastest gated engine" in enc.choice.reason
    no_engine = Encoder(tiny_model, precision="auto", threads=1)  # no engine named: every CPU engine competes
    assert no_engine.choice.precision == "fp32" and "no bf16 unit" in no_engine.choice.reason
    assert "fastest gated engine" in no_engine.choice.reason


def test_precision_auto_on_onnxruntime_says_it_has_no_bf16(tiny_model, engine_cache, monkeypatch):
    from regatt_sdk.encoder import Encoder

    monkeypatch.setattr(choose, "cpu_info", lambda: ("test CPU", {"avx512_bf16"}))
    enc = Encoder(tiny_model, engine="onnxruntime", precision="auto", threads=1)
    assert enc.choice.precision == "fp32" and "onnxruntime computes no bf16 on CPU" in enc.choice.reason
    assert choose.bf16_units({"avx512_bf16", "amx_tile"}) == ["avx512_bf16"]
    assert choose.bf16_units(set()) == []


def test_cli_precision_auto_says_what_it_chose(tiny_model, photo_dir, tmp_path, engine_cache, monkeypatch, capsys):
    from regatt_sdk.cli.app import main

    monkeypatch.setattr(choose, "cpu_info", lambda: ("test CPU", {"avx2", "fma"}))
    with pytest.raises(SystemExit) as info:
        main(["encode", str(tiny_model), str(photo_dir), "-o", str(tmp_path / "store"), "--precision", "auto"])
    assert int(info.value.code or 0) == 0
    err = capsys.readouterr().err
    assert "engine: precision auto -> fp32: this CPU has no bf16 unit" in err


def test_verify_judges_a_bf16_variant_by_the_gates_cosine(tiny_model, ov, engine_cache):
    from regatt_sdk.encoder import Encoder
    from regatt_sdk.engines.openvino import cpu_supports

    if not cpu_supports("bf16"):
        pytest.skip("no BF16 on this CPU")
    enc = Encoder(tiny_model, engine="openvino", precision="bf16", threads=1)
    assert enc.verify() >= 0.0  # the server's golden check: cosine >= 0.99, not the exact bound
    exact = Encoder(tiny_model, engine="openvino", threads=1)
    assert exact.verify() <= 1e-4
