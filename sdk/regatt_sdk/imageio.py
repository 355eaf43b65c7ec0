"""Decoding image files into BGR uint8 arrays ``(H, W, 3)`` the way OpenCV does, defensively.

What :func:`read_image` guarantees, whatever the file holds:

* It never blocks: the path is ``stat``-ed first and anything that is not a regular file
  (directory, FIFO, socket, device, symlink loop) is refused without being opened; the open
  itself uses ``O_NONBLOCK`` and the descriptor is re-checked with ``fstat``.
* It never decodes a decompression bomb: the width and height are parsed from the header bytes
  (PNG, JPEG, GIF, BMP, WebP, AVIF, TIFF/BigTIFF, JPEG 2000, PNM/PAM/PFM, Radiance HDR, Sun
  raster) and checked against ``max_pixels`` *before* OpenCV allocates anything. Formats whose
  header it cannot read are refused (OpenEXR, HEIC and unknown data included).
* Truncated JPEGs are refused: the marker stream is walked to the end-of-image marker (``FFD9``);
  a file that ends before it is reported as truncated instead of being half-decoded (older
  OpenCV builds return the partial image with a "Premature end of JPEG file" warning).
* The result is always BGR uint8 ``(H, W, 3)``, C-contiguous: EXIF orientation applied as
  ``cv2.imread`` does, grayscale expanded, alpha dropped (not composited), CMYK converted by
  OpenCV, 16-bit samples scaled by 1/257 (rounded), animated/multi-page files give their first
  frame.
* Images whose shorter side is below ``min_side`` are refused, or upscaled (keeping the aspect
  ratio) so that their shorter side is ``min_side`` when ``upscale_small=True``.

Every refusal is an :class:`~regatt_sdk.errors.ImageError` ``(path, reason)``.
"""

from __future__ import annotations

import errno
import os
import stat
import struct
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .errors import ImageError

#: default decompression-bomb guard: images above this many pixels are refused unread.
DEFAULT_MAX_PIXELS = 100_000_000
#: default limit on the memory one decode takes (:func:`decoded_bytes`, from the header, checked
#: before decoding) for batch tools: 1 GiB
DEFAULT_MAX_DECODED_BYTES = 1 << 30
#: the same limit for a server (``regatt serve --max-decoded-bytes``), where uploads are anyone's
#: and several decode at once: 128 MiB = 44.7 megapixels of 8-bit colour (a 24 MP photo is 72 MiB)
SERVE_MAX_DECODED_BYTES = 128 << 20
#: default minimum for the shorter side of an image, in pixels.
DEFAULT_MIN_SIDE = 16
#: default maximum file size in bytes (files are read whole into memory before decoding).
DEFAULT_MAX_BYTES = 1 << 30

#: file extensions (lower case, no dot) of the formats this module reads.
IMAGE_EXTENSIONS: tuple[str, ...] = (
    "jpg", "jpeg", "jpe", "jfif", "png", "bmp", "dib", "gif", "webp", "avif", "tif", "tiff",
    "jp2", "j2k", "jpc", "pbm", "pgm", "ppm", "pnm", "pam", "pfm", "hdr", "pic", "sr", "ras",
)  # fmt: skip

_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_JPEG_STANDALONE = frozenset([0x01, *range(0xD0, 0xD8)])


@dataclass(frozen=True)
class HeaderInfo:
    """What the header of an image file says: format name, size, and sample depth in bits."""

    format: str
    width: int
    height: int
    depth: int = 8


class _Refused(Exception):
    """Internal: header parsing found a problem; carries the reason for the ImageError."""


# --------------------------------------------------------------------------- header parsing


def _need(data: bytes, end: int, fmt: str) -> None:
    if len(data) < end:
        raise _Refused(f"truncated {fmt} header")


def _png(data: bytes) -> HeaderInfo:
    _need(data, 26, "PNG")
    if data[12:16] != b"IHDR":
        raise _Refused("corrupt PNG: first chunk is not IHDR")
    width, height = struct.unpack(">II", data[16:24])
    return HeaderInfo("PNG", width, height, data[24])


