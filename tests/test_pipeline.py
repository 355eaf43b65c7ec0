"""Folder encoding with a fake encoder: bad files reported, nothing lost, resume exact."""

from __future__ import annotations

import io
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data

from regatt_sdk.imageio import read_image
from regatt_sdk.pipeline import EncodeReport, encode_to_store
from regatt_sdk.preprocess import prepare
from regatt_sdk.sources import SourceError, SourceItem, check_specs, iter_sources
from regatt_sdk.store import FeatureStore, StoreError, load_features


@dataclass(frozen=True)
class FakeCard:
    hash: str = "fake-card-0001"
    dim: int = 8
    max_side: int = 48
    backbone: str = "fake"


class FakeEncoder:
    """Same attributes as regatt_sdk.encoder.Encoder; descriptors from simple image statistics.

    ``encode_prepared`` raises ValueError for a batch holding a solid-13 image ("poison") and
    KeyboardInterrupt on call number ``interrupt_at`` (to simulate Ctrl-C).
    """

    def __init__(self, max_side: int = 48, card_hash: str = "fake-card-0001", dim: int = 8):
        self.card = FakeCard(hash=card_hash, dim=dim, max_side=max_side)
        self.dim = dim
        self.max_side = max_side
        self.calls: list[tuple[int, ...]] = []
        self.interrupt_at: int | None = None

    def encode_prepared(self, batch: np.ndarray) -> np.ndarray:
        assert batch.dtype == np.uint8 and batch.ndim == 4 and batch.shape[3] == 3
        self.calls.append(batch.shape)
        if self.interrupt_at is not None and len(self.calls) >= self.interrupt_at:
            raise KeyboardInterrupt
        x = batch.astype(np.float32)
        if np.any(np.all(batch.reshape(len(batch), -1) == 13, axis=1)):
            raise ValueError("poison")
        feats = [x.mean(axis=(1, 2)), x.std(axis=(1, 2))]
        shape = np.tile(np.array(batch.shape[1:3], np.float32), (len(batch), 1))
        out = np.concatenate(feats + [shape], axis=1)[:, : self.dim] + 1.0
        return (out / np.linalg.norm(out, axis=1, keepdims=True)).astype(np.float32)


def small_photos() -> list[np.ndarray]:
    """Six small real BGR photos from scikit-image, various sizes."""
    sources = [
        skimage.data.astronaut(), skimage.data.chelsea(), skimage.data.coffee(),
        skimage.data.rocket(), skimage.data.hubble_deep_field(), skimage.data.immunohistochemistry(),
    ]  # fmt: skip
    sizes = [(64, 64), (60, 90), (80, 53), (70, 70), (50, 75), (40, 64)]
    return [cv2.resize(cv2.cvtColor(s, cv2.COLOR_RGB2BGR), (w, h)) for s, (h, w) in zip(sources, sizes)]


