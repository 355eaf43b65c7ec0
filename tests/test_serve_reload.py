"""``regatt serve --store`` follows its store while it runs (a real server on 127.0.0.1): photos
added and removed by the real ``sync`` path, and ``compact``, are searched within seconds; a store
replaced by another model's or damaged keeps the old rows served and reports the error
(``/readyz``, ``/v1/info``, ``/metrics``); ``POST /v1/reload``; ``--no-watch``."""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="pip install 'regatt[serve]'")
pytest.importorskip("uvicorn", reason="pip install 'regatt[serve]'")

from httpserver import Server  # noqa: E402
from regatt_sdk.encoder import Encoder  # noqa: E402
from regatt_sdk.sync import sync  # noqa: E402

SIDE = "128"
FIRST = ("astronaut", "coffee", "chelsea")


@pytest.fixture(scope="module")
def encoder(tiny_model: Path) -> Encoder:
    return Encoder(tiny_model, device="cpu", max_side=int(SIDE))


def collection(tmp_path: Path, photo_dir: Path, encoder: Encoder) -> tuple[Path, Path]:
    """``(photo folder with FIRST, its store made by sync)``."""
    folder, store = tmp_path / "photos", tmp_path / "store"
    folder.mkdir()
    for name in FIRST:
        shutil.copy(photo_dir / f"{name}.jpg", folder / f"{name}.jpg")
    sync(encoder, [folder], store)
    return folder, store


def start(tiny_model: Path, store: Path, tmp_path: Path, *args: str) -> Server:
    return Server(tiny_model, "--store", str(store), "--max-side", SIDE, "--no-warmup", *args, log=tmp_path / "log")


def names(server: Server, photo: Path) -> list[str]:
    """The names of every hit of a search by ``photo`` (the server must answer 200)."""
    status, body = server.json("POST", "/v1/search?top=50", photo.read_bytes())
    assert status == 200, body
    return [Path(h["name"]).name for h in body["hits"]]


