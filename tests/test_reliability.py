"""Issue 23, the cases found by trying regatt as a careless or hostile user would: file names
that are not UTF-8 (or hold a newline), PostgreSQL going down under ``regatt serve --db``, decode
limits from the header, a non-finite ``roi``, a table name with a trailing newline, dedup moves of
symbolic links and hand-edited manifests, one-line errors instead of tracebacks, and a client
that stalls in its body. Real ``regatt`` processes, a real ``regatt serve`` on 127.0.0.1 and a
real PostgreSQL (its own, stopped and restarted here)."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

from regatt_sdk.dedup import moves
from regatt_sdk.dedup.moves import MANIFEST, MoveError, move_files, undo_moves
from regatt_sdk.errors import ImageError
from regatt_sdk.imageio import SERVE_MAX_DECODED_BYTES, decode_image, decoded_bytes, image_header
from regatt_sdk.names import display, to_path

ROOT = Path(__file__).resolve().parents[1]
SIDE = "128"
#: a file name that is not UTF-8 (as os.listdir gives it: surrogateescape) and one with a newline
BAD_BYTES = os.fsdecode(b"bad\xffbyte.jpg")
NEWLINE = "new\nline.jpg"


def regatt(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """``regatt ARGS...`` in a child process; stdout and stderr as bytes."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "sdk"), str(ROOT / "export")]))
    return subprocess.run([sys.executable, "-m", "regatt_sdk", *args], capture_output=True, timeout=timeout, env=env)


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    err = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == 2, (proc.returncode, err[-3000:])
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err[-3000:]
    assert err.startswith("error: "), err
    return err


def png_bomb(width: int, height: int) -> bytes:
    """A valid grayscale PNG of ``width x height`` zero pixels, a few KB: decodes to W*H*3 bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    z = zlib.compressobj(9)
    row = b"\x00" * (width + 1)
    idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


# -------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def odd_folder(photo_dir: Path, tmp_path_factory) -> Path:
    """The six photos, two of them under names that are not UTF-8 or hold a newline."""
    d = tmp_path_factory.mktemp("odd")
    for p in sorted(photo_dir.glob("*.jpg")):
        name = {"coffee.jpg": BAD_BYTES, "rocket.jpg": NEWLINE}.get(p.name, p.name)
        shutil.copy(p, d / name)
    return d


@pytest.fixture(scope="module")
def odd_store(tiny_model: Path, odd_folder: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("odd-store") / "store"
    r = regatt("encode", str(tiny_model), str(odd_folder), "-o", str(out), "--max-side", SIDE, "--no-progress")
    assert r.returncode == 0, r.stderr.decode("utf-8", "replace")
    return out


@pytest.fixture(scope="module")
def plain_store(tiny_model: Path, photo_dir: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("plain-store") / "store"
    r = regatt("encode", str(tiny_model), str(photo_dir), "-o", str(out), "--max-side", SIDE, "--no-progress")
    assert r.returncode == 0, r.stderr.decode("utf-8", "replace")
    return out


@pytest.fixture(scope="module")
def server(tiny_model: Path, odd_store: Path, tmp_path_factory):
    pytest.importorskip("fastapi", reason="pip install 'regatt[serve]'")
    from httpserver import Server

    log = tmp_path_factory.mktemp("rel-log") / "server.log"
    srv = Server(tiny_model, "--store", str(odd_store), "--max-side", SIDE, "--body-timeout", "1", log=log)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def own_postgres():
    """A PostgreSQL of this module's own (it is stopped and restarted): ``(server, url)``."""
    pytest.importorskip("psycopg_pool")
    from pgserver import start_postgres

    data = Path(tempfile.mkdtemp(prefix="regatt-pg-down-"))
    try:
        server, url = start_postgres(data)
    except RuntimeError as exc:
        shutil.rmtree(data, ignore_errors=True)
        pytest.skip(str(exc))
    yield server, url
    server.cleanup()
    shutil.rmtree(data, ignore_errors=True)


# -------------------------------------------------------------------------- 2: one name codec


