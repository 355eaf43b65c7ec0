"""Hostile input against a real ``regatt serve`` on 127.0.0.1: decompression bombs and huge
header dimensions, malformed multipart bodies, bad query values, clients that stall in their
headers or body, uploads past the size limit; every answer is a 4xx with a reason (never a 5xx),
the server keeps answering others meanwhile, and its peak RSS stays bounded (recorded with the
fault figures when ``REGATT_FAULTS_JSON`` is set)."""

from __future__ import annotations

import json
import os
import socket
import struct
import threading
import time
import zlib
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="pip install 'regatt[serve]'")
pytest.importorskip("uvicorn", reason="pip install 'regatt[serve]'")

from httpserver import Server, multipart  # noqa: E402

SIDE = "128"


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png(width: int, height: int, depth: int = 8, colour: int = 0, body: bool = True) -> bytes:
    """A PNG of ``width x height`` zero pixels (a bomb: a few KB), or only its header."""
    head = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0))
    if not body:
        return head + b"\x00" * 64
    z = zlib.compressobj(9)
    row = b"\x00" * (width * max(1, depth // 8) * (3 if colour == 2 else 1) + 1)
    idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    return head + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def jpeg_header(width: int, height: int) -> bytes:
    sof = b"\xff\xc0\x00\x11\x08" + struct.pack(">HH", height, width) + b"\x03\x01\x22\x00\x02\x11\x01\x03\x11\x01"
    return b"\xff\xd8" + sof + b"\xff\xda\x00\x08\x01\x01\x00\x00\x3f\x00" + b"\x12" * 200 + b"\xff\xd9"


def gif_header(width: int, height: int) -> bytes:
    return b"GIF89a" + struct.pack("<HH", width, height) + b"\x00\x00\x00" + b"\x3b"


def bmp_header(width: int, height: int) -> bytes:
    return b"BM" + b"\x00" * 12 + struct.pack("<Iii", 40, width, height) + b"\x01\x00\x18\x00" + b"\x00" * 40


def webp_header(width: int, height: int) -> bytes:
    body = b"WEBPVP8X" + struct.pack("<I", 10) + b"\x00\x00\x00\x00"
    body += (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    return b"RIFF" + struct.pack("<I", len(body)) + body


def vm(pid: int, key: str) -> int:
    """``VmRSS`` / ``VmHWM`` (peak) of a process, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


@pytest.fixture(scope="module")
def server(tiny_model: Path, photo_dir: Path, tmp_path_factory):
    from regatt_sdk.encoder import Encoder
    from regatt_sdk.pipeline import encode_to_store

    store = tmp_path_factory.mktemp("hostile") / "store"
    encode_to_store(Encoder(tiny_model, device="cpu", max_side=int(SIDE)), [str(photo_dir)], store, progress=False)
    log = tmp_path_factory.mktemp("hostile-log") / "server.log"
    srv = Server(tiny_model, "--store", str(store), "--max-side", SIDE, "--max-bytes", str(4 << 20),
                 "--body-timeout", "1", log=log)  # fmt: skip
    srv.start_rss = vm(srv.proc.pid, "VmRSS")
    yield srv
    srv.stop()
    assert "Traceback" not in log.read_text()


FIGURES: dict = {}


@pytest.fixture(scope="module", autouse=True)
def _record(server):
    yield
    FIGURES["peak_rss_mb"] = round(vm(server.proc.pid, "VmHWM") / 2**20, 1)
    FIGURES["rss_at_start_mb"] = round(server.start_rss / 2**20, 1)
    out = os.environ.get("REGATT_FAULTS_JSON")
    if out:
        old = json.loads(Path(out).read_text()) if Path(out).exists() else {}
        Path(out).write_text(json.dumps({**old, "hostile": FIGURES}, indent=1, sort_keys=True))


def check(server, cases, *, expect=range(400, 500)) -> dict[str, int]:
    statuses = {}
    for label, path, body, headers in cases:
        status, _, data = server.request("POST", path, body, headers, timeout=30)
        assert status in expect, (label, status, data[:300])
        assert json.loads(data)["error"], label
        statuses[label] = status
    FIGURES.setdefault("statuses", {}).update(statuses)
    return statuses


def test_decompression_bombs_and_huge_header_dims(server) -> None:
    before = vm(server.proc.pid, "VmRSS")
    cases = [
        ("png 100 MP bomb", png(10_000, 10_000)),
        ("png 16-bit 64 MP bomb", png(8_000, 8_000, depth=16, colour=2)),
        ("png header 200000x200000", png(200_000, 200_000, body=False)),
        ("png header 4294967295x1", png(2**32 - 1, 1, body=False)),
        ("png header 0x0", png(0, 0, body=False)),
        ("jpeg header 65535x65535", jpeg_header(65_535, 65_535)),
        ("jpeg header 10000x10000", jpeg_header(10_000, 10_000)),
        ("gif header 65535x65535", gif_header(65_535, 65_535)),
        ("bmp header 100000x100000", bmp_header(100_000, 100_000)),
        ("webp header 16384x16384", webp_header(16_384, 16_384)),
    ]
    got = check(server, [(label, "/v1/encode", data, {}) for label, data in cases], expect=(422,))
    assert len(got) == len(cases)
    assert vm(server.proc.pid, "VmRSS") - before < 64 * 2**20


def test_malformed_multipart(server, photo_dir: Path) -> None:
    good = (photo_dir / "coffee.jpg").read_bytes()
    body, headers = multipart({"top": "3"}, "image", good)
    b = headers["Content-Type"].split("boundary=")[1]
    cases = [
        ("no boundary", body, {"Content-Type": "multipart/form-data"}),
        ("wrong boundary", body, {"Content-Type": "multipart/form-data; boundary=nothere"}),
        ("no closing boundary", body[: -len(f"--{b}--\r\n")], headers),
        ("truncated in the image", body[: len(body) // 2], headers),
        ("no image field", multipart({"top": "3"}, None)[0], headers),
        ("empty body", b"", headers),
        ("garbage part headers", f"--{b}\r\nnot a header\r\n\r\nxx\r\n--{b}--\r\n".encode(), headers),
        (
            "non-UTF-8 field name",
            f'--{b}\r\nContent-Disposition: form-data; name="'.encode()
            + b"\xff\xfe"
            + f'"\r\n\r\nv\r\n--{b}--\r\n'.encode(),
            headers,
        ),  # fmt: skip
        ("image field is text", multipart({"image": "not a file"}, None)[0], headers),
        ("3000 fields", multipart({f"f{i}": "x" for i in range(3000)}, "image", good)[0], headers),
    ]
    fixed = []
    for label, data, head in cases:
        if label in ("no image field", "image field is text", "3000 fields"):
            boundary = data.split(b"\r\n", 1)[0][2:].decode()
            head = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
        fixed.append((label, "/v1/search", data, head))
    check(server, fixed)
    assert server.request("POST", "/v1/search", body, headers)[0] == 200


def test_bad_query_values_and_sizes(server, photo_dir: Path) -> None:
    good = (photo_dir / "coffee.jpg").read_bytes()
    cases = [
        ("top 10^9", "/v1/search?top=1000000000", good, {}),
        ("qe -1", "/v1/search?qe=-1", good, {}),
        ("roi inf", "/v1/search?roi=0,0,inf,inf", good, {}),
        ("roi nan", "/v1/search?roi=nan,nan,nan,nan", good, {}),
        ("roi 1e300", "/v1/search?roi=0,0,1e300,1e300", good, {}),
        ("roi outside", "/v1/search?roi=100000,100000,200000,200000", good, {}),
        ("top not a number", "/v1/search?top=%FF%FE", good, {}),
        ("over --max-bytes", "/v1/encode", b"\xff" * ((4 << 20) + 1), {}),
    ]
    check(server, cases)


def test_slow_clients_get_408_and_do_not_block_others(server, photo_dir: Path) -> None:
    """20 clients that stall in their body and 20 that stall in their headers: the body ones get
    408 after --body-timeout (1 s); meanwhile other requests are answered at once."""
    good = (photo_dir / "coffee.jpg").read_bytes()
    stalled_body, stalled_head = [], []
    for _ in range(20):
        s = socket.create_connection(("127.0.0.1", server.port), timeout=15)
        s.sendall(b"POST /v1/encode HTTP/1.1\r\nHost: x\r\nContent-Length: 50000\r\n\r\n" + b"\xff" * 512)
        stalled_body.append(s)
        h = socket.create_connection(("127.0.0.1", server.port), timeout=15)
        h.sendall(b"POST /v1/encode HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        stalled_head.append(h)
    t = time.monotonic()
    assert server.request("POST", "/v1/encode", good, timeout=10)[0] == 200
    assert server.request("GET", "/healthz", timeout=10)[0] == 200
    other = time.monotonic() - t
    answers: list = [None] * len(stalled_body)

    def read(i: int, s: socket.socket) -> None:
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        answers[i] = (data, time.monotonic() - t)

    threads = [threading.Thread(target=read, args=(i, s)) for i, s in enumerate(stalled_body)]
    [th.start() for th in threads]
    [th.join(20) for th in threads]
    for s in stalled_body + stalled_head:
        s.close()
    assert all(a is not None and a[0].startswith(b"HTTP/1.1 408") for a in answers), answers[:2]
    slowest = max(a[1] for a in answers)
    assert other < 5 and slowest < 6, (other, slowest)
    FIGURES["slow_clients"] = {"stalled_body": 20, "stalled_headers": 20, "status": 408,
                               "others_answered_s": round(other, 2), "last_408_s": round(slowest, 2)}  # fmt: skip


def test_a_client_dripping_its_body_gets_408(server) -> None:
    """A byte every 0.2 s never pauses for --body-timeout, but falls behind the minimum average
    rate: 408 within a few seconds, connection closed (not held for the 10000 s it would take)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=15) as s:
        s.sendall(b"POST /v1/encode HTTP/1.1\r\nHost: x\r\nContent-Length: 2000\r\n\r\n")
        t = time.monotonic()
        s.setblocking(False)
        data = b""
        while time.monotonic() - t < 12:
            try:
                s.send(b"\xff")
            except OSError:
                break
            time.sleep(0.2)
            try:
                chunk = s.recv(65536)
            except BlockingIOError:
                continue
            data += chunk
            if not chunk or data.endswith(b"}"):
                break
        took = time.monotonic() - t
    assert data.startswith(b"HTTP/1.1 408") and b"too slow" in data, data[:300]
    assert took < 4, took
    FIGURES["dripping_client"] = {"status": 408, "seconds": round(took, 2)}


def test_peak_rss_stays_bounded(server, photo_dir: Path) -> None:
    """After everything above (and four bombs at once), the server's peak RSS stays within
    160 MiB of what it used when it became ready."""
    results: list = [None] * 4
    barrier = threading.Barrier(4)

    def go(i: int) -> None:
        barrier.wait()
        results[i] = server.request("POST", "/v1/encode", png(10_000, 10_000), timeout=30)[0]

    threads = [threading.Thread(target=go, args=(i,)) for i in range(4)]
    [th.start() for th in threads]
    [th.join() for th in threads]
    assert results == [422] * 4
    assert server.request("POST", "/v1/encode", (photo_dir / "rocket.jpg").read_bytes())[0] == 200
    peak = vm(server.proc.pid, "VmHWM")
    assert peak - server.start_rss < 160 * 2**20, (peak / 2**20, server.start_rss / 2**20)
    m = server.metrics()
    assert not any('status="5' in k for k in m), [k for k in m if 'status="5' in k]
