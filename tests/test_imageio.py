"""Decoding: every kind of file either gives BGR uint8 (H, W, 3) or raises ImageError, fast."""

from __future__ import annotations

import faulthandler
import io
import os
import socket
import struct
import threading
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data

from regatt_sdk.errors import ImageError
from regatt_sdk.imageio import decode_image, image_header, read_image


def photo(height: int = 96, width: int = 128) -> np.ndarray:
    """A small real BGR photo (scikit-image's astronaut), ``(height, width, 3)`` uint8."""
    rgb = skimage.data.astronaut()
    return cv2.resize(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), (width, height))


def encode(image: np.ndarray, ext: str, params: list[int] | None = None) -> bytes:
    ok, buf = cv2.imencode(ext, image, params or [])
    assert ok
    return buf.tobytes()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def png_bomb(width: int = 30000, height: int = 30000) -> bytes:
    """A ~20 KB PNG whose IHDR announces ``width x height`` RGB (2.7 GB decoded at 30000²)."""
    comp = zlib.compressobj(9)
    row = bytes(1 + 3 * width)
    body = b"".join(comp.compress(row) for _ in range(64)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", body)
        + png_chunk(b"IEND", b"")
    )  # fmt: skip


def check(result: np.ndarray) -> None:
    assert result.dtype == np.uint8 and result.ndim == 3 and result.shape[2] == 3
    assert result.flags.c_contiguous


@pytest.mark.parametrize("ext", [".jpg", ".png", ".bmp", ".webp", ".tiff", ".ppm", ".jp2"])
def test_common_formats_decode_like_opencv(tmp_path: Path, ext: str) -> None:
    image = photo()
    file = tmp_path / f"a{ext}"
    file.write_bytes(encode(image, ext))
    out = read_image(file)
    check(out)
    np.testing.assert_array_equal(out, cv2.imread(str(file), cv2.IMREAD_COLOR))


def test_header_sizes_without_decoding() -> None:
    image = photo(40, 70)
    for ext in (".jpg", ".png", ".bmp", ".webp", ".tiff", ".ppm", ".jp2", ".gif", ".ras"):
        info = image_header(encode(image, ext))
        assert (info.width, info.height) == (70, 40), ext


def test_exif_orientation_applied_like_imread(tmp_path: Path) -> None:
    Image = pytest.importorskip("PIL.Image")

    image = photo(40, 80)
    pil = Image.fromarray(image[:, :, ::-1])
    exif = pil.getexif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    file = tmp_path / "rotated.jpg"
    pil.save(file, "JPEG", exif=exif)
    out = read_image(file)
    assert out.shape == (80, 40, 3)
    np.testing.assert_array_equal(out, cv2.imread(str(file), cv2.IMREAD_COLOR))


def test_grayscale_rgba_16bit_cmyk_gif_multipage(tmp_path: Path) -> None:
    Image = pytest.importorskip("PIL.Image")

    image = photo(48, 64)
    gray = read_image(_write(tmp_path / "g.png", encode(image[:, :, 1], ".png")))
    np.testing.assert_array_equal(gray, cv2.cvtColor(image[:, :, 1], cv2.COLOR_GRAY2BGR))

    bgra = cv2.cvtColor(image, cv2.COLOR_BGR2BGRA)
    bgra[..., 3] = 7
    np.testing.assert_array_equal(read_image(_write(tmp_path / "a.png", encode(bgra, ".png"))), image)

    wide = np.random.default_rng(0).integers(0, 65536, (48, 64, 3), dtype=np.uint16)
    expected = np.round(wide / 257.0).astype(np.uint8)
    for ext in (".png", ".tiff"):
        out = read_image(_write(tmp_path / f"w{ext}", encode(wide, ext)))
        np.testing.assert_array_equal(out, expected)

    buf = io.BytesIO()
    Image.new("CMYK", (40, 30), (0, 255, 0, 0)).save(buf, "JPEG")
    cmyk = read_image(_write(tmp_path / "cmyk.jpg", buf.getvalue()))
    assert cmyk.shape == (30, 40, 3)

    frames = [Image.new("RGB", (40, 30), c) for c in ("red", "blue", "green")]
    for ext in ("gif", "tiff"):
        buf = io.BytesIO()
        frames[0].save(buf, ext.upper(), save_all=True, append_images=frames[1:])
        first = read_image(_write(tmp_path / f"anim.{ext}", buf.getvalue()))
        assert first.shape == (30, 40, 3)
        np.testing.assert_array_equal(first[0, 0], [0, 0, 255])  # the red first frame, BGR


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_small_images_refused_or_upscaled(tmp_path: Path) -> None:
    tiny = _write(tmp_path / "one.png", encode(photo(1, 1), ".png"))
    with pytest.raises(ImageError, match="1x1, smaller than the minimum side"):
        read_image(tiny)
    assert read_image(tiny, upscale_small=True).shape == (16, 16, 3)
    thin = _write(tmp_path / "thin.png", encode(photo(4, 40), ".png"))
    assert read_image(thin, upscale_small=True).shape == (16, 160, 3)
    assert read_image(thin, min_side=4).shape == (4, 40, 3)


