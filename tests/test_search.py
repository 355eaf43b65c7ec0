"""Exact chunked search, the FAISS backend, query expansion / DBA, and the result grid."""

from __future__ import annotations

import sys

import cv2
import numpy as np
import pytest

from regatt_sdk.errors import MissingExtraError, RegattError
from regatt_sdk.expansion import (
    DatabaseAugmentation,
    QueryExpansion,
    augment_database,
    average_query_expansion,
    expand_queries,
    l2_normalize,
    retrieve,
)
from regatt_sdk.grid import result_grid, save_result_grid
from regatt_sdk.search import ExactIndex, build_index, import_faiss, rank, topk


def unit(rng, n, d=32):
    return l2_normalize(rng.standard_normal((n, d)).astype(np.float32))


def brute(q, db, k):
    s = q @ db.T
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, order, 1), order


@pytest.mark.parametrize("chunk_rows", [1, 7, 100, 10_000])
def test_topk_matches_brute_force_for_any_chunking(chunk_rows):
    rng = np.random.default_rng(0)
    db, q = unit(rng, 523), unit(rng, 11)
    s, i = topk(q, db, 17, chunk_rows=chunk_rows)
    rs, ri = brute(q, db, 17)
    np.testing.assert_array_equal(i, ri)
    np.testing.assert_allclose(s, rs, rtol=1e-6, atol=1e-6)
    assert s.dtype == np.float32 and i.dtype == np.int64 and s.shape == (11, 17)


def test_topk_single_query_k_clipped_and_memmap(tmp_path):
    rng = np.random.default_rng(1)
    db = unit(rng, 40)
    path = tmp_path / "db.f32"
    db.tofile(path)
    mm = np.memmap(path, dtype="<f4", mode="r", shape=db.shape)
    s, i = topk(db[5], mm, 1000, chunk_rows=9)
    assert i.shape == (1, 40) and i[0, 0] == 5
    np.testing.assert_array_equal(i, brute(db[5:6], db, 40)[1])


def test_ties_are_ordered_by_index():
    v = l2_normalize(np.ones((1, 8), np.float32))
    db = np.repeat(v, 6, axis=0)
    db[3] = -db[3]
    s, i = topk(v, db, 5, chunk_rows=2)
    assert i[0].tolist() == [0, 1, 2, 4, 5]
    _, full = rank(v, db, chunk_rows=4)
    assert full[0].tolist() == [0, 1, 2, 4, 5, 3]


def test_full_rank_matches_brute_force():
    rng = np.random.default_rng(2)
    db, q = unit(rng, 300), unit(rng, 4)
    s, i = ExactIndex(db, chunk_rows=64).rank(q)
    rs, ri = brute(q, db, 300)
    np.testing.assert_array_equal(i, ri)
    assert np.all(np.diff(s, axis=1) <= 0)


def test_bad_inputs_name_the_problem():
    rng = np.random.default_rng(3)
    with pytest.raises(RegattError, match="512-d descriptors but the queries are 32-d"):
        topk(unit(rng, 2), unit(rng, 5, 512), 3)
    with pytest.raises(RegattError, match="empty"):
        topk(unit(rng, 2), np.zeros((0, 32), np.float32), 3)
    with pytest.raises(RegattError, match="unknown search backend 'annoy'"):
        build_index(unit(rng, 5), "annoy")


def test_faiss_flat_agrees_with_exact_order():
    pytest.importorskip("faiss")
    rng = np.random.default_rng(4)
    db, q = unit(rng, 2000, 64), unit(rng, 20, 64)
    es, ei = build_index(db, "exact", chunk_rows=300).search(q, 50)
    fs, fi = build_index(db, "faiss", chunk_rows=300).search(q, 50)
    np.testing.assert_allclose(fs, es, atol=1e-5)
    # identical order wherever neighbouring scores are not (near) ties
    gaps = np.abs(np.diff(es, axis=1))
    separated = np.ones_like(ei, dtype=bool)
    separated[:, 1:] &= gaps > 1e-5
    separated[:, :-1] &= gaps > 1e-5
    assert separated.mean() > 0.9
    np.testing.assert_array_equal(ei[separated], fi[separated])
    # full rankings too
    _, er = build_index(db, "exact").rank(q[:3])
    _, fr = build_index(db, "faiss").rank(q[:3])
    assert er.shape == fr.shape == (3, 2000)
    np.testing.assert_array_equal(er[:, :100], fr[:, :100])


def test_missing_faiss_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)
    with pytest.raises(MissingExtraError, match=r"pip install 'regatt\[faiss\]'"):
        import_faiss()
    with pytest.raises(MissingExtraError):
        build_index(np.eye(3, dtype=np.float32), "faiss")


# --------------------------------------------------------------------------- expansion