def _jpeg_next_marker(data: bytes, start: int, cache: list[np.ndarray]) -> int | None:
    """Offset of the next marker (its ``FF``) at or after ``start`` in entropy-coded data.

    Skips byte stuffing ``FF00``, restart markers ``FFD0..FFD7`` and fill bytes ``FFFF``.
    """
    if not cache:
        arr = np.frombuffer(data, dtype=np.uint8)
        ff = np.flatnonzero(arr[:-1] == 0xFF)
        nxt = arr[ff + 1]
        keep = (nxt != 0x00) & (nxt != 0xFF) & ((nxt < 0xD0) | (nxt > 0xD7))
        cache.append(ff[keep])
    candidates = cache[0]
    i = int(np.searchsorted(candidates, start))
    return int(candidates[i]) if i < candidates.size else None


def _jpeg(data: bytes, *, check_end: bool = True) -> HeaderInfo:
    """Walk the JPEG marker stream: size from the first SOF, then on to EOI (``FFD9``)."""
    n = len(data)
    pos = 2
    info: HeaderInfo | None = None
    cache: list[np.ndarray] = []
    while True:
        if pos >= n:
            break
        if data[pos] != 0xFF:
            raise _Refused(f"corrupt JPEG: no marker at byte {pos}")
        while pos < n and data[pos] == 0xFF:
            pos += 1
        if pos >= n:
            break
        marker = data[pos]
        pos += 1
        if marker == 0xD9:  # EOI
            if info is None:
                raise _Refused("corrupt JPEG: end of image before any frame header")
            return info
        if marker in _JPEG_STANDALONE:
            continue
        if marker == 0xD8:
            raise _Refused("corrupt JPEG: second start-of-image marker")
        if pos + 2 > n:
            break
        length = (data[pos] << 8) | data[pos + 1]
        if length < 2:
            raise _Refused(f"corrupt JPEG: bad segment length at byte {pos}")
        end = pos + length
        if end > n:
            break
        if marker in _JPEG_SOF and info is None:
            if length < 8:
                raise _Refused("corrupt JPEG: short frame header")
            precision = data[pos + 2]
            height, width = struct.unpack(">HH", data[pos + 3 : pos + 7])
            if height == 0:
                raise _Refused("unsupported JPEG: height deferred to a DNL marker")
            info = HeaderInfo("JPEG", width, height, precision)
            if not check_end:
                return info
        pos = end
        if marker == 0xDA:  # start of scan: entropy-coded data runs to the next marker
            if info is None:
                raise _Refused("corrupt JPEG: scan before any frame header")
            nxt = _jpeg_next_marker(data, pos, cache)
            if nxt is None:
                break
            pos = nxt
    if info is None:
        raise _Refused("truncated JPEG header (no frame header)")
    raise _Refused("truncated JPEG: the file ends before the end-of-image marker (FFD9)")


def _gif(data: bytes) -> HeaderInfo:
    _need(data, 10, "GIF")
    width, height = struct.unpack("<HH", data[6:10])
    return HeaderInfo("GIF", width, height)


def _bmp(data: bytes) -> HeaderInfo:
    _need(data, 26, "BMP")
    (dib,) = struct.unpack("<I", data[14:18])
    if dib == 12:
        width, height = struct.unpack("<HH", data[18:22])
    else:
        width, height = struct.unpack("<ii", data[18:26])
    return HeaderInfo("BMP", width, abs(height))