def until(check, what: str, seconds: float = 15.0):
    """Poll ``check()`` (each call is a request, which is also when the server looks at its
    store) until it returns something true; fail naming ``what`` after ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            pytest.fail(f"after {seconds:g} s: {what}")
        time.sleep(0.2)


def store_info(server: Server) -> dict:
    status, body = server.json("GET", "/readyz")
    assert status == 200, body  # ready all along, reloads included
    return body["store"]


def test_added_removed_and_compacted_photos_are_searched(
    tiny_model: Path, photo_dir: Path, encoder: Encoder, tmp_path: Path
) -> None:
    folder, store = collection(tmp_path, photo_dir, encoder)
    server = start(tiny_model, store, tmp_path)
    statuses: list[int] = []
    done = threading.Event()

    def searching() -> None:  # searches all along: none may fail while the store changes and reloads
        data = (photo_dir / "chelsea.jpg").read_bytes()
        while not done.is_set():
            statuses.append(server.request("POST", "/v1/search?top=2", data)[0])

    searcher = threading.Thread(target=searching)
    searcher.start()
    try:
        info = store_info(server)
        assert info["store_generation"] == 1 and info["rows"] == 3 and info["reload_error"] is None
        rocket = photo_dir / "rocket.jpg"
        assert "rocket.jpg" not in names(server, rocket)

        shutil.copy(rocket, folder / "rocket.jpg")
        sync(encoder, [folder], store)  # commits one more row while the server runs
        hits = until(lambda: (n := names(server, rocket)) and n[0] == "rocket.jpg" and n, "the added photo found")
        assert sorted(hits) == sorted([*(f"{n}.jpg" for n in FIRST), "rocket.jpg"])
        info = store_info(server)
        assert info["store_generation"] >= 2 and info["rows"] == 4 and info["reloaded_at"]
        status, page = server.json("GET", "/v1/info")
        assert status == 200 and page["rows"] == 4 and page["store"]["store_generation"] == info["store_generation"]

        status, body = server.json("POST", "/v1/search?top=1", (photo_dir / "coffee.jpg").read_bytes())
        coffee = body["hits"][0]["row"]
        assert server.request("GET", f"/v1/thumb?row={coffee}")[0] == 200
        os.unlink(folder / "coffee.jpg")
        sync(encoder, [folder], store)  # a tombstone for coffee's row
        until(lambda: "coffee.jpg" not in names(server, photo_dir / "coffee.jpg"), "the removed photo gone")
        assert store_info(server)["removed"] == 1
        assert server.request("GET", f"/v1/thumb?row={coffee}")[0] == 404  # removed: no thumbnail

        from regatt_sdk.compact import compact

        compact(store)  # rows renumbered, the directory swapped
        until(lambda: store_info(server)["rows"] == 3, "the compacted store loaded")
        hits = names(server, rocket)
        assert hits[0] == "rocket.jpg" and sorted(hits) == ["astronaut.jpg", "chelsea.jpg", "rocket.jpg"]
        metrics = server.metrics()
        assert metrics['regatt_store_reloads_total{result="ok"}'] >= 3
        assert metrics['regatt_store_reloads_total{result="failed"}'] == 0 and metrics["regatt_store_rows"] == 3
        done.set()
        searcher.join()
        assert statuses and set(statuses) == {200}, statuses
    finally:
        done.set()
        server.stop()


def test_a_store_replaced_or_damaged_keeps_the_old_rows(
    tiny_model: Path, photo_dir: Path, encoder: Encoder, tmp_path: Path
) -> None:
    from regatt_sdk.store import FeatureStore

    _, store = collection(tmp_path, photo_dir, encoder)
    server = start(tiny_model, store, tmp_path)
    try:
        query = photo_dir / "chelsea.jpg"
        before = names(server, query)
        assert before[0] == "chelsea.jpg" and len(before) == 3
        kept = tmp_path / "kept"
        os.rename(store, kept)
        other = FeatureStore.create(store, card_hash="0" * 64, dim=encoder.dim)  # another model's store
        vecs = np.eye(2, encoder.dim, dtype=np.float32)
        other.append(["x.jpg", "y.jpg"], vecs)
        other.close()

        err = until(lambda: store_info(server)["reload_error"], "the other model's store reported")
        assert "another model" in err
        assert names(server, query) == before  # still the old rows
        assert "failed, still serving 3 rows" in (tmp_path / "log").read_text()  # the log line
        status, page = server.json("GET", "/v1/info")
        assert page["rows"] == 3 and "another model" in page["store"]["reload_error"]
        metrics = server.metrics()
        assert (
            metrics['regatt_store_reloads_total{result="failed"}'] >= 1 and metrics["regatt_store_reload_failing"] == 1
        )
        status, body = server.json("POST", "/v1/reload")  # forced: fails the same way, keeps the old rows
        assert status == 409 and "another model" in body["error"] and body["store"]["rows"] == 3

        shutil.rmtree(store)
        shutil.copytree(kept, store)
        (store / "manifest.json").unlink()
        (store / "manifest.json").write_text("{half a manifest")  # a damaged store
        until(lambda: "not JSON" in (store_info(server)["reload_error"] or ""), "the damaged store reported")
        assert names(server, query) == before

        shutil.rmtree(store)
        os.rename(kept, store)  # back to the good store
        until(lambda: store_info(server)["reload_error"] is None, "the good store reloaded")
        assert names(server, query) == before and store_info(server)["rows"] == 3
        assert server.metrics()["regatt_store_reload_failing"] == 0
    finally:
        server.stop()


def test_no_watch_reloads_only_when_asked(tiny_model: Path, photo_dir: Path, encoder: Encoder, tmp_path: Path) -> None:
    folder, store = collection(tmp_path, photo_dir, encoder)
    server = start(tiny_model, store, tmp_path, "--no-watch")
    try:
        rocket = photo_dir / "rocket.jpg"
        shutil.copy(rocket, folder / "rocket.jpg")
        sync(encoder, [folder], store)
        deadline = time.monotonic() + 1.5  # longer than the watch interval: nothing is reloaded
        while time.monotonic() < deadline:
            assert store_info(server)["store_generation"] == 1
            time.sleep(0.2)
        assert "rocket.jpg" not in names(server, rocket)
        status, body = server.json("POST", "/v1/reload")
        assert status == 200 and body["reloaded"] and body["store"]["store_generation"] == 2
        assert body["store"]["rows"] == 4 and body["store"]["watch"] is False
        assert names(server, rocket)[0] == "rocket.jpg"
    finally:
        server.stop()