def test_display_is_one_utf8_line_and_undoes() -> None:
    for name in (BAD_BYTES, NEWLINE, "tab\there.jpg", "x\x85y.jpg", "ok/é.jpg", "back\\slash.jpg"):
        shown = display(name)
        shown.encode("utf-8")  # no lone surrogates left
        assert "\n" not in shown and "\r" not in shown and "\x85" not in shown
        assert display(shown) == shown and to_path(shown) == name
    assert display(BAD_BYTES) == "bad\\xffbyte.jpg" and display(NEWLINE) == "new\\nline.jpg"
    assert display("ok/é.jpg") == "ok/é.jpg"


def test_names_not_utf8_or_with_a_newline(tiny_model: Path, odd_folder: Path, odd_store: Path, server) -> None:
    """Stored exactly; shown escaped (one hit a line) by search, serve and a --db table alike."""
    from regatt_sdk.store import FeatureStore

    names = FeatureStore.open(odd_store).names
    assert str(odd_folder / BAD_BYTES) in names and str(odd_folder / NEWLINE) in names  # exact
    query = odd_folder / "chelsea.jpg"
    r = regatt("search", str(tiny_model), str(odd_store), str(query), "--max-side", SIDE, "--top", "6")
    assert r.returncode == 0, r.stderr.decode("utf-8", "replace")
    lines = r.stdout.decode("utf-8").splitlines()  # valid UTF-8
    assert len(lines) == 6 and all(re.fullmatch(r" *\d+  \d\.\d{6}  \S.*", line) for line in lines), lines
    shown = {re.fullmatch(r" *\d+  \d\.\d{6}  (.*)", line).group(1) for line in lines}
    assert display(str(odd_folder / BAD_BYTES)) in shown and display(str(odd_folder / NEWLINE)) in shown
    assert str(odd_folder) + "/bad\\xffbyte.jpg" in shown
    # the server answers the same names (was: 500 on every search whose hits included one)
    status, body = server.json("POST", "/v1/search?top=6", query.read_bytes())
    assert status == 200, body
    assert [f"{h['rank']:4d}  {h['score']:.6f}  {h['name']}" for h in body["hits"]] == lines


def test_names_not_utf8_in_a_db_table(tiny_model: Path, odd_folder: Path, odd_store: Path, pg_url: str) -> None:
    """``index --db`` loads them (was: a traceback and an empty table); ``search --db`` prints what
    ``search`` over the store prints; a re-run adds nothing."""
    pytest.importorskip("psycopg")
    for added in ("6 rows added", "0 rows added"):
        r = regatt("index", str(tiny_model), "--resume", "-o", str(odd_store), "--db", pg_url, "--table", "odd_names")
        assert r.returncode == 0 and added in r.stdout.decode() + r.stderr.decode(), r.stderr.decode("utf-8", "replace")
    query = str(odd_folder / "chelsea.jpg")
    args = ("search", str(tiny_model), "--max-side", SIDE, "--top", "6")
    by_db = regatt(*args, "--db", pg_url, "--table", "odd_names", query)
    by_store = regatt(*args, str(odd_store), query)
    assert by_db.returncode == 0 and by_db.stdout == by_store.stdout, (by_db.stderr, by_db.stdout, by_store.stdout)


def test_names_not_utf8_in_dedup_outputs_and_failure_lines(odd_folder: Path, odd_store: Path, tmp_path: Path) -> None:
    """``dedup --store`` writes groups.csv, groups.json and remove.txt (one path a line) for such
    names (was: UnicodeEncodeError); a failed file with such a name is one ``failed:`` line."""
    out = tmp_path / "out"
    r = regatt("dedup", "--store", str(odd_store), "-o", str(out), "--threshold", "-1", "--keep", "first")
    assert r.returncode == 0, r.stderr.decode("utf-8", "replace")
    removes = (out / "remove.txt").read_text(encoding="utf-8").splitlines()
    assert len(removes) == 5 and display(str(odd_folder / NEWLINE)) in removes
    assert display(str(odd_folder / BAD_BYTES)) in removes
    assert all(Path(to_path(p)).is_file() for p in removes)  # the displayed paths lead back to the files
    assert len((out / "groups.csv").read_text(encoding="utf-8").splitlines()) == 7
    json.loads((out / "groups.json").read_text(encoding="utf-8"))
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / os.fsdecode(b"broken\xff\nfile.jpg")).write_bytes(b"not an image")
    r = regatt("encode", str(ROOT / "tests" / "fixtures" / "tiny.onnx"), str(bad), "-o", str(tmp_path / "s"),
               "--no-progress")  # fmt: skip
    err = r.stderr.decode("utf-8")
    assert r.returncode == 1 and "failed: " in err and "broken\\xff\\nfile.jpg" in err, err
    assert len([line for line in err.splitlines() if "broken" in line]) == 1, err


