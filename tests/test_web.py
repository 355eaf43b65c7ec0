"""The search page of ``regatt serve`` (serve/web.py) against a real server on 127.0.0.1: the page
and its assets, /v1/info, thumbnails (made once, cached, never from a file outside the
collection: ``../``, absolute and symlink-out names, removed and unknown rows), /v1/duplicates."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="pip install 'regatt[serve]'")
pytest.importorskip("uvicorn", reason="pip install 'regatt[serve]'")

from httpserver import Server  # noqa: E402
from regatt_sdk.encoder import Encoder  # noqa: E402
from regatt_sdk.pipeline import encode_to_store  # noqa: E402

SIDE = "128"


@pytest.fixture(scope="module")
def collection(tiny_model: Path, photo_dir: Path, tmp_path_factory) -> dict:
    """A photo folder with a copy of one photo and a link pointing out of it, its store (with
    crafted rows named ``../``, absolute outside, missing; one row removed) and a dedup output."""
    from typer.testing import CliRunner

    from regatt_sdk.cli.app import build
    from regatt_sdk.store import FeatureStore
    from regatt_sdk.tombstones import remove

    root = tmp_path_factory.mktemp("web")
    coll, outside = root / "photos", root / "outside"
    coll.mkdir()
    outside.mkdir()
    for p in sorted(photo_dir.glob("*.jpg")):
        shutil.copy(p, coll / p.name)
    shutil.copy(coll / "chelsea.jpg", coll / "chelsea-copy.jpg")
    shutil.copy(coll / "coffee.jpg", outside / "secret.jpg")
    os.symlink(outside / "secret.jpg", coll / "link.jpg")
    store = root / "store"
    encode_to_store(Encoder(tiny_model, device="cpu", max_side=int(SIDE)), [str(coll)], store, progress=False)
    s = FeatureStore.open(store, writable=True)
    crafted = ["../outside/secret.jpg", str(outside / "secret.jpg"), f"{coll}/../outside/secret.jpg", "missing.jpg"]
    rng = np.random.default_rng(0)
    vecs = rng.standard_normal((len(crafted), s.dim)).astype(np.float32)
    s.append(crafted, vecs / np.linalg.norm(vecs, axis=1, keepdims=True))
    names = s.names
    remove(s, [names.index(str(coll / "rocket.jpg"))])
    out = root / "dedup"
    r = CliRunner().invoke(build(), ["dedup", "--store", str(store), "-o", str(out), "--threshold", "0.99999"])
    assert r.exit_code == 0, r.output
    return {"coll": coll, "outside": outside, "store": store, "names": FeatureStore.open(store).names, "dedup": out}


@pytest.fixture(scope="module")
def server(tiny_model: Path, collection: dict, tmp_path_factory):
    log = tmp_path_factory.mktemp("web-log") / "server.log"
    srv = Server(
        tiny_model, "--store", str(collection["store"]), "--max-side", SIDE, "--images", str(collection["coll"]),
        "--dedup", str(collection["dedup"]), log=log,
    )  # fmt: skip
    yield srv
    srv.stop()


def row_of(collection: dict, name: str) -> int:
    return collection["names"].index(name)


def test_page_and_assets(server: Server) -> None:
    status, head, body = server.request("GET", "/")
    assert status == 200 and head["content-type"].startswith("text/html")
    page = body.decode()
    assert '<script src="/static/app.js">' in page and "/static/app.css" in page and 'id="file"' in page
    assert "http://" not in page and "https://" not in page  # works without internet
    status, head, body = server.request("GET", "/static/app.js")
    assert status == 200 and "javascript" in head["content-type"] and b"/v1/search" in body
    status, head, body = server.request("GET", "/static/app.css")
    assert status == 200 and head["content-type"].startswith("text/css")
    for path in ("/static/../app.py", "/static/web.py", "/static/index.html/../../app.py"):
        assert server.request("GET", path)[0] == 404, path
    status, info = server.json("GET", "/v1/info")
    assert status == 200, info
    assert info["search"] and info["thumbnails"] and info["duplicates"] and info["rerank"] is False
    assert info["rows"] == server.json("GET", "/readyz")[1]["index"]["rows"]


def test_thumbnails_are_made_once_and_cached(server: Server, collection: dict) -> None:
    import cv2

    row = row_of(collection, str(collection["coll"] / "coffee.jpg"))
    status, head, body = server.request("GET", f"/v1/thumb?row={row}")
    assert status == 200, body
    assert head["content-type"] == "image/jpeg"
    img = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR)
    assert img.shape[:2] == (171, 256)  # 600 x 400 -> 256 px on the long side
    cached = list((collection["store"] / "thumbs").glob(f"{row}-*.jpg"))
    assert len(cached) == 1 and cached[0].read_bytes() == body
    mtime = cached[0].stat().st_mtime_ns
    assert server.request("GET", f"/v1/thumb?row={row}")[2] == body
    assert cached[0].stat().st_mtime_ns == mtime  # served from the cache, not made again
    assert not list((collection["store"] / "thumbs").glob("*.tmp*"))


def test_thumbnails_never_leave_the_collection(server: Server, collection: dict) -> None:
    coll, outside = collection["coll"], collection["outside"]
    refused = {
        "../": "../outside/secret.jpg",
        "absolute outside": str(outside / "secret.jpg"),
        "absolute with ..": f"{coll}/../outside/secret.jpg",
        "symlink out": str(coll / "link.jpg"),
        "missing file": "missing.jpg",
        "removed row": str(coll / "rocket.jpg"),
    }
    for why, name in refused.items():
        status, body = server.json("GET", f"/v1/thumb?row={row_of(collection, name)}")
        assert status == 404, (why, body)
        assert "secret" not in json.dumps(body), body  # the answer names no path
    n = len(collection["names"])
    for row in (str(n), "-1", "99999999999"):
        assert server.json("GET", f"/v1/thumb?row={row}")[0] == 404, row
    for row in ("abc", "../etc/passwd", "/etc/passwd", ""):
        assert server.json("GET", f"/v1/thumb?row={row}")[0] == 422, row
    assert server.request("GET", "/v1/thumb?path=/etc/passwd")[0] == 422  # rows only, never a path
    assert not list((collection["store"] / "thumbs").glob("*secret*"))


def test_the_rule_without_images(collection: dict) -> None:
    """Without --images the collection folder is the deepest one common to the live names (names
    with ``..`` not counted; relative names taken in the working directory)."""
    from regatt_sdk.compose import open_store
    from regatt_sdk.serve.web import Thumbnails
    from regatt_sdk.tombstones import deleted_mask

    store = open_store(collection["store"])
    coll, outside = collection["coll"], collection["outside"]
    names = list(store.names)
    t = Thumbnails(collection["store"], names, deleted_mask(store), cwd=coll)
    assert t.root == coll.parent  # the absolute name in outside/ widens it: --images DIR pins it
    names[names.index(str(outside / "secret.jpg"))] = "../secret.jpg"
    t = Thumbnails(collection["store"], names, deleted_mask(store), cwd=coll)
    assert t.root == coll
    assert t.source(names.index(str(coll / "chelsea.jpg")))[0] is not None
    for name in ("../outside/secret.jpg", "../secret.jpg", str(coll / "link.jpg"), "missing.jpg",
                 f"{coll}/../outside/secret.jpg", str(coll / "rocket.jpg")):  # fmt: skip
        assert t.source(names.index(name))[0] is None, name


def test_duplicates(server: Server, collection: dict) -> None:
    status, body = server.json("GET", "/v1/duplicates")
    assert status == 200, body
    groups = body["groups"]
    pair = [g for g in groups if {"chelsea.jpg", "chelsea-copy.jpg"} <= {Path(m["name"]).name for m in g["members"]}]
    assert len(pair) == 1, groups  # the copy and its original (identical descriptors) in one group
    assert sorted(m["action"] for m in pair[0]["members"]).count("keep") == 1
    live = {name: row for row, name in enumerate(collection["names"]) if not name.endswith("rocket.jpg")}
    for g in groups:
        for m in g["members"]:
            assert m["row"] == live.get(m["name"]), m  # removed rows have none
            if m["row"] is not None:  # link.jpg (a copy of coffee.jpg, out of the folder) has none
                want = 404 if m["name"].endswith("link.jpg") else 200
                assert server.request("GET", f"/v1/thumb?row={m['row']}")[0] == want, m


def test_search_hits_carry_rows_for_thumbnails(server: Server, collection: dict) -> None:
    data = (collection["coll"] / "astronaut.jpg").read_bytes()
    status, body = server.json("POST", "/v1/search?top=3", data)
    assert status == 200, body
    top = body["hits"][0]
    assert top["name"].endswith("astronaut.jpg") and top["row"] == row_of(collection, top["name"])
    assert server.request("GET", f"/v1/thumb?row={top['row']}")[0] == 200


def test_serve_refuses_a_dedup_folder_without_groups(tiny_model: Path, collection: dict, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from regatt_sdk.cli.app import build

    r = CliRunner().invoke(
        build(), ["serve", str(tiny_model), "--store", str(collection["store"]), "--dedup", str(tmp_path)]
    )
    assert r.exit_code != 0 and "no groups.json" in f"{r.output}{r.exception}"


@pytest.fixture(scope="module")
def local_server(tiny_model: Path, collection: dict, tmp_path_factory):
    """A server over a store with local features (regatt encode --local) of the same folder."""
    store = tmp_path_factory.mktemp("web-local") / "store"
    encode_to_store(
        Encoder(tiny_model, device="cpu", max_side=int(SIDE)), [str(collection["coll"])], store, progress=False,
        local=True,
    )  # fmt: skip
    from regatt_sdk.compose import open_store

    srv = Server(tiny_model, "--store", str(store), "--max-side", SIDE, log=store.parent / "server.log")
    yield srv, open_store(store).names
    srv.stop()


def test_match_picture(local_server, collection: dict) -> None:
    import cv2

    srv, names = local_server
    assert srv.json("GET", "/v1/info")[1]["rerank"] is True
    data = (collection["coll"] / "astronaut.jpg").read_bytes()
    row = names.index(str(collection["coll"] / "astronaut.jpg"))
    status, head, body = srv.request("POST", f"/v1/match?row={row}&roi=0,0,400,400", data)
    assert status == 200, body
    assert head["content-type"] == "image/png" and int(head["x-regatt-inliers"]) > 10
    pic = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR)
    assert pic.shape[0] == 480 + 28  # the drawing's height, never the full photo
    assert srv.json("POST", f"/v1/match?row={names.index(str(collection['coll'] / 'link.jpg'))}", data)[0] == 404
    assert srv.json("POST", f"/v1/match?row={len(names)}", data)[0] == 404
    assert srv.json("POST", f"/v1/match?row={row}", b"not an image" * 10)[0] == 422
    assert srv.json("POST", f"/v1/match?row={row}&roi=5,5,1,1", data)[0] == 422
    assert srv.json("POST", "/v1/match?row=x", data)[0] == 422


def test_match_needs_local_features(server: Server, collection: dict) -> None:
    data = (collection["coll"] / "astronaut.jpg").read_bytes()
    status, body = server.json("POST", "/v1/match?row=0", data)
    assert status == 422 and "local features" in body["error"], body


def test_thumbnail_cache_of_a_store_it_cannot_write(collection: dict, tmp_path: Path) -> None:
    """When STORE/thumbs cannot be made the cache goes under the system's temporary folder."""
    import tempfile

    from regatt_sdk.compose import open_store
    from regatt_sdk.serve.web import Thumbnails

    (tmp_path / "thumbs").write_text("a file where the cache folder would go")
    names = open_store(collection["store"]).names
    t = Thumbnails(tmp_path, names, None, images=collection["coll"])
    assert t.cache.parent == Path(tempfile.gettempdir()) / "regatt-thumbs"
    path, why = t.get(names.index(str(collection["coll"] / "camera.jpg")))
    assert path is not None and path.parent == t.cache, why
