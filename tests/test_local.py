"""Local features and the second stage: extraction, storage beside the store's rows, matching,
verification, candidates from visual words, re-ranking through the Searcher."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from regatt_sdk.local.codec import load_codebook
from regatt_sdk.local.extract import LocalConfig, extract
from regatt_sdk.local.match import match_many
from regatt_sdk.local.storage import KP, LocalFeaturesMissing, LocalIndex
from regatt_sdk.local.verify import verify
from regatt_sdk.store import FeatureStore, StoreError


def other_view(img: np.ndarray, seed: int = 0) -> np.ndarray:
    """A warped (perspective), cropped, re-lit, blurred, JPEG-compressed copy of ``img``."""
    rng = np.random.default_rng(seed)
    h, w = img.shape[:2]
    src = np.float32([[0, 0], [w, 0], [w, h], [0, h]])
    dst = src + rng.uniform(-0.12, 0.12, (4, 2)).astype(np.float32) * np.float32([w, h])
    warped = cv2.warpPerspective(img, cv2.getPerspectiveTransform(src, dst), (w, h), borderMode=cv2.BORDER_REFLECT)
    crop = warped[int(0.1 * h) : int(0.95 * h), int(0.05 * w) : int(0.9 * w)]
    lit = np.clip(crop.astype(np.float32) * np.float32([0.8, 0.9, 1.15]) + 15, 0, 255).astype(np.uint8)
    blur = cv2.GaussianBlur(lit, (0, 0), 1.0)
    ok, jpg = cv2.imencode(".jpg", blur, [cv2.IMWRITE_JPEG_QUALITY, 70])
    return cv2.imdecode(jpg, cv2.IMREAD_COLOR)


def inliers(a: np.ndarray, b: np.ndarray) -> int:
    book = load_codebook()
    fa, fb = extract(a), extract(b)
    (m,) = match_many(book.decode(fa.desc), [book.decode(fb.desc)])
    return verify(fa.points()[m[:, 0]], fb.points()[m[:, 1]]).inliers


def test_a_warped_relit_copy_verifies_and_other_photos_do_not(photos):
    for name in ("astronaut", "coffee", "chelsea", "rocket"):
        assert inliers(photos[name], other_view(photos[name])) >= 15, name
    for a, b in (("astronaut", "coffee"), ("chelsea", "rocket"), ("coffee", "rocket"), ("camera", "astronaut")):
        assert inliers(photos[a], other_view(photos[b])) < 10, (a, b)


def test_features_are_compact_and_bounded(photos):
    f = extract(photos["astronaut"], LocalConfig(side=320, keypoints=300))
    assert 0 < len(f) <= 300
    assert f.desc.dtype == np.int8 and f.desc.shape == (len(f), load_codebook().dims)
    assert f.words.dtype == np.uint16 and f.words.max() < load_codebook().words
    h, w = photos["astronaut"].shape[:2]
    assert (f.width, f.height) == (w, h)
    xy = f.points(original=True)
    assert xy[:, 0].max() <= w and xy[:, 1].max() <= h
    grey = extract(np.zeros((64, 64, 3), np.uint8))  # nothing to detect: empty, not an error
    assert len(grey) == 0 and grey.desc.shape == (0, load_codebook().dims)


def test_match_many_equals_one_pair_at_a_time(photos):
    book = load_codebook()
    feats = [extract(p) for p in photos.values()]
    q = book.decode(feats[0].desc)
    cands = [book.decode(f.desc) for f in feats[1:]] + [book.decode(feats[0].desc[:7])]
    together = match_many(q, cands)
    for c, m in zip(cands, together):
        np.testing.assert_array_equal(m, match_many(q, [c])[0])


def _encode(tiny_model, sources, out, **kw):
    from regatt_sdk.encoder import Encoder
    from regatt_sdk.pipeline import encode_to_store

    return encode_to_store(Encoder(tiny_model), sources, out, progress=False, **kw)


@pytest.fixture
def views_dir(tmp_path, photos):
    d = tmp_path / "photos"
    d.mkdir()
    for name, img in photos.items():
        cv2.imwrite(str(d / f"{name}.jpg"), img)
    return d


def test_encode_local_stores_aligned_features_and_backfill_equals_direct(tiny_model, views_dir, tmp_path):
    direct = tmp_path / "direct"
    r = _encode(tiny_model, [str(views_dir)], direct, local=True, chunk_rows=2)
    assert r.encoded == 6
    st = FeatureStore.open(direct)
    li = LocalIndex.open(st)
    assert li.count == st.count == 6
    for row, name in enumerate(st.names):
        f = li.features(row)
        ref = extract(cv2.imread(name))
        np.testing.assert_array_equal(f.desc, ref.desc)
        np.testing.assert_allclose(f.kp, ref.kp.astype(np.float16).astype(np.float32))
    # a store encoded without local features, then given them with --resume --local
    later = tmp_path / "later"
    _encode(tiny_model, [str(views_dir)], later)
    with pytest.raises(LocalFeaturesMissing, match="--resume --local"):
        LocalIndex.open(FeatureStore.open(later))
    _encode(tiny_model, [str(views_dir)], later, resume=True, local=True)
    for file in ("local.rows", "local.kp", "local.desc", "local.words", "vectors.f32"):
        assert (later / file).read_bytes() == (direct / file).read_bytes(), file
    # resuming without saying continues the local features; refusing them is an error
    with pytest.raises(StoreError, match="local features"):
        _encode(tiny_model, [str(views_dir)], later, resume=True, local=False)


def test_backfill_needs_the_images_again(tiny_model, views_dir, tmp_path):
    st = tmp_path / "s"
    _encode(tiny_model, [str(views_dir)], st)
    with pytest.raises(StoreError, match="not among the sources"):
        _encode(tiny_model, [str(views_dir / "coffee.jpg")], st, resume=True, local=True)
    assert FeatureStore.open(st).count == 6  # nothing lost


def test_rerank_finds_the_view_and_names_what_is_missing(tiny_model, views_dir, tmp_path, photos):
    from regatt_sdk.encoder import Encoder
    from regatt_sdk.errors import RegattError
    from regatt_sdk.index.searcher import Searcher

    store = tmp_path / "s"
    _encode(tiny_model, [str(views_dir)], store, local=True)
    searcher = Searcher.for_store(store, Encoder(tiny_model))
    for name in ("astronaut", "coffee", "rocket"):
        query = other_view(photos[name], seed=3)
        res = searcher.search_full(query, top=3, rerank=6)
        assert res.hits[0].name.endswith(f"{name}.jpg"), (name, res.hits)
        assert res.hits[0].inliers is not None and res.hits[0].inliers >= 25
        assert all(h.inliers is not None for h in res.hits)  # every candidate was verified
    res = searcher.search_full(other_view(photos["coffee"]), top=2, rerank=50)
    assert res.notes and "6 rows" in res.notes[0]
    with pytest.raises(RegattError, match="at least 1"):
        searcher.search(other_view(photos["coffee"]), rerank=-1)
    # a store without local features: the fix is named
    plain = tmp_path / "plain"
    _encode(tiny_model, [str(views_dir)], plain)
    with pytest.raises(LocalFeaturesMissing, match="regatt encode .* --resume --local"):
        Searcher.for_store(plain, Encoder(tiny_model)).search(photos["coffee"], rerank=5)


def test_damaged_local_files_are_named(tiny_model, views_dir, tmp_path):
    store = tmp_path / "s"
    _encode(tiny_model, [str(views_dir)], store, local=True)
    with open(store / KP, "r+b") as fh:
        fh.truncate(10)
    with pytest.raises(StoreError, match="local.kp"):
        LocalIndex.open(FeatureStore.open(store))
    m = json.loads((store / "manifest.json").read_text())
    assert m["side"]["local.kp"] > 10


def test_visual_word_candidates_rank_the_right_photo_first(tiny_model, views_dir, tmp_path, photos):
    from regatt_sdk.local.ivf import CACHE, load_or_build

    store = tmp_path / "s"
    _encode(tiny_model, [str(views_dir)], store, local=True)
    li = LocalIndex.open(FeatureStore.open(store))
    ivf = load_or_build(li, li.codebook.words)
    assert (store / CACHE).is_file()
    names = FeatureStore.open(store).names
    for name in ("astronaut", "chelsea", "rocket"):
        _, rows = ivf.top(extract(other_view(photos[name])).words, 2)
        assert names[rows[0]].endswith(f"{name}.jpg")
    again = load_or_build(li, li.codebook.words)  # from the cache: the same arrays
    np.testing.assert_array_equal(again.weights, ivf.weights)


def test_collection_with_local_features_reranks(tiny_model, views_dir, tmp_path, photos):
    from regatt_sdk import Collection

    col = Collection.create(tmp_path / "c", tiny_model, local=True)
    col.add([str(views_dir / "astronaut.jpg"), str(views_dir / "coffee.jpg")])
    col.add([str(views_dir)])  # later rows keep getting local features without asking
    assert len(col) == 6 and LocalIndex.open(col.store).count == 6
    hits = col.search(other_view(photos["chelsea"], seed=5), top=2, rerank=4)
    assert hits[0].name.endswith("chelsea.jpg") and hits[0].inliers >= 15
    res = col.search_full(other_view(photos["chelsea"], seed=5), top=1, rerank=4)
    v = res.verified[res.hits[0].row]
    assert v.geometry.H is not None and v.inliers == int(v.geometry.mask.sum())


def _cli(args: list[str]) -> int:
    from regatt_sdk.cli.app import main

    with pytest.raises(SystemExit) as info:
        main(args)
    return int(info.value.code or 0)


def test_cli_encode_local_search_rerank_show(tiny_model, views_dir, tmp_path, photos, capsys):
    plain = tmp_path / "plain"
    assert _cli(["encode", str(tiny_model), str(views_dir), "-o", str(plain), "--no-progress"]) == 0
    query = tmp_path / "query.jpg"
    cv2.imwrite(str(query), other_view(photos["camera"], seed=2))
    capsys.readouterr()
    code = _cli(["search", str(tiny_model), str(plain), str(query), "--rerank", "5"])
    assert code != 0 and "regatt encode MODEL SOURCES... -o STORE --resume --local" in capsys.readouterr().err
    # the fix the message names works and keeps every row
    assert (
        _cli(["encode", str(tiny_model), str(views_dir), "-o", str(plain), "--resume", "--local", "--no-progress"]) == 0
    )
    capsys.readouterr()
    show = tmp_path / "hits.png"
    assert (
        _cli(["search", str(tiny_model), str(plain), str(query), "--rerank", "99", "--top", "2", "--show", str(show)])
        == 0
    )
    out, err = capsys.readouterr()
    first = out.splitlines()[0].split()
    assert first[0] == "1" and first[-1].endswith("camera.jpg") and first[3] == "inliers" and int(first[2]) >= 15
    assert "verifying all 6" in err  # K above the collection size is clipped, with a note
    pic = cv2.imread(str(tmp_path / "hits-match-1.png"))
    assert pic is not None and pic.shape[0] > 400
    assert _cli(["search", str(tiny_model), str(plain), str(query), "--rerank", "0"]) == 0
    assert "inliers" not in capsys.readouterr().out


def test_cli_eval_rerank_adds_local_features_and_reports_both(tiny_model, tmp_path, capsys):
    from test_search import make_group_folder

    root = tmp_path / "groups"
    make_group_folder(root)
    # the crop of each photo and a warped, re-lit view of it: other views the geometry can verify
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        cv2.imwrite(str(d / "view.png"), other_view(cv2.imread(str(d / "orig.png")), seed=7))
        (d / "flip.png").unlink()  # SIFT is not mirror-invariant: a flip is not another view
    store, out_json = tmp_path / "store", tmp_path / "eval.json"
    args = ["eval", str(tiny_model), "-d", "generic", "--root", str(root), "--store", str(store),
            "--json", str(out_json), "--qe", "0", "--no-progress"]  # fmt: skip
    assert _cli(args) == 0
    assert _cli(args + ["--rerank", "5"]) == 0  # the store made without them gets local features
    res = json.loads(out_json.read_text())
    assert res["rerank"] == 5 and res["map_rerank"] > res["map"]
    assert res["map_rerank"] > 90 and res["map_rerank_qe"] > 90  # with QE after verification too
    assert LocalIndex.open(FeatureStore.open(store)).count == 15


def test_serve_rerank_over_a_store_with_local_features(tiny_model, views_dir, tmp_path, photos):
    from httpserver import Server

    store = tmp_path / "s"
    _encode(tiny_model, [str(views_dir)], store, local=True)
    plain = tmp_path / "plain"
    _encode(tiny_model, [str(views_dir)], plain)
    ok, jpg = cv2.imencode(".jpg", other_view(photos["coffee"], seed=4))
    srv = Server(tiny_model, "--store", str(store), log=tmp_path / "serve.log")
    try:
        status, body = srv.json("POST", "/v1/search?top=2&rerank=6", jpg.tobytes())
        assert status == 200, body
        assert body["hits"][0]["name"].endswith("coffee.jpg") and body["hits"][0]["inliers"] >= 15
        # qe with rerank counts verified hits (default 1, 0: off): as the Searcher ranks in-process
        from regatt_sdk.encoder import Encoder
        from regatt_sdk.index.searcher import Searcher

        local = Searcher.for_store(store, Encoder(tiny_model))
        photo = cv2.imdecode(jpg, cv2.IMREAD_COLOR)
        for query, qe in (("", None), ("&qe=0", 0), ("&qe=2", 2)):
            status, body = srv.json("POST", f"/v1/search?top=4&rerank=6{query}", jpg.tobytes())
            want = local.search_full(photo, top=4, rerank=6, qe=qe).hits
            assert status == 200 and [h["row"] for h in body["hits"]] == [h.row for h in want], (qe, body)
            np.testing.assert_allclose([h["score"] for h in body["hits"]], [h.score for h in want], atol=1e-4)
        status, body = srv.json("POST", "/v1/search?top=2", jpg.tobytes())
        assert status == 200 and "inliers" not in body["hits"][0]
        status, body = srv.json("POST", "/v1/search?rerank=-1", jpg.tobytes())
        assert status == 422
    finally:
        srv.stop()
    srv = Server(tiny_model, "--store", str(plain), log=tmp_path / "serve2.log")
    try:
        status, body = srv.json("POST", "/v1/search?rerank=5", jpg.tobytes())
        assert status == 422 and "--resume --local" in body["error"]
    finally:
        srv.stop()


def test_query_expansion_after_verification_ranks_by_the_expanded_query():
    from regatt_sdk.local.rerank import RerankConfig, Reranker, Verified, expanded_query

    def unit(v):
        v = np.asarray(v, np.float32)
        return v / np.linalg.norm(v)

    vectors = np.stack([
        unit([0.3, 1, 0, 0]),  # 0: verified (another view: low global score)
        unit([1, 0, 0.2, 0]),  # 1: a candidate close to the query, not verified
        unit([0, 1, 0, 0.1]),  # 2: not a candidate, close to row 0 (the same place)
        unit([0, 0, 1, 0]),  # 3, 4: elsewhere
        unit([0, 0, 0, 1]),
    ])  # fmt: skip
    q = unit([1, 0, 0, 0])
    vectors_of = lambda rows: vectors[np.asarray(rows)]  # noqa: E731
    cfg = RerankConfig(qe=1)
    g = vectors @ q
    bonus = cfg.weight * min(30, cfg.cap) / cfg.cap
    verified = [
        Verified(0, float(g[0]), float(g[0]) + bonus, 30, np.zeros((0, 2), np.int32), None),
        Verified(1, float(g[1]), float(g[1]), 3, np.zeros((0, 2), np.int32), None),
    ]
    global_rows = np.argsort(-g, kind="stable")
    q2 = expanded_query(q, verified, vectors_of, cfg)
    np.testing.assert_allclose(q2, unit(q + vectors[0]), atol=1e-6)
    rr = Reranker.__new__(Reranker)  # expand needs no local features
    rescored, order = rr.expand(q, verified, global_rows, vectors_of, cfg)
    want = vectors @ q2 + np.array([bonus, 0, 0, 0, 0], np.float32)
    np.testing.assert_array_equal(order, np.argsort(-want, kind="stable"))
    assert order[0] == 0 and list(order).index(2) < list(order).index(3)  # row 2 came in through row 0
    assert [v.row for v in rescored] == [0, 1] and abs(rescored[0].score - want[0]) < 1e-6
    # a search function gives the same order; removed rows never come back
    search = lambda q_: (vectors @ q_, np.arange(5))  # noqa: E731
    _, order_s = rr.expand(q, verified, global_rows, vectors_of, cfg, search=search)
    np.testing.assert_array_equal(order_s, order)
    gone = np.zeros(5, bool)
    gone[2] = True
    _, order_x = rr.expand(q, verified, global_rows[~gone[global_rows]], vectors_of, cfg, search=search, exclude=gone)
    assert 2 not in order_x and len(order_x) == 4
    # nothing verified, or qe 0: no expansion
    assert rr.expand(q, verified[1:], global_rows, vectors_of, cfg) is None
    assert expanded_query(q, verified, vectors_of, RerankConfig(qe=0)) is None