# -------------------------------------------------------------------------- 3: database down


def test_server_over_a_database_that_goes_down(
    tiny_model: Path, plain_store: Path, own_postgres, tmp_path: Path, photo_dir: Path
) -> None:
    """PostgreSQL stopped under ``serve --db``: 503 + Retry-After within ~2 s (was 500, then 30 s
    waits), /readyz says the database is unreachable; searches work again once it is back."""
    from httpserver import Server
    from pgserver import restart_postgres, stop_postgres
    from regatt_sdk.index.pgvector import load_store

    pg, url = own_postgres
    load_store(plain_store, url, table="down")
    srv = Server(tiny_model, "--db", url, "--table", "down", "--max-side", SIDE, "--db-pool", "2", log=tmp_path / "log")
    image = (photo_dir / "astronaut.jpg").read_bytes()
    try:
        status, body = srv.json("POST", "/v1/search?top=3", image)
        assert status == 200, body
        status, ready = srv.json("GET", "/readyz")
        assert status == 200 and ready["database"] == "ok"
        stop_postgres(pg)
        for _ in range(4):
            t = time.monotonic()
            status, head, data = srv.request("POST", "/v1/search?top=3", image, timeout=10)
            took = time.monotonic() - t
            assert status == 503 and head.get("retry-after") == "1", (status, data)
            assert b"database unavailable" in data and took < 3.0, (took, data)
        t = time.monotonic()
        status, _, data = srv.request("GET", "/readyz", timeout=10)
        assert status == 503 and b"unreachable" in data and time.monotonic() - t < 3.0, data
        assert srv.request("POST", "/v1/encode", image)[0] == 200  # the encoder does not need it
        assert restart_postgres(pg) == url
        deadline = time.monotonic() + 20
        while True:
            status, _, data = srv.request("POST", "/v1/search?top=3", image, timeout=10)
            if status == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert status == 200, data
        assert srv.json("GET", "/readyz")[0] == 200
        assert srv.proc.poll() is None
        assert "Traceback" not in (tmp_path / "log").read_text()
    finally:
        srv.stop()
        if pg.get_pid() is None:
            restart_postgres(pg)


# -------------------------------------------------------------------------- 4: decode limits


def test_decode_limit_is_read_from_the_header() -> None:
    bomb = png_bomb(10_000, 10_000)  # 100 megapixels in a few KB
    assert len(bomb) < 200_000
    info = image_header(bomb)
    assert (info.width, info.height) == (10_000, 10_000) and decoded_bytes(info) == 300_000_000
    with pytest.raises(ImageError, match="decoding it takes 286 MiB, over the limit of 128 MiB"):
        decode_image(bomb, max_decoded_bytes=SERVE_MAX_DECODED_BYTES)
    small = png_bomb(64, 48)
    assert decode_image(small, max_decoded_bytes=64 * 48 * 3).shape == (48, 64, 3)  # inclusive limit
    with pytest.raises(ImageError, match="decoded pixels"):
        decode_image(small, max_decoded_bytes=64 * 48 * 3 - 1)


def test_server_refuses_big_decodes_before_decoding(server) -> None:
    """A 100-megapixel PNG of a few KB (and a JPEG header saying 10000x10000) -> 422 and no RSS
    growth (was: accepted, ~585 MB each)."""
    before = server.metrics()["regatt_process_resident_bytes"]
    jpeg = (b"\xff\xd8\xff\xc0\x00\x11\x08" + struct.pack(">HH", 10_000, 10_000)
            + b"\x03\x01\x22\x00\x02\x11\x01\x03\x11\x01" + b"\xff\xd9")  # fmt: skip
    for data in (png_bomb(10_000, 10_000), jpeg):
        status, _, body = server.request("POST", "/v1/encode", data)
        assert status == 422 and b"decoded pixels" in body, body
    grew = server.metrics()["regatt_process_resident_bytes"] - before
    assert grew < 50 * 2**20, grew


# -------------------------------------------------------------------------- 5: roi not finite