def _png_bomb(size: int = 30000) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    body = zlib.compress(bytes(1 + 3 * size) * 16, 9)
    ihdr = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def make_mixed_folder(root: Path) -> tuple[list[str], dict[str, str]]:
    """Good photos plus tricky and broken files under ``root``.

    Returns the paths expected in the store (walk order) and ``{broken path: reason part}``.
    """
    from PIL import Image

    imgs = small_photos()
    (root / "sub").mkdir(parents=True)
    good: dict[str, bytes] = {
        "a_astronaut.jpg": cv2.imencode(".jpg", imgs[0])[1].tobytes(),
        "b_chelsea.png": cv2.imencode(".png", imgs[1])[1].tobytes(),
        "sub/c_coffee.webp": cv2.imencode(".webp", imgs[2])[1].tobytes(),
        "sub/d_rocket.bmp": cv2.imencode(".bmp", imgs[3])[1].tobytes(),
        "e_gray.png": cv2.imencode(".png", cv2.cvtColor(imgs[4], cv2.COLOR_BGR2GRAY))[1].tobytes(),
        "f_wide16.png": cv2.imencode(".png", imgs[5].astype(np.uint16) * 257)[1].tobytes(),
        "g_rgba.png": cv2.imencode(".png", cv2.cvtColor(imgs[0], cv2.COLOR_BGR2BGRA))[1].tobytes(),
        "h_progressive.jpg": cv2.imencode(".jpg", imgs[1], [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1].tobytes(),
        "i_upper.JPG": cv2.imencode(".jpg", imgs[2])[1].tobytes(),
    }  # fmt: skip
    buf = io.BytesIO()
    Image.fromarray(imgs[3][:, :, ::-1]).convert("CMYK").save(buf, "JPEG")
    good["j_cmyk.jpg"] = buf.getvalue()
    buf = io.BytesIO()
    frames = [Image.fromarray(im[:40, :40, ::-1]) for im in imgs[:3]]
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    good["k_animated.gif"] = buf.getvalue()
    for name, data in good.items():
        (root / name).write_bytes(data)

    jpeg = good["a_astronaut.jpg"]
    broken: dict[str, str] = {
        "bad_empty.jpg": "file is empty",
        "bad_truncated.jpg": "truncated JPEG",
        "bad_text.jpg": "holds text",
        "bad_one_pixel.png": "smaller than the minimum side",
        "bad_bomb.png": "megapixels",
        "bad_random.png": "corrupt or truncated PNG",
        "bad_dir.jpg": "is a directory",
        "bad_fifo.jpg": "FIFO",
        "bad_loop.jpg": "symlink loop",
        "bad_broken_link.jpg": "not found",
        "sub/back": "symlink loop",
    }
    (root / "bad_empty.jpg").write_bytes(b"")
    (root / "bad_truncated.jpg").write_bytes(jpeg[: len(jpeg) * 2 // 3])
    (root / "bad_text.jpg").write_text("this is a shopping list, not a photo\n")
    (root / "bad_one_pixel.png").write_bytes(cv2.imencode(".png", imgs[0][:1, :1])[1].tobytes())
    (root / "bad_bomb.png").write_bytes(_png_bomb())
    png = good["b_chelsea.png"]
    (root / "bad_random.png").write_bytes(png[:33] + np.random.default_rng(0).bytes(len(png) - 33))
    (root / "bad_dir.jpg").mkdir()
    os.mkfifo(root / "bad_fifo.jpg")
    (root / "bad_loop.jpg").symlink_to("bad_loop.jpg")
    (root / "bad_broken_link.jpg").symlink_to("nowhere.jpg")
    (root / "sub" / "back").symlink_to("..")  # a folder loop
    (root / "notes.txt").write_text("not an image extension: ignored")
    (root / ".hidden.jpg").write_bytes(b"hidden files are skipped")
    order = sorted(good, key=lambda n: n.split("/"))
    return [os.path.normpath(os.path.join(root, n)) for n in order], {
        os.path.normpath(os.path.join(root, n)): r for n, r in broken.items()
    }


def expected_vectors(encoder: FakeEncoder, paths: list[str]) -> np.ndarray:
    return np.concatenate([encoder.encode_prepared(prepare(read_image(p), encoder.max_side)[None]) for p in paths])


def test_mixed_folder_encodes_good_and_lists_bad(tmp_path: Path) -> None:
    good, broken = make_mixed_folder(tmp_path / "photos")
    encoder = FakeEncoder()
    report = encode_to_store(encoder, [tmp_path / "photos"], tmp_path / "store", progress=False)
    assert isinstance(report, EncodeReport)
    names, vectors = load_features(tmp_path / "store")
    assert names == good
    np.testing.assert_allclose(vectors, expected_vectors(FakeEncoder(), good), atol=1e-6)
    reasons = {f.name: f.reason for f in report.failures}
    assert set(reasons) == set(broken)
    for name, part in broken.items():
        assert part in reasons[name], (name, reasons[name])
    stored = {f.name: f.reason for f in FeatureStore.open(tmp_path / "store").failures}
    assert stored == reasons
    assert (report.encoded, report.failed, report.rows) == (len(good), len(broken), len(good))
    assert report.exit_code == 1 and not report.ok
    assert "failed" in report.summary() and "failures.jsonl" in report.summary()


def test_all_good_and_options(tmp_path: Path) -> None:
    imgs = small_photos()
    folder = tmp_path / "in"
    folder.mkdir()
    for i, im in enumerate(imgs):
        cv2.imwrite(str(folder / f"{i}.png"), im)
    (folder / "tiny.jpg").write_bytes(cv2.imencode(".jpg", imgs[0][:4, :4])[1].tobytes())
    report = encode_to_store(FakeEncoder(), [folder], tmp_path / "s", progress=False, extensions="png", workers=3)
    assert report.ok and report.exit_code == 0 and report.encoded == len(imgs)
    report = encode_to_store(FakeEncoder(), [folder / "tiny.jpg"], tmp_path / "s2", progress=False, upscale_small=True)
    assert report.ok and report.encoded == 1


def test_encoder_exception_fails_only_that_image(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for i, im in enumerate(small_photos()):
        cv2.imwrite(str(folder / f"{i}.png"), cv2.resize(im, (32, 32)))
    cv2.imwrite(str(folder / "3_poison.png"), np.full((32, 32, 3), 13, np.uint8))
    encoder = FakeEncoder()
    report = encode_to_store(encoder, [folder], tmp_path / "s", progress=False, batch_size=8)
    assert [f.name for f in report.failures] == [str(folder / "3_poison.png")]
    assert report.failures[0].reason == "encoder failed: ValueError: poison"
    assert report.encoded == 6
    assert encoder.calls[0][0] == 7  # tried as one batch, then image by image


def test_interrupt_then_resume_equals_uninterrupted(tmp_path: Path) -> None:
    good, broken = make_mixed_folder(tmp_path / "photos")
    src = [tmp_path / "photos"]
    full = encode_to_store(FakeEncoder(), src, tmp_path / "full", progress=False, batch_size=2, chunk_rows=3)
    for stop in (1, 2, 3, 5):
        store = tmp_path / f"resumed{stop}"
        encoder = FakeEncoder()
        encoder.interrupt_at = stop
        with pytest.raises(KeyboardInterrupt):
            encode_to_store(encoder, src, store, progress=False, batch_size=2, chunk_rows=3)
        partial = FeatureStore.open(store).count
        assert partial < len(good)
        report = encode_to_store(FakeEncoder(), src, store, resume=True, progress=False, batch_size=2, chunk_rows=3)
        assert report.skipped + report.encoded + report.failed == full.encoded + full.failed
        names, vectors = load_features(store)
        full_names, full_vectors = load_features(tmp_path / "full")
        assert names == full_names
        np.testing.assert_array_equal(vectors, full_vectors)
        assert FeatureStore.open(store).failures == FeatureStore.open(tmp_path / "full").failures
    again = encode_to_store(FakeEncoder(), src, tmp_path / "full", resume=True, progress=False)
    assert again.encoded == 0 and again.failed == 0 and again.skipped == len(good) + len(broken)


def test_store_refusals(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.png"), small_photos()[0])
    encode_to_store(FakeEncoder(), [folder], tmp_path / "s", progress=False)
    with pytest.raises(StoreError, match="--resume"):
        encode_to_store(FakeEncoder(), [folder], tmp_path / "s", progress=False)
    with pytest.raises(StoreError, match="another model"):
        encode_to_store(FakeEncoder(card_hash="other"), [folder], tmp_path / "s", resume=True)
    with pytest.raises(StoreError, match="another model"):
        encode_to_store(FakeEncoder(dim=6), [folder], tmp_path / "s", resume=True)
    with pytest.raises(StoreError, match="max side"):
        encode_to_store(FakeEncoder(max_side=32), [folder], tmp_path / "s", resume=True)


def test_memory_bounded_commits(tmp_path: Path, monkeypatch) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(60):
        cv2.imwrite(str(folder / f"{i:03d}.png"), rng.integers(0, 255, (20, 24, 3), np.uint8))
    sizes: list[int] = []
    original = FeatureStore.append

    def spy(self, names, vectors, failures=(), **side):
        sizes.append(len(names))
        return original(self, names, vectors, failures, **side)

    monkeypatch.setattr(FeatureStore, "append", spy)
    report = encode_to_store(FakeEncoder(), [folder], tmp_path / "s", progress=False, batch_size=2, chunk_rows=10)
    assert report.encoded == 60 and sum(sizes) == 60
    assert max(sizes) <= 10 + 4 * 2 and len(sizes) >= 4


def test_rois_crop_before_encoding(tmp_path: Path) -> None:
    file = tmp_path / "a.png"
    cv2.imwrite(str(file), small_photos()[0])
    name = str(file)
    encode_to_store(FakeEncoder(), [file], tmp_path / "whole", progress=False)
    encode_to_store(FakeEncoder(), [file], tmp_path / "crop", progress=False, rois={name: (0, 0, 32, 32)})
    bad = encode_to_store(FakeEncoder(), [file], tmp_path / "bad", progress=False, rois={name: (50, 50, 10, 10)})
    whole = load_features(tmp_path / "whole")[1]
    crop = load_features(tmp_path / "crop")[1]
    assert not np.allclose(whole, crop)
    assert "query box" in bad.failures[0].reason


def test_sources_order_filters_lists_stdin(tmp_path: Path) -> None:
    root = tmp_path / "r"
    for rel in ("b/2.jpg", "b/1.PNG", "a.jpg", "c.txt", ".h/x.jpg", "b/.y.jpg", "z.jpg"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x")
    (root / "b" / "loop").symlink_to("..")
    items = list(iter_sources([root]))
    names = [i.name for i in items if i.error is None]
    assert names == [str(root / p) for p in ("a.jpg", "b/1.PNG", "b/2.jpg", "z.jpg")]
    assert [i.name for i in items if i.error] == [str(root / "b/loop")]
    assert [i.name for i in iter_sources([root], extensions="png") if not i.error] == [str(root / "b/1.PNG")]
    listing = tmp_path / "list.txt"
    listing.write_text(f"{root}/z.jpg\n\n{root}/./a.jpg\r\n{root}/c.txt\n")
    got = [i.name for i in iter_sources([f"@{listing}", root / "a.jpg"])]
    assert got == [str(root / "z.jpg"), str(root / "a.jpg"), str(root / "c.txt")]
    got = [i.name for i in iter_sources(["-"], list_files=[listing], stdin=io.StringIO("q.jpg\n"))]
    assert got == ["q.jpg", str(root / "z.jpg"), str(root / "a.jpg"), str(root / "c.txt")]
    assert isinstance(next(iter_sources([SourceItem("n", "p")])), SourceItem)
    with pytest.raises(SourceError, match="no such file"):
        check_specs([tmp_path / "missing"])
    with pytest.raises(SourceError, match="list file"):
        check_specs([], list_files=[tmp_path / "missing.txt"])