def test_average_qe_is_mean_of_query_and_top_k():
    rng = np.random.default_rng(5)
    db, q = unit(rng, 100), unit(rng, 3)
    _, nb = topk(q, db, 5)
    out = average_query_expansion(q, db, nb, k=5)
    for r in range(3):
        manual = (q[r] + db[nb[r]].sum(0)) / 6
        np.testing.assert_allclose(out[r], manual / np.linalg.norm(manual), atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1, atol=1e-6)
    # alpha = 0 is AQE; QueryExpansion() searches itself
    np.testing.assert_allclose(expand_queries(q, db, nb, k=5, alpha=0), out, atol=1e-7)
    np.testing.assert_allclose(QueryExpansion(k=5)(q, db)[0], out, atol=1e-7)


def test_alpha_qe_weights_are_similarity_power():
    rng = np.random.default_rng(6)
    db, q = unit(rng, 50), unit(rng, 2)
    s, nb = topk(q, db, 3)
    out = expand_queries(q, db, nb, s, k=3, alpha=3.0)
    w = np.maximum(s, 0) ** 3
    manual = q + np.einsum("qk,qkd->qd", w, db[nb])
    np.testing.assert_allclose(out, manual / np.linalg.norm(manual, axis=1, keepdims=True), atol=1e-6)
    with pytest.raises(ValueError, match="scores"):
        expand_queries(q, db, nb, None, k=3, alpha=3.0)


def test_dba_replaces_rows_by_weighted_neighbourhood():
    rng = np.random.default_rng(7)
    db = unit(rng, 30)
    out = augment_database(db, k=2, alpha=1.0)
    s = db @ db.T
    for r in (0, 17):
        others = [j for j in np.argsort(-s[r], kind="stable") if j != r][:2]
        manual = db[r] + sum(max(s[r, j], 0) * db[j] for j in others)
        np.testing.assert_allclose(out[r], manual / np.linalg.norm(manual), atol=1e-5)
    assert out.shape == db.shape and out.dtype == np.float32


def test_qe_finds_the_far_member_of_a_cluster():
    # a chain q -> a -> b: b is far from q but close to a, which is close to q
    d = 16
    e = np.eye(d, dtype=np.float32)
    q = l2_normalize(e[0] + 0.0 * e[1])
    a = l2_normalize(e[0] + 0.6 * e[1])
    b = l2_normalize(e[0] + 1.8 * e[1])
    distractor = l2_normalize(e[0] + 1.0 * e[2])
    db = np.stack([distractor, b, a])
    _, plain = retrieve(q, db)
    _, expanded = retrieve(q, db, steps=[QueryExpansion(k=1)])
    assert plain[0].tolist() == [2, 0, 1]
    assert expanded[0].tolist() == [2, 1, 0]


def test_steps_compose_and_zero_k_is_identity():
    rng = np.random.default_rng(8)
    db, q = unit(rng, 80), unit(rng, 4)
    s0, i0 = retrieve(q, db, top=10)
    s1, i1 = retrieve(q, db, top=10, steps=[QueryExpansion(k=0), DatabaseAugmentation(k=0)])
    np.testing.assert_array_equal(i0, i1)
    steps = [DatabaseAugmentation(k=3, alpha=3), QueryExpansion(k=2, alpha=3)]
    s2, i2 = retrieve(q, db, top=10, steps=steps)
    dba = augment_database(db, k=3, alpha=3)
    qe = QueryExpansion(k=2, alpha=3)(q, dba)[0]
    np.testing.assert_array_equal(i2, topk(qe, dba, 10)[1])


# --------------------------------------------------------------------------- grid


def test_result_grid_layout_and_png(tmp_path):
    rng = np.random.default_rng(9)
    paths = []
    for i in range(4):
        img = rng.integers(0, 255, size=(60 + 10 * i, 90, 3), dtype=np.uint8)
        p = tmp_path / f"img{i}.png"
        cv2.imwrite(str(p), img)
        paths.append(p)
    grid = result_grid(cv2.imread(str(paths[0])), [("a", 0.9, None)] * 3, tile=50, columns=2)
    assert grid.shape == (2 * (50 + 34), 100, 3) and grid.dtype == np.uint8
    out = save_result_grid(
        tmp_path / "sub" / "grid.png",
        paths[0],
        [(p.stem, 1.0 - 0.1 * i, p) for i, p in enumerate(paths)] + [("gone", 0.1, tmp_path / "x.jpg")],
        roi=(10, 10, 50, 40),
        tile=64,
        columns=3,
    )
    back = cv2.imread(str(out))
    assert back.shape == (2 * (64 + 34), 3 * 64, 3)
    # the query tile's box is drawn in yellow (B=0, G=R=255)
    assert ((back[:64, :64] == (0, 255, 255)).all(axis=2)).sum() > 20