def test_roi_inf_or_nan_is_422(server, photo_dir: Path) -> None:
    image = (photo_dir / "coffee.jpg").read_bytes()
    for roi in ("0,0,inf,inf", "0,0,1e39,1e39", "nan,0,10,10", "0,0,10,nan", "-inf,0,10,10"):
        status, _, body = server.request("POST", f"/v1/search?roi={roi}", image)
        assert status == 422, (roi, status, body)
    assert server.request("POST", "/v1/search?roi=0,0,100,100", image)[0] == 200


# -------------------------------------------------------------------------- 6: table names


def test_table_name_with_a_trailing_newline_is_refused(tiny_model: Path, photo_dir: Path) -> None:
    from regatt_sdk.index.pgvector import DatabaseError, check_table

    assert check_table("ok_name") == "ok_name"
    for bad in ("name\n", "Name", "a-b", "x;drop", "", "a" * 42):
        with pytest.raises(DatabaseError, match="table name"):
            check_table(bad)
    r = regatt("search", str(tiny_model), "--db", "postgresql://nobody@127.0.0.1:9/x", "--table", "name\n",
               str(photo_dir / "coffee.jpg"))  # fmt: skip
    assert "table name 'name\\n'" in one_line_error(r)


# -------------------------------------------------------------------------- 7: dedup moves