def _webp(data: bytes) -> HeaderInfo:
    _need(data, 30, "WebP")
    kind = data[12:16]
    if kind == b"VP8 ":
        if data[23:26] != b"\x9d\x01\x2a":
            raise _Refused("corrupt WebP: bad VP8 start code")
        width, height = struct.unpack("<HH", data[26:30])
        return HeaderInfo("WebP", width & 0x3FFF, height & 0x3FFF)
    if kind == b"VP8L":
        if data[20] != 0x2F:
            raise _Refused("corrupt WebP: bad VP8L signature")
        (bits,) = struct.unpack("<I", data[21:25])
        return HeaderInfo("WebP", (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1)
    if kind == b"VP8X":
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
        return HeaderInfo("WebP", width, height)
    raise _Refused(f"unsupported WebP chunk {kind!r}")


def _avif(data: bytes) -> HeaderInfo:
    best: tuple[int, int] | None = None
    start = 0
    while True:
        i = data.find(b"ispe", start)
        if i < 0:
            break
        start = i + 4
        if i + 16 <= len(data):
            width, height = struct.unpack(">II", data[i + 8 : i + 16])
            if best is None or width * height > best[0] * best[1]:
                best = (width, height)
    if best is None:
        raise _Refused("AVIF without an image-size (ispe) property")
    return HeaderInfo("AVIF", *best)


def _tiff(data: bytes) -> HeaderInfo:
    _need(data, 8, "TIFF")
    end = "<" if data[:2] == b"II" else ">"
    (version,) = struct.unpack(end + "H", data[2:4])
    big = version == 43
    if big:
        _need(data, 16, "TIFF")
        (ifd,) = struct.unpack(end + "Q", data[8:16])
        count_fmt, entry_size, head = "Q", 20, 8
    else:
        (ifd,) = struct.unpack(end + "I", data[4:8])
        count_fmt, entry_size, head = "H", 12, 2
    _need(data, ifd + head, "TIFF")
    (count,) = struct.unpack(end + count_fmt, data[ifd : ifd + head])
    values: dict[int, int] = {}
    for k in range(min(count, 4096)):
        off = ifd + head + k * entry_size
        if off + entry_size > len(data):
            raise _Refused("truncated TIFF header")
        tag, typ = struct.unpack(end + "HH", data[off : off + 4])
        if tag not in (256, 257, 258):
            continue
        value_at = off + (12 if big else 8)
        (n_values,) = struct.unpack(end + ("Q" if big else "I"), data[off + 4 : value_at])
        field = data[value_at : off + entry_size]
        size = {3: 2, 4: 4, 16: 8}.get(typ)
        if size is None:
            raise _Refused(f"corrupt TIFF: tag {tag} has type {typ}")
        fmt = end + {2: "H", 4: "I", 8: "Q"}[size]
        if n_values * size > len(field):  # values stored elsewhere; first one is enough
            (ptr,) = struct.unpack(end + ("Q" if big else "I"), field[: 8 if big else 4])
            _need(data, ptr + size, "TIFF")
            field = data[ptr : ptr + size]
        values[tag] = struct.unpack(fmt, field[:size])[0]
    if 256 not in values or 257 not in values:
        raise _Refused("corrupt TIFF: no image width/length in the first directory")
    return HeaderInfo("TIFF", values[256], values[257], values.get(258, 1))


def _jp2(data: bytes) -> HeaderInfo:
    i = data.find(b"ihdr", 0, 1 << 20)
    if i < 0 or i + 12 > len(data):
        raise _Refused("corrupt JPEG 2000: no image header box")
    height, width = struct.unpack(">II", data[i + 4 : i + 12])
    return HeaderInfo("JPEG 2000", width, height)


def _j2k(data: bytes) -> HeaderInfo:
    _need(data, 24, "JPEG 2000")
    xsiz, ysiz, xo, yo = struct.unpack(">IIII", data[8:24])
    return HeaderInfo("JPEG 2000", xsiz - xo, ysiz - yo)


def _tokens(data: bytes, start: int, count: int, fmt: str) -> list[bytes]:
    """The next ``count`` whitespace-separated tokens of a text header, ``#`` comments skipped."""
    out: list[bytes] = []
    pos, n = start, min(len(data), start + 4096)
    while len(out) < count:
        while pos < n and data[pos] in b" \t\r\n":
            pos += 1
        if pos < n and data[pos] == ord("#"):
            while pos < n and data[pos] not in b"\r\n":
                pos += 1
            continue
        begin = pos
        while pos < n and data[pos] not in b" \t\r\n#":
            pos += 1
        if begin == pos:
            raise _Refused(f"truncated {fmt} header")
        out.append(data[begin:pos])
    return out


def _int(token: bytes, fmt: str) -> int:
    if not token.isdigit():
        raise _Refused(f"corrupt {fmt} header: {token[:20]!r} is not a size")
    return int(token)


def _pnm(data: bytes) -> HeaderInfo:
    if data[:2] == b"P7":
        head = data[: data.find(b"ENDHDR", 0, 4096)]
        if not head:
            raise _Refused("truncated PAM header")
        fields = dict(line.split(None, 1) for line in head.splitlines()[1:] if b" " in line.strip())
        width, height = fields.get(b"WIDTH", b"x").strip(), fields.get(b"HEIGHT", b"x").strip()
        return HeaderInfo("PAM", _int(width, "PAM"), _int(height, "PAM"))
    fmt = "PFM" if data[:2] in (b"PF", b"Pf") else "PNM"
    width, height = (_int(t, fmt) for t in _tokens(data, 2, 2, fmt))
    return HeaderInfo(fmt, width, height)


def _hdr(data: bytes) -> HeaderInfo:
    end = data.find(b"\n\n", 0, 1 << 16)
    if end < 0:
        raise _Refused("truncated Radiance HDR header")
    line_end = data.find(b"\n", end + 2, end + 200)
    parts = data[end + 2 : line_end if line_end > 0 else end + 200].split()
    if len(parts) != 4:
        raise _Refused("corrupt Radiance HDR: no resolution line")
    sizes = {parts[0][-1:]: parts[1], parts[2][-1:]: parts[3]}
    if set(sizes) != {b"X", b"Y"}:
        raise _Refused("corrupt Radiance HDR: bad resolution line")
    return HeaderInfo("HDR", _int(sizes[b"X"], "HDR"), _int(sizes[b"Y"], "HDR"))


def _sunras(data: bytes) -> HeaderInfo:
    _need(data, 12, "Sun raster")
    width, height = struct.unpack(">II", data[4:12])
    return HeaderInfo("Sun raster", width, height)


def _looks_like_text(data: bytes) -> bool:
    head = data[:1024]
    if b"\x00" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 4:  # not just a character cut at the 1 KiB boundary
            return False
    return True


def image_header(data: bytes) -> HeaderInfo:
    """Format and size of an encoded image from its header bytes, without decoding pixels.

    Raises :class:`ImageError` (path ``"<bytes>"``) when the data is not a recognized image
    format or its header is truncated or corrupt. For JPEG it also walks the whole marker stream
    and refuses data without an end-of-image marker.
    """
    try:
        return _sniff(data)
    except _Refused as exc:
        raise ImageError("<bytes>", str(exc)) from None


def _sniff(data: bytes) -> HeaderInfo:
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return _png(data)
    if data[:3] == b"\xff\xd8\xff":
        return _jpeg(data)
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return _gif(data)
    if data[:2] == b"BM":
        return _bmp(data)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _webp(data)
    if data[4:8] == b"ftyp":
        (box,) = struct.unpack(">I", data[:4])
        brands = data[8 : min(max(box, 16), 256)]
        if b"avif" in brands or b"avis" in brands:
            return _avif(data)
        raise _Refused(f"unsupported ISO media file (brand {data[8:12]!r}; HEIC is not readable)")
    if data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return _tiff(data)
    if data[:12] == b"\x00\x00\x00\x0cjP  \r\n\x87\n":
        return _jp2(data)
    if data[:4] == b"\xff\x4f\xff\x51":
        return _j2k(data)
    if len(data) >= 3 and data[0] == ord("P") and data[1] in b"1234567Ff" and data[2] in b" \t\r\n":
        return _pnm(data)
    if data[:2] == b"#?":
        return _hdr(data)
    if data[:4] == b"\x59\xa6\x6a\x95":
        return _sunras(data)
    if data[:4] == b"v/1\x01":
        raise _Refused("OpenEXR images are not supported")
    if _looks_like_text(data):
        raise _Refused("not an image: the file holds text")
    raise _Refused(f"not a recognized image format (starts with {data[:8].hex(' ')})")


# --------------------------------------------------------------------------- decoding


def _to_bgr8(image: np.ndarray) -> np.ndarray:
    """Any decoded OpenCV array as BGR uint8 ``(H, W, 3)``; 16-bit scaled by 1/257, rounded."""
    if image.dtype == np.uint16:
        image = cv2.convertScaleAbs(image, alpha=1.0 / 257.0)
    if image.dtype != np.uint8:
        raise ValueError(f"unexpected sample type {image.dtype}")
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    elif image.shape[2] == 1:
        image = cv2.cvtColor(image[:, :, 0], cv2.COLOR_GRAY2BGR)
    elif image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    return np.ascontiguousarray(image)


def _imdecode(arr: np.ndarray, flags: int) -> np.ndarray | None:
    try:
        return cv2.imdecode(arr, flags)
    except cv2.error as exc:
        message = str(exc).strip().splitlines()
        raise _Refused(f"OpenCV failed to decode it ({message[-1] if message else 'cv2.error'})") from None


def decoded_bytes(info: HeaderInfo) -> int:
    """Bytes of the array OpenCV allocates to decode an image with this header: 3 colour
    samples a pixel, 2 bytes each for samples deeper than 8 bits (PNG/TIFF), else 1."""
    wide = info.format in ("PNG", "TIFF") and info.depth > 8
    return int(info.width) * int(info.height) * 3 * (2 if wide else 1)


def decode_image(
    data: bytes,
    name: str | Path = "<bytes>",
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_side: int = DEFAULT_MIN_SIDE,
    upscale_small: bool = False,
    max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES,
) -> np.ndarray:
    """Decode encoded image bytes into BGR uint8 ``(H, W, 3)``; raise :class:`ImageError`.

    ``name`` only labels errors. See the module docstring for the checks applied;
    ``max_decoded_bytes`` refuses, from the header, an image whose decoded array
    (:func:`decoded_bytes`) would be larger.
    """
    if len(data) == 0:
        raise ImageError(name, "file is empty")
    try:
        info = _sniff(data)
        if info.width <= 0 or info.height <= 0:
            raise _Refused(f"invalid {info.format} size {info.width}x{info.height}")
        pixels = info.width * info.height
        if pixels > max_pixels:
            raise _Refused(
                f"{info.format} image is {info.width}x{info.height} = {pixels / 1e6:.1f} "
                f"megapixels, over the limit of {max_pixels / 1e6:g} (decompression-bomb "
                "guard; raise it with --max-pixels)"
            )
        need = decoded_bytes(info)
        if need > max_decoded_bytes:
            raise _Refused(
                f"{info.format} image is {info.width}x{info.height}: decoding it takes {need / 2**20:.0f} MiB, "
                f"over the limit of {max_decoded_bytes / 2**20:.0f} MiB of decoded pixels (--max-decoded-bytes)"
            )
        if min(info.width, info.height) < min_side and not upscale_small:
            raise _Refused(f"image is {info.width}x{info.height}, smaller than the minimum side of {min_side} px")
        arr = np.frombuffer(data, dtype=np.uint8)
        wide = info.format in ("PNG", "TIFF") and info.depth > 8
        flags = cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH if wide else cv2.IMREAD_COLOR
        image = _imdecode(arr, flags)
        if image is not None and image.dtype not in (np.uint8, np.uint16):
            image = _imdecode(arr, cv2.IMREAD_COLOR)  # float/int samples: OpenCV's conversion
        if image is None or image.size == 0:
            raise _Refused(f"corrupt or truncated {info.format} data (OpenCV could not decode it)")
        image = _to_bgr8(image)
    except _Refused as exc:
        raise ImageError(name, str(exc)) from None
    height, width = image.shape[:2]
    if height * width > max_pixels:  # header lied (e.g. a later frame); still refuse
        raise ImageError(name, f"decoded image is {width}x{height}, over the pixel limit")
    if min(height, width) < min_side:
        if not upscale_small:
            raise ImageError(name, f"image is {width}x{height}, smaller than the minimum side of {min_side} px")
        scale = min_side / min(height, width)
        size = (max(min_side, round(width * scale)), max(min_side, round(height * scale)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
    return image


def _stat_reason(mode: int) -> str | None:
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "is a directory, not an image file"
    if stat.S_ISFIFO(mode):
        return "is a FIFO (named pipe), not an image file"
    if stat.S_ISSOCK(mode):
        return "is a socket, not an image file"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "is a device, not an image file"
    return "is not a regular file"


def _os_reason(exc: OSError) -> str:
    if exc.errno == errno.ENOENT:
        return "file not found (or a broken symlink)"
    if exc.errno == errno.ELOOP:
        return "symlink loop (too many levels of symbolic links)"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if exc.errno == errno.ENAMETOOLONG:
        return "file name too long"
    if exc.errno == errno.ENOTDIR:
        return "a parent of this path is not a directory"
    return f"cannot read it ({exc.strerror or exc})"


def read_bytes(path: str | Path, *, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """The whole content of the regular file ``path``, never blocking on special files.

    Raises :class:`ImageError` for missing files, symlink loops, directories, FIFOs, sockets,
    devices, empty files and files over ``max_bytes``.
    """
    try:
        st = os.stat(path)
    except OSError as exc:
        raise ImageError(path, _os_reason(exc)) from None
    reason = _stat_reason(st.st_mode)
    if reason:
        raise ImageError(path, reason)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise ImageError(path, _os_reason(exc)) from None
    try:
        st = os.fstat(fd)  # the path may have been swapped since the stat
        reason = _stat_reason(st.st_mode)
        if reason:
            raise ImageError(path, reason)
        if st.st_size == 0:
            raise ImageError(path, "file is empty")
        if st.st_size > max_bytes:
            size, limit = st.st_size / 2**20, max_bytes / 2**20
            raise ImageError(path, f"file is {size:.0f} MiB, over the {limit:.0f} MiB limit")
        chunks: list[bytes] = []
        total = 0
        while total <= max_bytes:
            block = os.read(fd, min(1 << 24, max_bytes + 1 - total))
            if not block:
                break
            chunks.append(block)
            total += len(block)
        if total > max_bytes:
            limit = max_bytes / 2**20
            raise ImageError(path, f"file grew past the {limit:.0f} MiB limit while read")
        if total == 0:
            raise ImageError(path, "file is empty")
        return b"".join(chunks)
    except OSError as exc:
        raise ImageError(path, _os_reason(exc)) from None
    finally:
        os.close(fd)


def read_image(
    path: str | Path,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_side: int = DEFAULT_MIN_SIDE,
    upscale_small: bool = False,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES,
) -> np.ndarray:
    """Decode the image file ``path`` into BGR uint8 ``(H, W, 3)``; raise :class:`ImageError`.

    ``max_pixels`` refuses images whose header announces more pixels (checked before decoding);
    ``min_side`` refuses images with a shorter side below it, unless ``upscale_small`` upscales
    them to it; ``max_bytes`` refuses bigger files; ``max_decoded_bytes`` images whose decoded
    array would be bigger (from the header, before decoding).
    """
    data = read_bytes(path, max_bytes=max_bytes)
    return decode_image(
        data, path, max_pixels=max_pixels, min_side=min_side, upscale_small=upscale_small,
        max_decoded_bytes=max_decoded_bytes,
    )  # fmt: skip
