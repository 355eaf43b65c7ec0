"""Multi-scale descriptors: scale lists, the in-graph resize, export parity at untraced sizes,
INT8 of a multi-scale graph, and query-side scales through the Encoder (tiny random backbone)."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from regatt_sdk.card import golden_image
from regatt_sdk.scales import MIN_SCALED_SIDE, ScaleError, graph_factors, parse_scales, scaled_shape

torch = pytest.importorskip("torch")

TINY = "tiny-test-backbone"
#: none of these is the traced size (200x264); extreme ratios, odd and tiny sizes included
UNTRACED = (
    ("portrait", 130, 70),
    ("landscape", 70, 130),
    ("1:4", 40, 160),
    ("4:1", 160, 40),
    ("odd", 77, 123),
    ("tiny", 16, 16),
)


# -- scale lists ------------------------------------------------------------------------------
def test_parse_scales_accepts_numbers_and_names():
    assert parse_scales("1,1.5", 512) == (1.0, 1.5)
    assert parse_scales([1, "sqrt2"], 512) == (1.0, math.sqrt(2))
    assert parse_scales("1/sqrt2, 1", 512) == (1 / math.sqrt(2), 1.0)
    assert parse_scales(2, 512) == (2.0,)


@pytest.mark.parametrize(
    "spec,needle",
    [
        ("", "empty"),
        ([], "empty"),
        ("1,,2", "empty entry"),
        ("0", "must be > 0"),
        ("1,-0.5", "must be > 0"),
        ("big", "'big' is not a number"),
        ("nan", "not a finite number"),
        ("0.01", "below the network's minimum"),
        ("1,1", "repeats"),
    ],
)
def test_bad_scale_lists_name_the_input_and_the_fix(spec, needle):
    with pytest.raises(ScaleError, match=needle) as info:
        parse_scales(spec, 512, "--scales")
    msg = str(info.value)
    assert msg.startswith("--scales") and ("e.g." in msg or "use" in msg or "list each" in msg)


def test_smallest_scale_is_named():
    with pytest.raises(ScaleError, match=r"scales >= 0\.0312"):
        parse_scales("0.02", 512)
    assert parse_scales(str(MIN_SCALED_SIDE / 512), 512)


def run_main(args: list[str], capsys) -> tuple[int, str]:
    from regatt_sdk.cli.app import main

    with pytest.raises(SystemExit) as info:
        main(args)
    out, err = capsys.readouterr()
    return int(info.value.code or 0), out + err


def test_export_cli_refuses_bad_scales(tmp_path, capsys):
    out = tmp_path / "m.onnx"
    for bad, needle in (("0", "must be > 0"), ("", "empty"), ("1,x", "not a number"), ("0.01", "minimum")):
        code, text = run_main(["export", "--scales", bad, "-o", str(out)], capsys)
        assert code != 0 and needle in text and "--scales" in text, text
    code, text = run_main(["export", "--scales", "1,2", "--scale-aggregation", "mean", "-o", str(out)], capsys)
    assert code != 0 and "sum, regions" in text
    assert not out.exists()


# -- the graph --------------------------------------------------------------------------------
def _tiny_backbone(weights):
    torch.manual_seed(3)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, stride=4, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 16, 3, stride=4, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(16, 16, 3, stride=2, padding=1), torch.nn.ReLU(),
    ).eval()  # fmt: skip


@pytest.fixture(scope="module")
def tiny_backbone():
    from regatt_export.backbones import BACKBONES, BackboneSpec

    BACKBONES[TINY] = BackboneSpec(
        TINY, "BGR", (100.0, 110.0, 120.0), (1.0, 1.0, 1.0), 32, 16, _tiny_backbone, "test only", True
    )
    yield TINY
    del BACKBONES[TINY]


def _build(scales, aggregation="sum", attention="context"):
    from regatt_export.build import EncoderConfig, build_encoder

    return build_encoder(
        EncoderConfig(
            backbone=TINY,
            weights="random",
            attention=attention,
            scales=scales,
            scale_aggregation=aggregation,
            max_side=128,
        )
    )


def test_in_graph_sizes_follow_the_sdk_rule(tiny_backbone):
    """The multi-scale sum equals L2 of the one-scale descriptors at the SDK's sizes: the
    prepared input resized by ``s / max(scales)`` (the largest scale is the input as given)."""
    import torch.nn.functional as F

    from regatt_export.scales import bilinear_resize

    scales = (1 / math.sqrt(2), 1.0, 1.5)
    enc, _ = _build(scales)
    assert (
        enc.factors
        == tuple(float(np.float32(f)) for f in (1 / math.sqrt(2) / 1.5, 1 / 1.5, 1.0))
        == graph_factors(scales)
    )
    for h, w in ((77, 123), (128, 96), (16, 16), (33, 200)):
        image = torch.from_numpy(golden_image(h, w, 5)[None])
        with torch.no_grad():
            want = []
            for f in enc.factors:
                sh, sw = scaled_shape(h, w, f)
                x = enc.base.normalize_input(image)
                if f != 1.0:
                    resized = bilinear_resize(x, torch.tensor(sh), torch.tensor(sw))
                    assert resized.shape[2:] == (sh, sw)
                    ref = F.interpolate(x, size=(sh, sw), mode="bilinear", align_corners=False)
                    assert float((resized - ref).abs().max()) < 0.05  # the same interpolation, float rounding apart
                    x = resized
                feat = enc.base.backbone(x)
                hh, ww = torch.tensor(float(sh), dtype=torch.float64), torch.tensor(float(sw), dtype=torch.float64)
                want.append(enc.base.head(*enc.base.regional_boxes(enc.base.boxes_hw(hh, ww), feat))[0])
            g = torch.stack(want).sum(0)
            g = g / g.norm(dim=-1, keepdim=True)
            got = enc(image)
        assert float((got - g).abs().max()) < 1e-6


@pytest.mark.parametrize("aggregation", ["sum", "regions"])
def test_multiscale_export_parity_at_untraced_sizes(tiny_backbone, tmp_path, aggregation):
    from regatt_export.onnx_export import check_parity, export_onnx
    from regatt_sdk import Encoder

    enc, card = _build((1 / math.sqrt(2), 1.0, 1.5), aggregation)
    out = tmp_path / "ms.onnx"
    card, rows = export_onnx(enc, card, out, sizes=UNTRACED)
    assert all(r.ok and r.max_abs_diff <= 1e-5 for r in rows), rows
    more = check_parity(enc, out, sizes=(("wide", 33, 700), ("tall", 500, 20), ("square", 256, 256)))
    assert all(r.ok for r in more), more
    e = Encoder(out, device="cpu")
    assert e.card.scales == (1 / math.sqrt(2), 1.0, 1.5) and e.card.scale_aggregation == aggregation
    assert e.verify() <= 1e-5
    # the two aggregations and the single scale really differ
    single, _ = _build((1.0,))
    image = torch.from_numpy(golden_image(96, 128, 9)[None])
    with torch.no_grad():
        assert float((enc(image) - single(image)).abs().max()) > 1e-3


def test_factor_ties_size_the_same_in_pytorch_and_onnx(tiny_backbone, tmp_path):
    """1/sqrt2 / sqrt2 is 0.49999999999999994 in float64 but 0.5 as the graph's float32 constant:
    at 77x123 (123 * f on the .5 tie) PyTorch and onnxruntime must still pick the same size."""
    from regatt_export.onnx_export import check_parity, export_onnx

    assert all(float(np.float32(f)) == f for f in graph_factors((1 / math.sqrt(2), 1.0, math.sqrt(2))))
    enc, card = _build((1 / math.sqrt(2), 1.0, math.sqrt(2)), "regions")
    out = tmp_path / "ties.onnx"
    export_onnx(enc, card, out, sizes=UNTRACED)
    rows = check_parity(enc, out, sizes=(("odd", 77, 123), ("tie", 45, 123), ("tie-tall", 123, 61)))
    assert all(r.ok and r.max_abs_diff <= 1e-5 for r in rows), rows


def test_multiscale_efficientnet_export_has_every_scale_s_same_pads_as_auto_pad(tmp_path):
    """Each scale's copy of the backbone (the second one behind the in-graph resize) loses its
    dynamic TF-SAME Pads to Conv(auto_pad=SAME_UPPER); the edited graph matches PyTorch."""
    import onnx

    from regatt_export.build import EncoderConfig, build_encoder
    from regatt_export.onnx_export import export_onnx

    single, card1 = build_encoder(EncoderConfig(backbone="efficientnet-lite0", weights="random", max_side=128))
    enc, card = build_encoder(
        EncoderConfig(backbone="efficientnet-lite0", weights="random", max_side=128, scales=(1.0, 1 / math.sqrt(2)))
    )
    out1, out = tmp_path / "one.onnx", tmp_path / "ms.onnx"
    card1, _ = export_onnx(single, card1, out1, sizes=UNTRACED[:1])
    card, rows = export_onnx(enc, card, out, sizes=(UNTRACED[0], UNTRACED[4]))
    assert all(r.ok and r.max_abs_diff <= 1e-5 for r in rows), rows
    per_scale = card1.provenance["graph_edits"]["same_pads_as_auto_pad"]
    assert per_scale > 0 and card.provenance["graph_edits"]["same_pads_as_auto_pad"] == 2 * per_scale
    assert "Pad" not in {n.op_type for n in onnx.load(str(out)).graph.node}


def test_regions_aggregation_is_one_mean_over_all_regions(tiny_backbone):
    enc, _ = _build((1.0, 1.5), "regions")
    image = torch.from_numpy(golden_image(90, 120, 2)[None])
    with torch.no_grad():
        parts = enc.per_scale(image)
        terms = [enc.base.terms(*p) for p in parts]
        v = torch.cat([t[0] for t in terms], 1)
        phi = torch.cat([t[1] for t in terms], 1)
        g = (phi[..., None] * v).sum(1) / v.shape[1]
        g = g / g.amax(-1, keepdim=True)
        g = g / (g.norm(dim=-1, keepdim=True) + 1e-8)
        assert float((enc(image) - g).abs().max()) < 1e-6
        assert v.shape[1] == sum(p[0].shape[1] for p in parts) > parts[0][0].shape[1]


def test_explain_refuses_multiscale(tiny_backbone, tmp_path):
    from regatt_export.onnx_export import export_onnx

    enc, card = _build((1.0, 1.5))
    with pytest.raises(ValueError, match="--scales 1"):
        export_onnx(enc, card, tmp_path / "x.onnx", explain=True, sizes=UNTRACED[:1])


def test_int8_of_a_multiscale_model_quantizes_every_scale(tiny_backbone, tmp_path):
    pytest.importorskip("onnxruntime.quantization")
    import onnx

    from regatt_export.onnx_export import export_onnx
    from regatt_export.quantize import Int8Options, backbone_nodes, quantize_int8
    from regatt_sdk import Encoder

    enc, card = _build((1.0, 1.5), attention="none")
    fp32 = tmp_path / "ms.onnx"
    export_onnx(enc, card, fp32, sizes=UNTRACED[:2])
    body = backbone_nodes(onnx.load(str(fp32)))
    assert sum(n.op_type == "Conv" for n in body) == 6  # 3 convolutions per scale
    photos = tmp_path / "photos"
    photos.mkdir()
    for i, (h, w) in enumerate([(120, 160), (160, 120), (100, 100), (90, 200), (140, 140)]):
        cv2.imwrite(str(photos / f"p{i}.jpg"), golden_image(h, w, 40 + i))
    out = tmp_path / "ms.int8.onnx"
    card8, parity = quantize_int8(fp32, out, photos, Int8Options(count=3, holdout=2, min_cosine=0.5))
    assert parity.ok and card8.precision == "int8" and card8.scales == (1.0, 1.5)
    graph = onnx.load(str(out)).graph
    quantized_convs = [
        n
        for n in graph.node
        if n.op_type == "Conv" and any("DequantizeLinear" in i or "_dequantized" in i or "DQ" in i for i in n.input)
    ]
    assert sum(n.op_type == "DequantizeLinear" for n in graph.node) > 0
    del quantized_convs
    v = Encoder(out, device="cpu").encode(golden_image(100, 140, 1))
    assert v.shape == (16,) and abs(float(np.linalg.norm(v)) - 1) < 1e-5


# -- query-side scales ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_onnx(tiny_backbone, tmp_path_factory) -> Path:
    from regatt_export.onnx_export import export_onnx

    enc, card = _build((1.0,))
    out = tmp_path_factory.mktemp("tiny") / "one.onnx"
    export_onnx(enc, card, out, sizes=UNTRACED[:2])
    return out


def test_query_scales_through_the_encoder(tiny_onnx, tmp_path):
    from regatt_sdk import Encoder

    photo = golden_image(150, 200, 11)
    path = tmp_path / "q.png"
    cv2.imwrite(str(path), photo)
    plain = Encoder(tiny_onnx, device="cpu")
    assert plain.query_scales is None
    assert np.array_equal(plain.encode_query(str(path)), plain.encode(str(path)))
    enc = Encoder(tiny_onnx, device="cpu", query_scales="1.5")
    assert enc.query_scales == (1.5,)
    big = Encoder(tiny_onnx, device="cpu", max_side=192)  # round(1.5 * 128)
    np.testing.assert_allclose(enc.encode_query(str(path)), big.encode(str(path)), atol=1e-6)
    np.testing.assert_array_equal(enc.encode(str(path)), plain.encode(str(path)))  # the database side is unchanged
    two = Encoder(tiny_onnx, device="cpu", query_scales=(1.0, 1.5))
    g = plain.encode(str(path)) + big.encode(str(path))
    np.testing.assert_allclose(two.encode_query(str(path)), g / np.linalg.norm(g), atol=1e-6)
    # a box is cropped at the query's own size; lists work like encode
    box = (10, 20, 150, 140)
    np.testing.assert_allclose(enc.encode_query(str(path), roi=box), big.encode(str(path), roi=box), atol=1e-6)
    many = two.encode_query([str(path), photo], rois=[box, None])
    assert many.shape == (2, 16)
    np.testing.assert_allclose(many[1], two.encode_query(photo), atol=1e-6)
    with pytest.raises(ScaleError, match="query_scales"):
        Encoder(tiny_onnx, device="cpu", query_scales="0")


def test_search_cli_query_scales(tiny_onnx, tmp_path, capsys):
    imgs = tmp_path / "db"
    imgs.mkdir()
    for i in range(4):
        cv2.imwrite(str(imgs / f"im{i}.png"), golden_image(100 + 10 * i, 140, 20 + i))
    store = tmp_path / "store"
    code, text = run_main(["encode", str(tiny_onnx), str(imgs), "-o", str(store), "--device", "cpu"], capsys)
    assert code == 0, text
    code, text = run_main(
        [
            "search",
            str(tiny_onnx),
            str(store),
            str(imgs / "im2.png"),
            "--query-scales",
            "1,1.5",
            "--device",
            "cpu",
            "-k",
            "2",
        ],
        capsys,
    )
    assert code == 0, text
    assert "im2.png" in [ln for ln in text.splitlines() if ln.strip().startswith("1 ")][0]
    code, text = run_main(
        ["search", str(tiny_onnx), str(store), str(imgs / "im2.png"), "--query-scales", "-1", "--device", "cpu"], capsys
    )
    assert code != 0 and "query_scales" in text and "> 0" in text


def test_eval_cli_reports_both_query_sides(tiny_onnx, tmp_path, capsys):
    import json

    from test_search import make_group_folder

    photos = make_group_folder(tmp_path / "photos")
    out_json = tmp_path / "eval.json"
    code, text = run_main(["eval", str(tiny_onnx), "--dataset", "generic", "--root", str(photos), "--store", str(tmp_path / "store"),
                           "--json", str(out_json), "--query-scales", "1.5", "--no-progress", "--device", "cpu"], capsys)  # fmt: skip
    assert code == 0, text
    assert "queries at scales 1.5 of S=128" in text
    res = json.loads(out_json.read_text())
    assert res["query_scales"] == [1.5] and 0 <= res["map_query_scales"] <= 100 and 0 <= res["map"] <= 100
    assert res["results_query_scales"] != res["results"] or res["map_query_scales"] == res["map"]


# -- a scale > 1 sees the photo's own pixels ---------------------------------------------------
def _fine_photo(height: int, width: int, seed: int) -> np.ndarray:
    """A photo whose detail (1-px stripes, per-pixel noise) upsampling an S-sized copy loses."""
    yy, xx = np.mgrid[0:height, 0:width]
    stripes = np.where((xx + 2 * yy) % 3 == 0, 90, -90)[..., None]
    return np.clip(golden_image(height, width, seed).astype(np.int32) + stripes, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def upscale_models(tiny_backbone, tmp_path_factory):
    """``(multi, base)``: scales 1,1.5 at S=128 (uint8 input) and its own one-scale base exported
    with a float32 input (so a reference can feed it an exact float resize)."""
    from dataclasses import replace

    from regatt_export.onnx_export import export_onnx

    enc, card = _build((1.0, 1.5))
    root = tmp_path_factory.mktemp("upscale")
    multi, base = root / "ms.onnx", root / "base-f32.onnx"
    card, rows = export_onnx(enc, card, multi, sizes=UNTRACED + (("fed 192x144", 192, 144),))
    assert all(r.ok and r.max_abs_diff <= 1e-5 for r in rows), rows
    one = replace(card, scales=(1.0,), scale_aggregation="sum", input_side=None, golden=None)
    export_onnx(enc.base, one, base, input_dtype="float32", sizes=UNTRACED[:2])
    return multi, base


def test_scale_above_one_describes_the_original_pixels(upscale_models):
    """Through the Encoder, a 1,1.5 model on a photo larger than S equals L2 of the sum of the
    one-scale unit descriptors of the photo prepared at round(1.5 S) from its own pixels and of
    that input resized by 1/1.5 (to round(S)): not of an upsampled S-sized copy."""
    from regatt_sdk import Encoder
    from regatt_sdk.preprocess import prepare

    multi, base = upscale_models
    photo = _fine_photo(300, 400, 4)
    got = Encoder(multi, device="cpu").encode(photo)
    one = Encoder(base, device="cpu")
    fed = prepare(photo, 192).astype(np.float32)  # round(1.5 * 128), from the original pixels
    assert fed.shape == (144, 192, 3)
    h, w = scaled_shape(144, 192, 1 / 1.5)
    assert (h, w) == (96, 128)  # scale 1 lands at S
    at_s = cv2.resize(fed, (w, h), interpolation=cv2.INTER_LINEAR)  # half-pixel bilinear, no antialias
    g = one.encode_prepared(at_s[None])[0] + one.encode_prepared(fed[None])[0]
    want = g / np.linalg.norm(g)
    np.testing.assert_allclose(got, want, atol=2e-5)
    # the scale-1.5 term really is the original pixels: upsampling the S-sized photo differs
    up = cv2.resize(prepare(photo, 128).astype(np.float32), (192, 144), interpolation=cv2.INTER_LINEAR)
    g_up = one.encode_prepared(at_s[None])[0] + one.encode_prepared(up[None])[0]
    assert float(np.abs(g_up / np.linalg.norm(g_up) - want).max()) > 1e-3


def test_card_and_prepare_side_of_a_scale_above_one(upscale_models):
    from regatt_sdk import Encoder
    from regatt_sdk.card import ModelCard

    multi, _ = upscale_models
    e = Encoder(multi, device="cpu")
    card = e.card
    assert (card.max_side, card.scales, card.input_side, card.prepare_side) == (128, (1.0, 1.5), 192, 192)
    assert (e.max_side, e.prepare_side) == (128, 192) and "prepare_side=192" in repr(e)
    photo = _fine_photo(300, 400, 6)
    assert e.load(photo).shape == (144, 192, 3)
    other = Encoder(multi, device="cpu", max_side=100)  # S overridden: fed round(1.5 * 100)
    assert (other.max_side, other.prepare_side) == (100, 150) and other.load(photo).shape[:2] == (112, 150)
    np.testing.assert_allclose(e.encode(photo, max_side=100), other.encode(photo), atol=1e-6)
    # query scales multiply the fed side, so every graph scale moves with them (q * s * S)
    q = Encoder(multi, device="cpu", query_scales="1.5")
    np.testing.assert_allclose(q.encode_query(photo), e.encode(photo, max_side=192), atol=1e-6)
    assert Encoder(multi, device="cpu", max_side=288).prepare_side == 288 * 3 // 2
    # a card without the field (older exports) is prepared at S; its JSON never gains the key
    old = ModelCard.from_json(card.to_json().replace('"input_side": 192, ', ""))
    assert old.input_side is None and old.prepare_side == 128 and old.prepare_side_for(100) == 100
    assert "input_side" not in old.to_json() and '"input_side": 192' in card.to_json()


@pytest.mark.parametrize("scales", [(1.0, 1 / math.sqrt(2)), (0.5, 0.75)])
def test_scales_up_to_one_keep_the_input_at_s(tiny_backbone, tmp_path, scales):
    """Scales <= 1: prepared at S, factors are the scales (as float32), no input_side on the card."""
    from regatt_export.onnx_export import export_onnx
    from regatt_sdk import Encoder
    from regatt_sdk.preprocess import prepare

    enc, card = _build(scales)
    assert enc.factors == graph_factors(scales) == tuple(float(np.float32(s)) for s in scales)
    assert card.input_side is None and "input_side" not in card.to_json()
    out = tmp_path / "down.onnx"
    card, rows = export_onnx(enc, card, out, sizes=UNTRACED[:3])
    assert all(r.ok for r in rows), rows
    e = Encoder(out, device="cpu")
    assert e.prepare_side == e.max_side == 128
    photo = _fine_photo(300, 400, 8)
    fed = prepare(photo, 128)
    assert e.load(photo).shape == fed.shape
    with torch.no_grad():
        want = enc(torch.from_numpy(fed[None])).numpy()[0]
    np.testing.assert_allclose(e.encode(photo), want, atol=1e-5)


def test_store_encodes_a_scale_above_one_at_the_fed_side(upscale_models, tmp_path):
    """encode_to_store prepares at the Encoder's prepare_side (the manifest keeps S)."""
    from regatt_sdk import Encoder
    from regatt_sdk.pipeline import encode_to_store
    from regatt_sdk.store import FeatureStore, load_features

    multi, _ = upscale_models
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(2):
        cv2.imwrite(str(photos / f"p{i}.png"), _fine_photo(300 + 20 * i, 400, 10 + i))
    e = Encoder(multi, device="cpu")
    encode_to_store(e, [photos], tmp_path / "store", progress=False)
    names, vectors = load_features(tmp_path / "store")
    want = e.encode([str(photos / n) for n in names])
    np.testing.assert_allclose(vectors, want, atol=1e-6)
    assert FeatureStore.open(tmp_path / "store").manifest["model"]["max_side"] == 128