def test_decompression_bombs_refused_before_decoding(tmp_path: Path) -> None:
    bomb = _write(tmp_path / "bomb.png", png_bomb())
    assert bomb.stat().st_size < 100_000
    start = time.perf_counter()
    with pytest.raises(ImageError, match="30000x30000 = 900.0 megapixels"):
        read_image(bomb)
    assert time.perf_counter() - start < 0.5  # no 2.7 GB allocation, no inflating
    # a real JPEG whose frame header is patched to claim 30000x30000
    data = bytearray(encode(photo(), ".jpg"))
    sof = data.find(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", 30000, 30000)
    with pytest.raises(ImageError, match="megapixels"):
        decode_image(bytes(data))
    # the limit is configurable
    with pytest.raises(ImageError, match="over the limit"):
        read_image(_write(tmp_path / "p.png", encode(photo(), ".png")), max_pixels=1000)


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "empty"),
        (b"hello, I am text\nrenamed to .jpg\n", "holds text"),
        (bytes(range(256)) * 4, "not a recognized image format"),
        (b"\x89PNG\r\n\x1a\n\x00\x00", "truncated PNG header"),
        (b"\xff\xd8\xff", "truncated JPEG header"),
    ],
)
def test_non_images_refused_with_reason(tmp_path: Path, data: bytes, reason: str) -> None:
    with pytest.raises(ImageError, match=reason):
        read_image(_write(tmp_path / "x.jpg", data))


def test_truncated_jpeg_refused(tmp_path: Path) -> None:
    for params in ([], [cv2.IMWRITE_JPEG_PROGRESSIVE, 1]):
        data = encode(photo(), ".jpg", params)
        for cut in (2, 100, len(data) // 2):
            with pytest.raises(ImageError, match="truncated JPEG"):
                read_image(_write(tmp_path / "t.jpg", data[:-cut]))
        # trailing bytes after the end-of-image marker are fine (cameras append data)
        check(read_image(_write(tmp_path / "ok.jpg", data + b"\x00trailer")))


def test_special_files_refused_without_blocking(tmp_path: Path) -> None:
    (tmp_path / "dir.jpg").mkdir()
    os.mkfifo(tmp_path / "fifo.jpg")
    loop = tmp_path / "loop.jpg"
    loop.symlink_to(loop)
    (tmp_path / "broken.jpg").symlink_to(tmp_path / "nowhere.jpg")
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(tmp_path / "sock.jpg"))
        cases = {
            "dir.jpg": "is a directory",
            "fifo.jpg": "FIFO",
            "loop.jpg": "symlink loop",
            "broken.jpg": "not found",
            "sock.jpg": "socket",
            "missing.jpg": "not found",
        }
        errors: dict[str, str] = {}

        def run() -> None:
            for name in cases:
                try:
                    read_image(tmp_path / name)
                except ImageError as exc:
                    errors[name] = exc.reason

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        worker.join(timeout=10)
        assert not worker.is_alive(), "read_image blocked on a special file"
        for name, reason in cases.items():
            assert reason in errors[name], (name, errors.get(name))
    finally:
        sock.close()


def test_error_carries_path_and_reason(tmp_path: Path) -> None:
    file = _write(tmp_path / "bad.jpg", b"nope")
    with pytest.raises(ImageError) as info:
        read_image(file)
    assert info.value.path == str(file)
    assert str(info.value).startswith(str(file) + ": ")


def test_fuzz_decoder_never_crashes_or_hangs() -> None:
    """Random bytes, truncations and bit flips of valid files: an image or ImageError only."""
    rng = np.random.default_rng(1234)
    image = photo(40, 56)
    valid = [encode(image, ext) for ext in (".jpg", ".png", ".bmp", ".webp", ".tiff", ".gif", ".ppm")]
    valid.append(encode(image, ".jpg", [cv2.IMWRITE_JPEG_PROGRESSIVE, 1]))
    valid.append(png_bomb(3000, 3000))
    cases: list[bytes] = [rng.bytes(int(n)) for n in rng.integers(1, 4000, 60)]
    for data in valid:
        cases += [data[: int(c)] for c in rng.integers(1, len(data), 12)]
        for _ in range(12):
            mutated = bytearray(data)
            for pos in rng.integers(0, len(data), int(rng.integers(1, 8))):
                mutated[pos] = int(rng.integers(0, 256))
            cases.append(bytes(mutated))
        cases.append(data[:16] + rng.bytes(len(data) - 16))  # valid header, garbage body
    faulthandler.dump_traceback_later(120, exit=True)  # a hang fails the run instead of stalling
    try:
        start = time.perf_counter()
        decoded = refused = 0
        for data in cases:
            try:
                out = decode_image(data, "fuzz", min_side=1, max_pixels=4_000_000)
            except ImageError as exc:
                assert exc.reason
                refused += 1
            else:
                check(out)
                decoded += 1
        assert refused > 0 and decoded + refused == len(cases)
        assert time.perf_counter() - start < 60
    finally:
        faulthandler.cancel_dump_traceback_later()
