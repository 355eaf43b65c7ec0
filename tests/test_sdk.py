"""The torch-free runtime: imports, preprocessing rules, Encoder behaviour, bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from regatt_sdk import Encoder
from regatt_sdk.errors import ImageError, ModelError
from regatt_sdk.preprocess import prepare, resized_shape, scale_box

ROOT = Path(__file__).resolve().parents[1]


def run_py(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_sdk_never_imports_torch(tiny_model):
    code = (
        "import sys, numpy as np\n"
        "import regatt_sdk\n"
        "from regatt_sdk import Encoder, load_features\n"
        "from regatt_sdk import index, evaluation, expansion, datasets, store, pipeline, preprocess, imageio\n"
        "from regatt_sdk.cli.app import build\n"
        "build()\n"
        "import importlib.util\n"
        "for m in ('regatt_sdk.serve.app', 'regatt_sdk.index.pgvector'):\n"
        "    if importlib.util.find_spec(m.split('.')[-1] == 'app' and 'fastapi' or 'psycopg'):\n"
        "        importlib.import_module(m)\n"
        f"e = Encoder({str(tiny_model)!r})\n"
        "e.encode(np.zeros((40, 60, 3), np.uint8))\n"
        # the export package's CLI registration modules (entry points) are torch-free and allowed
        "allowed = ('regatt_export', 'regatt_export.cli') + tuple(f'regatt_export.cli.{m}' for m in ('export_cmd', 'train_cmd', 'whiten_cmd', 'backbone_opts', 'lazy'))\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision', 'timm', 'regatt_export') and m not in allowed]\n"
        "print('BAD', bad)\n"
    )
    assert run_py(code).strip() == "BAD []"


def test_version_is_instant_and_torch_free():
    code = "import sys\nfrom regatt_sdk.cli.app import main\nmain(['--version'])\nprint([m for m in sys.modules if m.startswith(('torch', 'onnxruntime'))])"
    out = run_py(code)
    assert "regatt 0.1.0" in out and out.strip().endswith("[]")


def test_resized_shape_rounds_half_to_even():
    assert resized_shape(768, 1024, 1024) == (768, 1024)
    assert resized_shape(600, 400, 1024) == (1024, 683)  # 682.67
    # 5 * 1024 / 2048 = 2.5 -> 2 (half to even), 7 * 1024 / 2048 = 3.5 -> 4
    assert resized_shape(5, 2048, 1024) == (2, 1024)
    assert resized_shape(7, 2048, 1024) == (4, 1024)
    assert resized_shape(10, 10, 1024) == (1024, 1024)  # upscaled too


def test_query_box_float32_ratio_and_crop():
    assert scale_box((100.5, 40, 500.25, 300), 400, 600, 512) == (86, 34, 427, 256)
    img = np.arange(400 * 600 * 3, dtype=np.uint8).reshape(400, 600, 3)
    out = prepare(img, 512, (100.5, 40, 500.25, 300))
    assert out.shape == (256 - 34, 427 - 86, 3)
    with pytest.raises(ValueError, match="leaves no pixels"):
        prepare(img, 512, (300, 300, 300, 310))


def test_encode_single_list_and_order(tiny_model, photo_dir, photos):
    enc = Encoder(tiny_model)
    paths = sorted(photo_dir.glob("*.jpg"))
    single = np.stack([enc.encode(p) for p in paths])
    batched = enc.encode(paths + paths[:2], batch_size=3)
    np.testing.assert_allclose(batched[: len(paths)], single, atol=1e-5)
    np.testing.assert_allclose(batched[len(paths) :], single[:2], atol=1e-5)
    arr = enc.encode(cv2.imread(str(paths[0])))
    np.testing.assert_allclose(arr, single[0], atol=1e-6)
    assert single.shape == (len(paths), enc.dim) and single.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(single, axis=1), 1.0, atol=1e-5)
    # a crop of the photo is closer to the photo than other photos are
    box = (60, 40, 420, 300)
    q = enc.encode(paths[0], roi=box)
    assert q.shape == (enc.dim,)


def test_gray_rgba_and_uint16_arrays(tiny_model, photos):
    enc = Encoder(tiny_model)
    bgr = photos["coffee"]
    gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    np.testing.assert_allclose(enc.encode(gray), enc.encode(cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)), atol=1e-6)
    rgba = cv2.cvtColor(bgr, cv2.COLOR_BGR2BGRA)
    np.testing.assert_allclose(enc.encode(rgba), enc.encode(bgr), atol=1e-6)
    deep = bgr.astype(np.uint16) * 257
    np.testing.assert_allclose(enc.encode(deep), enc.encode(bgr), atol=1e-6)
    with pytest.raises(ImageError, match="float64"):
        enc.encode(bgr.astype(np.float64))


def test_explain_outputs(tiny_model, photos):
    enc = Encoder(tiny_model)
    out = enc.explain(photos["chelsea"])
    assert out["boxes"].shape[1] == 4 and len(out["boxes"]) == len(out["weights"]) == 70
    np.testing.assert_allclose(out["descriptor"], enc.encode(photos["chelsea"]), atol=1e-6)
    assert (out["weights"] >= 0).all()


def test_bad_models(tmp_path, tiny_model):
    with pytest.raises(ModelError, match="not found"):
        Encoder(tmp_path / "missing.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"this is not a protobuf" * 10)
    with pytest.raises(ModelError, match="junk.onnx"):
        Encoder(junk)
    truncated = tmp_path / "trunc.onnx"
    truncated.write_bytes(Path(tiny_model).read_bytes()[:100_000])
    with pytest.raises(ModelError, match="trunc.onnx"):
        Encoder(truncated)
    from regatt_sdk.bench.onnx_proto import matmul_model

    nocard = tmp_path / "nocard.onnx"  # a valid ONNX graph without a card (no onnx package needed)
    nocard.write_bytes(matmul_model(2, 2, 2))
    with pytest.raises(ModelError, match="no regatt model card"):
        Encoder(nocard)


def test_bad_images(tiny_model, tmp_path):
    enc = Encoder(tiny_model)
    with pytest.raises(ImageError, match="missing.jpg"):
        enc.encode(tmp_path / "missing.jpg")
    txt = tmp_path / "notes.jpg"
    txt.write_text("hello")
    with pytest.raises(ImageError, match="notes.jpg"):
        enc.encode(txt)
