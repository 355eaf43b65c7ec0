"""Filters on photo metadata: parsing and its errors, exact (true filtered top-k), FAISS
(over-fetch), pgvector (iterative index scans: a full top-k), the CLI and the server."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from regatt_sdk.filters import FilterError, filter_mask, parse_filter, parse_filters, sql_where
from regatt_sdk.index.exact import topk
from regatt_sdk.index.searcher import Searcher
from regatt_sdk.photometa import side as photo_side
from regatt_sdk.store import FeatureStore
from regatt_sdk.tombstones import remove
from vectors import clustered

FOLDERS = ["photos/trips/2024", "photos/trips/2024/day1", "photos/home", "photos/trips/2023", "other/trips"]


def records(n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        rec = {
            "folder": FOLDERS[int(rng.integers(len(FOLDERS)))],
            "size": int(rng.integers(1000, 10_000)),
            "mtime_ns": int(1_700_000_000e9 + rng.integers(0, 10**6) * 10**9),
            "sha256": "",
            "width": int(rng.choice([640, 1024, 4000])),
            "height": 480,
        }
        if i % 3:
            rec["date"] = f"2024-01-{1 + i % 28:02d}T{i % 24:02d}:00:00"
        if i % 2:
            rec["camera"] = "Canon EOS R6" if i % 4 == 1 else "NIKON Z 6"
        out.append(rec)
    return out


def make_store(path: Path, n: int = 2000, dim: int = 16) -> tuple[np.ndarray, list[dict]]:
    vecs = np.ascontiguousarray(clustered(n, dim, 20, seed=3), np.float32)
    recs = records(n)
    with FeatureStore.create(path, card_hash="card-1", dim=dim) as st:
        for a in range(0, n, 500):
            side, meta = photo_side(st, recs[a : a + 500])
            st.append([f"img{i:05d}.jpg" for i in range(a, min(a + 500, n))], vecs[a : a + 500], side=side,
                      side_meta=meta)  # fmt: skip
    return vecs, recs


def truth(vecs, recs, filters, q, k, gone=()):
    parsed = parse_filters(filters)
    keep = np.array([all(f.test(r) for f in parsed) for r in recs])
    keep[list(gone)] = False
    rows = np.flatnonzero(keep)
    s, i = topk(q, vecs[rows], min(k, len(rows)))
    return rows[i], keep


def test_parsing_and_errors():
    assert parse_filter("folder=trips/2024").field == "folder"
    assert parse_filter(" date >= 2024-01-01 ").value == ("2024-01-01T00:00:00", "2024-01-02T00:00:00")
    assert parse_filters({"camera": "Canon EOS R6"})[0].op == "="
    with pytest.raises(FilterError, match="unknown field 'colour'.*use folder, camera, date"):
        parse_filter("colour=red")
    with pytest.raises(FilterError, match="'2024-13-01' is not a date"):
        parse_filter("date>=2024-13-01")
    with pytest.raises(FilterError, match="'yesterday' is not a date"):
        parse_filter("date<yesterday")
    with pytest.raises(FilterError, match="folder takes = or != only"):
        parse_filter("folder>=a")
    with pytest.raises(FilterError, match="width takes a whole number"):
        parse_filter("width>=wide")
    with pytest.raises(FilterError, match="is not FIELD OP VALUE"):
        parse_filter("folder")


def test_semantics():
    rec = {"folder": "photos/trips/2024/day1", "date": "2024-01-31T18:00:00", "camera": "Canon EOS R6",
           "width": 4000, "mtime_ns": 0}  # fmt: skip
    ok = [
        "folder=trips/2024", "folder=photos", "folder=day1", "folder!=home", "folder!=trips/202",
        "date<=2024-01-31", "date=2024-01-31", "date>=2024-01-31", "date<2024-02-01", "date>2024-01-30",
        "date>2024-01-31T17:59", "camera=canon eos r6", "width>=4000", "width!=640", "mtime=1970-01-01",
    ]  # fmt: skip
    bad = ["folder=trips/202", "folder=2024/day", "date>2024-01-31", "date<2024-01-31", "date!=2024-01-31",
           "camera=Canon", "width>4000", "height>0"]  # fmt: skip
    for text in ok:
        assert parse_filter(text).test(rec), text
    for text in bad:
        assert not parse_filter(text).test(rec), text
    assert not parse_filter("date!=2024-01-01").test({"folder": "x"})  # no date: never matches


def test_exact_is_the_true_filtered_top_k_and_faiss_recall(tmp_path):
    vecs, recs = make_store(tmp_path / "s")
    gone = list(range(0, 2000, 7))
    with FeatureStore.open(tmp_path / "s", writable=True) as st:
        remove(st, gone)
    q = vecs[:20] + 0.05
    for filters in (["folder=trips/2024"], ["date>=2024-01-20", "camera=Canon EOS R6"], ["width>=4000", "folder=home"]):
        want, keep = truth(vecs, recs, filters, q, 10, gone)
        assert keep.sum() > 10
        s = Searcher.for_store(tmp_path / "s", filters=filters)
        _, rows = s.search_vectors(q, 10)
        np.testing.assert_array_equal(rows, want)  # recall 1.0, same order
    pytest.importorskip("faiss")
    from regatt_sdk.ann import build_store_index

    build_store_index(tmp_path / "s", "hnsw")
    for filters in (["folder=trips/2024"], ["date>=2024-01-20", "camera=Canon EOS R6"]):
        want, _ = truth(vecs, recs, filters, q, 10, gone)
        s = Searcher.for_store(tmp_path / "s", filters=filters)
        assert s.index.backend == "faiss"
        _, rows = s.search_vectors(q, 10)
        assert (rows >= 0).all()
        recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(rows, want)])
        assert recall >= 0.95, (filters, recall)


def test_a_store_without_metadata_says_how_to_get_it(tmp_path):
    with FeatureStore.create(tmp_path / "s", card_hash="c", dim=4) as st:
        st.append(["a"], np.ones((1, 4), np.float32) / 2)
    with pytest.raises(FilterError, match="regatt sync"):
        filter_mask(FeatureStore.open(tmp_path / "s"), ["folder=x"])


def test_pgvector_filtered_top_k_is_full(tmp_path, pg_url):
    pytest.importorskip("psycopg")
    from regatt_sdk.index.pgvector import load_store

    vecs, recs = make_store(tmp_path / "s")
    with FeatureStore.open(tmp_path / "s", writable=True) as st:
        remove(st, [0, 1, 2])
    load_store(tmp_path / "s", pg_url, table="filt")
    q = vecs[10:30] + 0.05
    for filters in (["folder=trips/2024"], ["camera=NIKON Z 6", "date>=2024-01-25"], ["folder=other", "width<1000"]):
        want, keep = truth(vecs, recs, filters, q, 10, [0, 1, 2])
        s = Searcher.for_db(pg_url, table="filt", filters=filters)
        _, rows = s.search_vectors(q, 10)
        s.index.close()
        n = min(10, int(keep.sum()))
        assert (rows[:, :n] >= 0).all(), filters  # a full top-k: k rows whenever k rows match
        assert keep[rows[rows >= 0]].all()
        recall = np.mean([len(set(a) & set(b)) / n for a, b in zip(rows, want)])
        assert recall >= 0.95, (filters, recall)
        w = sql_where(filters)
        assert "%s" in w[0]


def test_cli_where_and_its_errors(tiny_model, tmp_path, photos, capsys):
    import cv2

    from regatt_sdk.cli.app import main

    d = tmp_path / "photos"
    (d / "trips" / "2024").mkdir(parents=True)
    for name, img in photos.items():
        sub = d / "trips" / "2024" if name in ("chelsea", "rocket") else d
        cv2.imwrite(str(sub / f"{name}.jpg"), img)

    def run(*args: str) -> int:
        try:
            main(list(args))
        except SystemExit as exc:
            return int(exc.code or 0)
        return 0

    store = tmp_path / "s"
    assert run("sync", str(tiny_model), str(d), "-o", str(store), "--no-progress") == 0
    capsys.readouterr()
    q = str(d / "coffee.jpg")
    assert run("search", str(tiny_model), str(store), q, "--top", "6", "--where", "folder=trips/2024") == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and all("trips/2024" in line for line in lines)
    assert run("search", str(tiny_model), str(store), q, "--where", "colour=red") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown field 'colour'" in err[0]
    assert run("search", str(tiny_model), str(store), q, "--where", "date>=2024-02-30") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'2024-02-30' is not a date" in err[0]
    from regatt_sdk.collection import Collection

    col = Collection.open(store, tiny_model)
    hits = col.search(q, top=6, filters=["folder!=trips/2024"])
    assert len(hits) == 4 and hits[0].name == q


def test_serve_where(tiny_model, tmp_path, photos):
    pytest.importorskip("fastapi")
    import cv2

    from httpserver import Server
    from regatt_sdk.encoder import Encoder
    from regatt_sdk.sync import sync

    d = tmp_path / "photos"
    (d / "trips").mkdir(parents=True)
    for name, img in photos.items():
        cv2.imwrite(str((d / "trips" if name in ("chelsea", "rocket") else d) / f"{name}.jpg"), img)
    store = tmp_path / "s"
    sync(Encoder(tiny_model, device="cpu", max_side=128), [str(d)], store)
    (d / "camera.jpg").unlink()
    sync(Encoder(tiny_model, device="cpu", max_side=128), [str(d)], store)
    srv = Server(tiny_model, "--store", str(store), "--max-side", "128", log=tmp_path / "log")
    try:
        body = (d / "coffee.jpg").read_bytes()
        status, out = srv.json("POST", "/v1/search?top=6", body)
        assert status == 200 and len(out["hits"]) == 5  # the removed photo is gone
        status, out = srv.json("POST", "/v1/search?top=6&where=folder%3Dtrips", body)
        assert status == 200 and len(out["hits"]) == 2 and all("/trips/" in h["name"] for h in out["hits"])
        status, out = srv.json("POST", "/v1/search?top=6&where=folder%21%3Dtrips%3B%20width%3E%3D1", body)
        assert status == 200 and len(out["hits"]) == 3, out
        status, out = srv.json("POST", "/v1/search?where=date%3E%3D2024-13-01", body)
        assert status == 422 and "is not a date" in out["error"]
    finally:
        srv.stop()


def test_collection_sync_keeps_its_pgvector_table_in_step(tiny_model, tmp_path, photos, pg_url):
    pytest.importorskip("psycopg")
    import cv2

    from regatt_sdk.collection import Collection

    d = tmp_path / "photos"
    (d / "trips").mkdir(parents=True)
    for name, img in photos.items():
        cv2.imwrite(str((d / "trips" if name in ("chelsea", "rocket") else d) / f"{name}.jpg"), img)
    col = Collection.create(tmp_path / "s", tiny_model, db=pg_url, table="colsync")
    assert col.sync([str(d)]).added == 6
    q = str(d / "coffee.jpg")
    assert len(col.search(q, top=6)) == 6
    (d / "coffee.jpg").unlink()
    cv2.imwrite(str(d / "trips" / "coffee2.jpg"), photos["coffee"])
    r = col.sync([str(d)])
    assert (r.added, r.removed) == (1, 1)
    hits = col.search(str(d / "trips" / "coffee2.jpg"), top=6)
    names = [h.name for h in hits]
    assert len(hits) == 6 and q not in names and names[0].endswith("coffee2.jpg")
    hits = col.search(str(d / "trips" / "coffee2.jpg"), top=6, filters=["folder=trips"])
    assert len(hits) == 3 and all("/trips/" in h.name for h in hits) and hits[0].name.endswith("coffee2.jpg")
    col.close()
    pytest.importorskip("fastapi")
    from httpserver import Server

    srv = Server(tiny_model, "--db", pg_url, "--table", "colsync", log=tmp_path / "log")
    try:
        body = (d / "trips" / "coffee2.jpg").read_bytes()
        status, out = srv.json("POST", "/v1/search?top=6&where=folder%3Dtrips", body)
        assert status == 200 and [h["name"] for h in out["hits"]] == [h.name for h in hits], out
        status, out = srv.json("POST", "/v1/search?top=6&where=size%3Cabc", body)
        assert status == 422 and "whole number" in out["error"]
    finally:
        srv.stop()
