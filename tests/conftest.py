"""Shared fixtures: small exported models (random weights), photos made from scikit-image's
bundled samples, and the optional ../shared data."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from paths import SHARED  # noqa: E402

#: a committed ONNX model for the runtime's tests where PyTorch is not installed (see
#: tests/fixtures/README.md for the command that made it)
TINY_ONNX = Path(__file__).parent / "fixtures" / "tiny.onnx"


def have_torch() -> bool:
    import importlib.util

    return importlib.util.find_spec("torch") is not None


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A random-weight ResNet-18 encoder (512-d, context attention) exported to ONNX; without
    PyTorch (the runtime-only test run) the committed 32-d ``tests/fixtures/tiny.onnx``."""
    if not have_torch():
        return TINY_ONNX
    from regatt_export.build import EncoderConfig, build_encoder
    from regatt_export.onnx_export import export_onnx

    out = tmp_path_factory.mktemp("models") / "tiny.onnx"
    enc, card = build_encoder(EncoderConfig(backbone="resnet18", weights="random", attention="context", max_side=256))
    export_onnx(enc, card, out, explain=True, sizes=(("portrait", 96, 64), ("landscape", 64, 96)))
    return out


def sample_photos() -> dict[str, np.ndarray]:
    """Real photos bundled with scikit-image, as BGR uint8."""
    from skimage import data

    photos = {}
    for name in ("astronaut", "coffee", "chelsea", "rocket", "camera", "hubble_deep_field"):
        img = getattr(data, name)()
        if img.ndim == 2:
            img = np.stack([img] * 3, axis=-1)
        photos[name] = np.ascontiguousarray(img[:, :, ::-1])
    return photos


@pytest.fixture(scope="session")
def photos() -> dict[str, np.ndarray]:
    return sample_photos()


@pytest.fixture(scope="session")
def photo_dir(tmp_path_factory, photos) -> Path:
    import cv2

    d = tmp_path_factory.mktemp("photos")
    for name, img in photos.items():
        cv2.imwrite(str(d / f"{name}.jpg"), img)
    return d


@pytest.fixture
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip("../shared is not present")
    return SHARED


@pytest.fixture(scope="session")
def pg_url() -> str:
    """The URL of a real PostgreSQL + pgvector server started for this test session."""
    import shutil
    import tempfile

    from pgserver import start_postgres

    # directly under the system temp dir: as root the server runs as another user, who must be
    # able to reach its data directory (pytest's own tmp dirs are private to root)
    data = Path(tempfile.mkdtemp(prefix="regatt-pg-"))
    try:
        server, url = start_postgres(data)
    except RuntimeError as exc:
        shutil.rmtree(data, ignore_errors=True)
        pytest.skip(str(exc))
    yield url
    server.cleanup()
    shutil.rmtree(data, ignore_errors=True)