def test_move_symlinks_and_undo_restores_them(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    (photos / "real").mkdir(parents=True)
    target = photos / "real" / "a.jpg"
    target.write_bytes(b"a" * 100)
    (photos / "link.jpg").symlink_to("real/a.jpg")  # relative, as most links are
    (photos / "abs.jpg").symlink_to(target)
    plain = photos / "b.jpg"
    plain.write_bytes(b"b" * 50)
    dest = tmp_path / "moved"
    rep = move_files([photos / "link.jpg", photos / "abs.jpg", plain], dest, root=photos)
    assert len(rep.done) == 3 and not rep.skipped
    assert target.read_bytes() == b"a" * 100  # the target never moves
    assert not os.path.lexists(photos / "link.jpg") and (dest / "link.jpg").is_symlink()
    entries = {Path(e["src"]).name: e for e in json.loads((dest / MANIFEST).read_text())["moves"]}
    assert entries["link.jpg"]["src"] == str(photos / "link.jpg") and entries["link.jpg"]["link"] == "real/a.jpg"
    undo = undo_moves(dest)
    assert len(undo.done) == 3 and not undo.skipped, undo
    assert os.readlink(photos / "link.jpg") == "real/a.jpg" and (photos / "link.jpg").read_bytes() == b"a" * 100
    assert os.readlink(photos / "abs.jpg") == str(target) and plain.read_bytes() == b"b" * 50


def test_undo_refuses_entries_outside_the_move_folder(tmp_path: Path) -> None:
    dest = tmp_path / "moved"
    f = tmp_path / "photos" / "a.jpg"
    f.parent.mkdir()
    f.write_bytes(b"x")
    move_files([f], dest, root=f.parent)
    outside = tmp_path / "elsewhere" / "precious.txt"
    outside.parent.mkdir()
    outside.write_text("keep me")
    manifest = json.loads((dest / MANIFEST).read_text())
    manifest["moves"].append({"src": str(tmp_path / "stolen.txt"), "dst": str(outside), "size": 7, "state": "moved"})
    manifest["moves"].append({"src": str(tmp_path / "up.txt"), "dst": str(dest / ".." / "elsewhere" / "precious.txt"),
                              "size": 7, "state": "moved"})  # fmt: skip
    (dest / MANIFEST).write_text(json.dumps(manifest))
    rep = undo_moves(dest)
    assert f.read_bytes() == b"x" and outside.read_text() == "keep me"
    assert not (tmp_path / "stolen.txt").exists() and not (tmp_path / "up.txt").exists()
    assert [why for _, why in rep.skipped] == [f"outside the move folder {dest}; not touched"] * 2


# -------------------------------------------------------------------------- 8: one line, not a traceback


def test_serve_with_a_damaged_store_or_bad_table_is_one_line(tiny_model: Path, odd_store: Path, tmp_path: Path) -> None:
    damaged = tmp_path / "damaged"
    shutil.copytree(odd_store, damaged)
    m = json.loads((damaged / "manifest.json").read_text())
    m["names_bytes"] += 1000  # claims more names than the file holds
    (damaged / "manifest.json").write_text(json.dumps(m))
    r = regatt("serve", str(tiny_model), "--store", str(damaged), "--port", "0", "--no-warmup")
    assert "store damaged" in one_line_error(r)
    r = regatt("serve", str(tiny_model), "--db", "postgresql://nobody@127.0.0.1:9/x", "--table", "Bad-Name",
               "--port", "0", "--no-warmup")  # fmt: skip
    assert "table name 'Bad-Name'" in one_line_error(r)


def full_disk_after(monkeypatch, nbytes: int) -> None:
    """Moves cross file systems and the disk fills after ``nbytes`` of a copy (ENOSPC)."""
    real_rename = os.rename

    def rename(src, dst, *a, **kw):
        if MANIFEST in os.fspath(dst):
            return real_rename(src, dst, *a, **kw)  # the manifest's own atomic replace
        raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))

    written = {"n": 0}

    def write_block(fh, data: bytes) -> None:
        room = max(0, nbytes - written["n"])
        fh.write(data[:room])
        written["n"] += min(room, len(data))
        if room < len(data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(moves.os, "rename", rename)
    monkeypatch.setattr(moves, "_write_block", write_block)


def test_move_to_on_a_full_disk(tmp_path: Path, monkeypatch) -> None:
    """ENOSPC in the middle of a cross-device move: one line, the original in place, no partial
    copy left for --undo to call "the moved copy"."""
    photos = tmp_path / "photos"
    photos.mkdir()
    files = [photos / f"{k}.jpg" for k in range(3)]
    for k, f in enumerate(files):
        f.write_bytes(bytes([k]) * 3000)
    dest = tmp_path / "moved"
    full_disk_after(monkeypatch, 4000)  # the first file fits, the second does not
    with pytest.raises(MoveError, match=r"cannot move .*1\.jpg.*No space left on device; .* is still in place"):
        move_files(files, dest, root=photos)
    monkeypatch.undo()
    assert not files[0].exists() and files[1].read_bytes() == bytes([1]) * 3000 and files[2].exists()
    assert not (dest / "1.jpg").exists()  # the partial copy is gone
    states = [e["state"] for e in json.loads((dest / MANIFEST).read_text())["moves"]]
    assert states == ["moved", "failed"]
    rep = undo_moves(dest)
    assert len(rep.done) == 1 and not rep.skipped and files[0].read_bytes() == bytes([0]) * 3000


def test_dedup_move_to_on_a_full_disk_is_one_line(tmp_path: Path, monkeypatch, capsys) -> None:
    from regatt_sdk.cli.app import main
    from regatt_sdk.store import FeatureStore

    photos = tmp_path / "photos"
    photos.mkdir()
    files = [photos / f"{k}.jpg" for k in range(3)]
    for k, f in enumerate(files):
        f.write_bytes(bytes([k]) * 3000)
    vec = np.full((3, 4), 0.5, np.float32)
    with FeatureStore.create(tmp_path / "store", card_hash="c", dim=4) as st:
        st.append([str(f) for f in files], vec)
    full_disk_after(monkeypatch, 100)
    with pytest.raises(SystemExit) as info:
        main(["dedup", "--store", str(tmp_path / "store"), "-o", str(tmp_path / "out"), "--threshold", "0.9",
              "--move-to", str(tmp_path / "moved")])  # fmt: skip
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.startswith("error: cannot move") and len(err.strip().splitlines()) == 1, err
    assert all(f.exists() for f in files)


# -------------------------------------------------------------------------- 10: slow clients


def test_a_stalled_body_gets_408_and_the_connection_closes(server) -> None:
    """A client that sends 1 KB of a 100 KB body and stalls is answered 408 after --body-timeout
    (1 s here) and its connection closed (was: held forever)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"POST /v1/encode HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
                  b"Content-Length: 100000\r\n\r\n" + b"\xff" * 1024)  # fmt: skip
        t = time.monotonic()
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        took = time.monotonic() - t
    assert data.startswith(b"HTTP/1.1 408") and b"too slow" in data, data[:300]
    assert 0.5 < took < 5, took
    assert server.request("GET", "/healthz")[0] == 200
