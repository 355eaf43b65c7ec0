"""``regatt serve``: a real uvicorn server on 127.0.0.1 (a child process), real images, bad
uploads, micro-batching, the bounded queue, timeouts, metrics, graceful shutdown, and search
over a store and over a real PostgreSQL table."""

from __future__ import annotations

import signal
import struct
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="pip install 'regatt[serve]'")
pytest.importorskip("uvicorn", reason="pip install 'regatt[serve]'")

from httpserver import Server, multipart  # noqa: E402
from regatt_sdk.encoder import Encoder  # noqa: E402
from regatt_sdk.pipeline import encode_to_store  # noqa: E402

SIDE = "128"


@pytest.fixture(scope="module")
def store(tiny_model: Path, photo_dir: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("serve") / "store"
    encode_to_store(Encoder(tiny_model, device="cpu", max_side=int(SIDE)), [str(photo_dir)], out, progress=False)
    return out


@pytest.fixture(scope="module")
def server(tiny_model: Path, store: Path, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve-log") / "server.log"
    srv = Server(
        tiny_model, "--store", str(store), "--max-side", SIDE, "--window-ms", "50", "--max-bytes", str(2**21), log=log
    )
    yield srv
    srv.stop()


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width x height`` (a decompression bomb's first bytes)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk)) + b"\x00" * 64


def test_encode_matches_the_encoder(server: Server, tiny_model: Path, photo_dir: Path) -> None:
    enc = Encoder(tiny_model, device="cpu", max_side=int(SIDE))
    for path in sorted(photo_dir.glob("*.jpg")):
        status, body = server.json("POST", "/v1/encode", path.read_bytes())
        assert status == 200, body
        np.testing.assert_array_equal(np.asarray(body["descriptor"], np.float32), enc.encode(path))
        assert body["card_hash"] == enc.card.hash and body["dim"] == enc.dim
    path = photo_dir / "coffee.jpg"
    data, headers = multipart({"roi": "50,40,300,200"}, "image", path.read_bytes())
    status, body = server.json("POST", "/v1/encode", data, headers)
    assert status == 200, body
    np.testing.assert_array_equal(np.asarray(body["descriptor"], np.float32), enc.encode(path, roi=(50, 40, 300, 200)))
    assert body["image_size"] == [600, 400]
    status, head, raw = server.request(
        "POST", "/v1/encode?roi=50,40,300,200", path.read_bytes(), {"Accept": "application/octet-stream"}
    )
    assert status == 200 and head["content-type"] == "application/octet-stream"
    assert head["x-regatt-card-hash"] == enc.card.hash and head["x-regatt-image-size"] == "600x400"
    np.testing.assert_array_equal(np.frombuffer(raw, "<f4"), enc.encode(path, roi=(50, 40, 300, 200)))


def test_concurrent_requests_are_batched(server: Server, tiny_model: Path, photo_dir: Path) -> None:
    enc = Encoder(tiny_model, device="cpu", max_side=int(SIDE))
    path = photo_dir / "astronaut.jpg"
    want = enc.encode(path)
    before = server.metrics()
    results: list = [None] * 8
    barrier = threading.Barrier(8)

    def go(i: int) -> None:
        barrier.wait()
        results[i] = server.json("POST", "/v1/encode", path.read_bytes())

    threads = [threading.Thread(target=go, args=(i,)) for i in range(8)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    for status, body in results:
        assert status == 200, body
        np.testing.assert_allclose(np.asarray(body["descriptor"], np.float32), want, atol=1e-5)
    after = server.metrics()
    batches = after["regatt_batch_size_count"] - before.get("regatt_batch_size_count", 0)
    images = after["regatt_batch_size_sum"] - before.get("regatt_batch_size_sum", 0)
    assert images == 8 and batches < 8  # at least one batch held several images


def test_search_over_the_store(server: Server, photo_dir: Path) -> None:
    status, body = server.json("POST", "/v1/search?top=3", (photo_dir / "chelsea.jpg").read_bytes())
    assert status == 200, body
    assert [h["rank"] for h in body["hits"]] == [1, 2, 3]
    assert body["hits"][0]["name"].endswith("chelsea.jpg") and body["hits"][0]["score"] > 0.999
    data, headers = multipart({"top": "6", "qe": "2"}, "image", (photo_dir / "chelsea.jpg").read_bytes())
    status, body = server.json("POST", "/v1/search", data, headers)
    assert status == 200 and len(body["hits"]) == 6


def test_bad_uploads_get_their_4xx_and_the_server_goes_on(server: Server, photo_dir: Path) -> None:
    good = (photo_dir / "rocket.jpg").read_bytes()
    no_image, mp_headers = multipart({"roi": "1,2,3,4"}, None)
    cases = [
        ("POST", "/v1/encode", b"", {}, 422, "empty upload"),
        ("POST", "/v1/encode", b"hello, this is text\n" * 20, {}, 422, "text"),
        ("POST", "/v1/encode", good[: len(good) // 2], {}, 422, "truncated"),
        ("POST", "/v1/encode", png_header(200_000, 200_000), {}, 422, "decompression-bomb"),
        ("POST", "/v1/encode", b"\xff\xd8\xff" + b"\x00" * 100, {}, 422, "JPEG"),
        ("POST", "/v1/encode", b"x" * (2**21 + 10), {}, 413, "over the limit"),
        ("POST", "/v1/encode", no_image, mp_headers, 422, "'image'"),
        ("POST", "/v1/encode?roi=5,5,1,1", good, {}, 422, "x1 < x2"),
        ("POST", "/v1/encode?roi=a,b", good, {}, 422, "four numbers"),
        ("POST", "/v1/search?top=0", good, {}, 422, "top 0"),
        ("POST", "/v1/search?qe=x", good, {}, 422, "qe 'x'"),
        ("GET", "/v1/encode", None, {}, 405, ""),
        ("POST", "/v2/nothing", good, {}, 404, ""),
    ]
    for method, path, body, headers, want, text in cases:
        status, _, data = server.request(method, path, body, headers)
        assert status == want, (path, text, data[:300])
        assert text in data.decode("utf-8", "replace"), data[:300]
        status, _, _ = server.request("POST", "/v1/encode", good)
        assert status == 200
    m = server.metrics()
    assert m['regatt_requests_total{endpoint="/v1/encode",status="413"}'] >= 1
    assert m['regatt_requests_total{endpoint="/v1/encode",status="422"}'] >= 8
    assert not any('status="5' in k for k in m), [k for k in m if 'status="5' in k]


def test_health_metrics_openapi(server: Server) -> None:
    assert server.json("GET", "/healthz") == (200, {"status": "ok"})
    status, ready = server.json("GET", "/readyz")
    assert status == 200 and ready["ready"] and ready["golden_max_diff"] <= 1e-4 and ready["index"]["rows"] == 6
    assert ready["memory"] == "arena"  # the server's default memory plan
    assert isinstance(ready["warmup_s"], float) and ready["warmup_s"] >= 0  # warmed up before ready
    status, head, text = server.request("GET", "/metrics")
    assert status == 200 and head["content-type"].startswith("text/plain")
    text = text.decode()
    for name in ("regatt_requests_total", "regatt_request_seconds_bucket", "regatt_queue_depth",
                 "regatt_batch_size_bucket", "regatt_process_resident_bytes"):  # fmt: skip
        assert name in text
    status, doc = server.json("GET", "/openapi.json")
    assert status == 200 and {"/v1/encode", "/v1/search", "/healthz", "/readyz", "/metrics"} <= set(doc["paths"])
    assert "multipart/form-data" in doc["paths"]["/v1/encode"]["post"]["requestBody"]["content"]


def test_full_queue_503_then_graceful_shutdown(tiny_model: Path, photo_dir: Path, tmp_path: Path) -> None:
    srv = Server(tiny_model, "--max-side", "640", "--max-batch", "1", "--max-queue", "3", log=tmp_path / "log")
    big = (photo_dir / "hubble_deep_field.jpg").read_bytes()
    try:
        results: list = [None] * 12
        barrier = threading.Barrier(12)

        def go(i: int) -> None:
            barrier.wait()
            results[i] = srv.request("POST", "/v1/encode", big)

        threads = [threading.Thread(target=go, args=(i,)) for i in range(12)]
        [t.start() for t in threads]
        [t.join() for t in threads]
        codes = sorted(r[0] for r in results)
        assert set(codes) == {200, 503} and codes.count(200) >= 3, codes
        busy = next(r for r in results if r[0] == 503)
        assert busy[1]["retry-after"] == "1" and b"server busy" in busy[2]
        assert srv.request("POST", "/v1/encode", big)[0] == 200
        # graceful shutdown: requests admitted before SIGTERM are answered, then a clean exit
        out: list = [None] * 3
        threads = [
            threading.Thread(target=lambda i=i: out.__setitem__(i, srv.request("POST", "/v1/encode", big)))
            for i in range(3)
        ]
        [t.start() for t in threads]
        for _ in range(500):
            if srv.metrics().get("regatt_queue_depth", 0) >= 2:
                break
        srv.proc.send_signal(signal.SIGTERM)
        [t.join() for t in threads]
        assert [r[0] for r in out] == [200, 200, 200]
        # uvicorn re-raises SIGTERM once it has shut down cleanly
        assert srv.proc.wait(60) in (0, -signal.SIGTERM)
        assert "Traceback" not in (tmp_path / "log").read_text()
    finally:
        srv.stop()


def test_timeout_gives_503(tiny_model: Path, photo_dir: Path, tmp_path: Path) -> None:
    srv = Server(tiny_model, "--max-side", "640", "--timeout", "0.001", log=tmp_path / "log")
    try:
        status, head, data = srv.request("POST", "/v1/encode", (photo_dir / "hubble_deep_field.jpg").read_bytes())
        assert status == 503 and head["retry-after"] == "1" and b"timed out" in data
        assert srv.json("GET", "/healthz")[0] == 200
    finally:
        srv.stop()


def test_search_over_postgres(pg_url: str, tiny_model: Path, store: Path, photo_dir: Path, tmp_path: Path) -> None:
    """``regatt index --db`` loads the store; ``regatt search --db`` and ``serve --db`` query it,
    with the same hits as the store."""
    pytest.importorskip("psycopg")
    from typer.testing import CliRunner

    from regatt_sdk.cli.app import build

    runner = CliRunner()
    r = runner.invoke(
        build(), ["index", str(tiny_model), "--resume", "-o", str(store), "--db", pg_url, "--table", "serve_t"]
    )
    assert r.exit_code == 0 and "6 rows added" in r.output, r.output
    r = runner.invoke(
        build(), ["index", str(tiny_model), "--resume", "-o", str(store), "--db", pg_url, "--table", "serve_t"]
    )
    assert r.exit_code == 0 and "0 rows added" in r.output, r.output
    query = photo_dir / "coffee.jpg"
    args = ["search", str(tiny_model), "--max-side", SIDE, "--top", "6", "--qe", "2"]
    by_db = runner.invoke(build(), [*args, "--db", pg_url, "--table", "serve_t", str(query)])
    by_store = runner.invoke(build(), [*args, str(store), str(query)])
    assert by_db.exit_code == 0 and by_db.output == by_store.output, (by_db.output, by_store.output)
    dba = runner.invoke(build(), [*args, "--dba", "2", "--db", pg_url, "--table", "serve_t", str(query)])
    assert (
        dba.exit_code == 0
        and dba.output == runner.invoke(build(), [*args, "--dba", "2", str(store), str(query)]).output
    )
    srv = Server(tiny_model, "--db", pg_url, "--table", "serve_t", "--max-side", SIDE, log=tmp_path / "log")
    try:
        status, body = srv.json("POST", "/v1/search?top=6&qe=2", query.read_bytes())
        assert status == 200, body
        lines = [f"{h['rank']:4d}  {h['score']:.6f}  {h['name']}" for h in body["hits"]]
        assert "\n".join(lines) + "\n" == by_store.output
        assert srv.json("GET", "/readyz")[1]["index"]["backend"] == "pgvector"
    finally:
        srv.stop()


def with_app_name(url: str, name: str) -> str:
    """``url`` with libpq's ``application_name`` set, so the test can find its connections."""
    return url + ("&" if "?" in url else "?") + f"application_name={name}"


def backend_pids(url: str, app: str) -> set[int]:
    """Server processes of the connections that ``app`` holds open at ``url``."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute("SELECT pid FROM pg_stat_activity WHERE application_name = %s", (app,)).fetchall()
    return {r[0] for r in rows}


def test_concurrent_searches_share_a_db_pool(
    pg_url: str, tiny_model: Path, store: Path, photo_dir: Path, tmp_path: Path
) -> None:
    """``serve --db --db-pool 3``: concurrent searches get the same hits as one at a time, over
    the same three connections, opened at start (not one per request, not one for all)."""
    pytest.importorskip("psycopg_pool")
    from regatt_sdk.index.pgvector import load_store

    load_store(store, pg_url, table="serve_pool")
    app = "regatt_pool_test"
    srv = Server(
        tiny_model, "--db", with_app_name(pg_url, app), "--table", "serve_pool", "--max-side", SIDE,
        "--db-pool", "3", log=tmp_path / "log",
    )  # fmt: skip
    try:
        pids = backend_pids(pg_url, app)
        assert len(pids) == 3, pids
        photos = sorted(photo_dir.glob("*.jpg"))
        alone = {}
        for path in photos:
            status, body = srv.json("POST", "/v1/search?top=4&qe=1", path.read_bytes())
            assert status == 200, body
            alone[path.name] = body["hits"]
            assert body["hits"][0]["name"].endswith(path.name)
        results: list = [None] * 18
        barrier = threading.Barrier(len(results))

        def go(i: int) -> None:
            path = photos[i % len(photos)]
            barrier.wait()
            results[i] = (path.name, srv.json("POST", "/v1/search?top=4&qe=1", path.read_bytes()))

        threads = [threading.Thread(target=go, args=(i,)) for i in range(len(results))]
        [t.start() for t in threads]
        [t.join() for t in threads]
        for name, (status, body) in results:
            assert status == 200, body
            assert [(h["rank"], h["name"], h["row"]) for h in body["hits"]] == [
                (h["rank"], h["name"], h["row"]) for h in alone[name]
            ]
            # a query batched with others differs from its batch-of-one descriptor in the last bits
            np.testing.assert_allclose([h["score"] for h in body["hits"]], [h["score"] for h in alone[name]], atol=1e-5)
        assert backend_pids(pg_url, app) == pids  # the same connections served every request
    finally:
        srv.stop()
    assert backend_pids(pg_url, app) == set()  # closed on shutdown


def test_help_texts_keep_the_extras_they_name() -> None:
    """Every help text naming ``regatt[extra]`` shows it (rich markup used to eat ``[ray]``)."""
    import re

    from typer.main import get_command
    from typer.testing import CliRunner

    from regatt_sdk.cli.app import build

    app = build()
    group = get_command(app)
    named = 0
    for name, cmd in group.commands.items():
        texts = [getattr(p, "help", None) or "" for p in cmd.params] + [cmd.help or ""]
        extras = {m for t in texts for m in re.findall(r"regatt\[[a-z]+\]", t)}
        if not extras:
            continue
        out = CliRunner().invoke(app, [name, "--help"], terminal_width=200).output
        for extra in extras:
            named += 1
            assert extra in out, (name, extra)
    assert named >= 3  # encode --ray, index --ray, serve --db, search --db...


def test_warm_up_runs_the_largest_batch_at_the_prepared_side() -> None:
    """One batch of max_batch square images at prepare_side: the largest input the batcher can
    hand the engine, so its arena is grown before the first request, not during the load."""
    import numpy as np

    from regatt_sdk.serve.app import warm_up

    class Recorder:
        prepare_side = 96
        shapes: list = []

        def encode_prepared(self, x):
            self.shapes.append((x.shape, x.dtype))
            return np.zeros((x.shape[0], 4), np.float32)

    enc = Recorder()
    assert warm_up(enc, 8) >= 0
    assert enc.shapes == [((8, 96, 96, 3), np.dtype(np.uint8))]
