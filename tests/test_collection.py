"""``regatt_sdk.Collection``: create, add (resumable), search, search_vectors, duplicates, open,
on the committed ``tests/fixtures/tiny.onnx`` (no PyTorch needed)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from regatt_sdk import Collection, EncoderOptions
from regatt_sdk.collection import CollectionError
from regatt_sdk.store import FeatureStore, StoreError

TINY = Path(__file__).parent / "fixtures" / "tiny.onnx"
OPTS = EncoderOptions(device="cpu", threads=1, max_side=96)


@pytest.fixture(scope="module")
def pictures(tmp_path_factory) -> Path:
    """Six random pictures, and an exact copy of the first (``copy.png``)."""
    d = tmp_path_factory.mktemp("pictures")
    rng = np.random.default_rng(7)
    for k in range(6):
        base = rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)
        img = cv2.resize(base, (160, 120), interpolation=cv2.INTER_CUBIC)  # smooth, photo-like
        cv2.imwrite(str(d / f"p{k}.png"), img)
    cv2.imwrite(str(d / "copy.png"), cv2.imread(str(d / "p0.png")))
    return d


def test_create_add_search(pictures, tmp_path):
    col = Collection.create(tmp_path / "c", TINY, OPTS)
    assert len(col) == 0 and col.names == [] and col.dim == col.encoder.dim
    with pytest.raises(CollectionError, match="is empty"):
        col.search(pictures / "p1.png")
    report = col.add(pictures)  # a folder, as a single source
    assert report.encoded == 7 and report.failed == 0 and len(col) == 7
    assert sorted(Path(n).name for n in col.names) == sorted(p.name for p in pictures.iterdir())
    assert col.vectors.shape == (7, col.dim) and np.allclose(np.linalg.norm(col.vectors, axis=1), 1, atol=1e-5)

    hits = col.search(pictures / "p3.png", top=3)
    assert [h.rank for h in hits] == [1, 2, 3]
    assert Path(hits[0].name).name == "p3.png" and hits[0].score == pytest.approx(1.0, abs=1e-4)
    assert hits[0].score >= hits[1].score >= hits[2].score
    # an array query, a box (as text or a tuple) and query expansion go through the same path
    img = cv2.imread(str(pictures / "p3.png"))
    assert col.search(img, top=1)[0].name == hits[0].name
    boxed = col.search(pictures / "p3.png", top=2, roi="0,0,80,60")
    assert boxed == col.search(pictures / "p3.png", top=2, roi=(0, 0, 80, 60))
    assert boxed[0].score < hits[0].score  # a crop is described differently
    assert len(col.search(pictures / "p3.png", top=4, qe=2)) == 4
    # vectors: one list of hits per query
    per_query = col.search_vectors(col.vectors[[2, 4]], top=2)  # rows 0 and 1: the copy and p0
    assert [q[0].row for q in per_query] == [2, 4]
    assert col.search_vectors(col.vectors[2], top=1)[0][0].row == 2
    with pytest.raises(CollectionError, match="expected"):
        col.search_vectors(np.zeros((2, 3), np.float32))


def test_add_resumes_and_reopens(pictures, tmp_path):
    col = Collection.create(tmp_path / "c", TINY, OPTS)
    first = col.add([str(pictures / "p0.png"), str(pictures / "p1.png")], batch_size=1)
    assert first.encoded == 2
    again = col.add([str(pictures)])  # the two already in are skipped
    assert again.encoded == 5 and again.skipped == 2 and len(col) == 7
    reopened = Collection.open(tmp_path / "c", TINY, OPTS)
    assert reopened.names == col.names and np.array_equal(reopened.vectors, col.vectors)
    # without a model: read and search by vector, not by image
    bare = Collection.open(tmp_path / "c")
    assert len(bare) == 7 and bare.encoder is None
    assert bare.search_vectors(col.vectors[0], top=1)[0][0].row == 0
    with pytest.raises(CollectionError, match="open the collection with its model"):
        bare.search(pictures / "p0.png")
    with pytest.raises(CollectionError, match="open the collection with its model"):
        bare.add([str(pictures)])
    with pytest.raises(CollectionError, match="always resumes"):
        col.add([str(pictures)], resume=False)


def test_legacy_store_keeps_opening_and_growing(pictures, tmp_path):
    """A store made before the card hash left the tool versions out records the legacy hash:
    it opens, searches and grows (rows appended under the hash it records)."""
    col = Collection.create(tmp_path / "new", TINY, OPTS)
    card = col.encoder.card
    legacy = tmp_path / "legacy"
    with FeatureStore.create(legacy, card_hash=card.legacy_hash, dim=card.dim, model={"max_side": 96}) as st:
        st.append(["old.png"], np.asarray(col.encoder.encode(pictures / "p2.png"))[None])
    old = Collection.open(legacy, TINY, OPTS)
    assert old.card_hash == card.legacy_hash != card.hash
    report = old.add([str(pictures / "p2.png"), str(pictures / "p5.png")])
    assert report.encoded == 2 and len(old) == 3 and old.card_hash == card.legacy_hash
    assert old.search(pictures / "p2.png", top=1)[0].score == pytest.approx(1.0, abs=1e-4)


def test_another_models_store_is_refused(tmp_path):
    other = tmp_path / "other"
    with FeatureStore.create(other, card_hash="0123456789abcdef", dim=32) as st:
        st.append(["x"], np.full((1, 32), 32**-0.5, np.float32))
    with pytest.raises(StoreError, match="another model"):
        Collection.open(other, TINY, OPTS)
    with pytest.raises(StoreError, match="does not exist"):
        Collection.open(tmp_path / "missing")
    Collection.create(tmp_path / "c", TINY, OPTS)
    with pytest.raises(StoreError, match="already a feature store"):
        Collection.create(tmp_path / "c", TINY, OPTS)


def test_duplicates(pictures, tmp_path):
    col = Collection.create(tmp_path / "c", TINY, OPTS)
    col.add([str(pictures)])
    found = col.duplicates(threshold=0.9999)
    copies = {Path(r.name).name for r in found.rows}
    assert copies == {"p0.png", "copy.png"} and found.groups == 1 and found.label == "descriptor cosine"
    assert [r.action for r in found.rows].count("remove") == 1 == len(found.removals)
    assert "1 groups, 1 to remove, among 7 images" in found.summary()
    everything = col.duplicates(threshold=-1.0, keep="first")
    assert everything.groups == 1 and len(everything.rows) == 7
    assert [r.member for r in everything.rows if r.action == "keep"] == [0]  # the first row
    with pytest.raises(Exception, match="unknown keep policy"):
        col.duplicates(threshold=0.9, keep="newest")
    bare = Collection.open(tmp_path / "c")
    assert bare.duplicates(threshold=0.9999).groups == 1  # by descriptor alone: no model needed
    with pytest.raises(Exception, match="give the model"):
        bare.duplicates(preset="near")


def test_options_need_a_model_file(tmp_path):
    col = Collection.create(tmp_path / "c", TINY, OPTS)
    with pytest.raises(CollectionError, match="options apply to a model file"):
        Collection.open(tmp_path / "c", col.encoder, OPTS)
    with pytest.raises(CollectionError, match="need a model"):
        Collection.open(tmp_path / "c", None, OPTS)
    assert Collection.open(tmp_path / "c", col.encoder).encoder is col.encoder


def test_pgvector_table_as_the_backend(pictures, tmp_path, pg_url):
    pytest.importorskip("psycopg")
    pytest.importorskip("pgvector")
    col = Collection.create(tmp_path / "c", TINY, OPTS, db=pg_url, table="collection_t")
    col.add([str(pictures / "p1.png"), str(pictures / "p3.png")])
    col.add([str(pictures)])  # the table follows the store: only the rows it lacks
    assert col.sync()["added"] == 0 and col.sync()["rows"] == len(col) == 7
    on_db = col.search(pictures / "p3.png", top=4)
    in_store = Collection.open(tmp_path / "c", TINY, OPTS).search(pictures / "p3.png", top=4)
    assert on_db[0].name == in_store[0].name == str(pictures / "p3.png")
    np.testing.assert_allclose([h.score for h in on_db], [h.score for h in in_store], atol=1e-5)
    assert col.search_vectors(col.vectors[2], top=1)[0][0].row == 2
    with pytest.raises(CollectionError, match="searches its table"):
        col.search(pictures / "p3.png", backend="faiss")
    col.close()
    # a store of another model is refused by the table
    from regatt_sdk.index.pgvector import DatabaseError

    other = tmp_path / "other"
    with FeatureStore.create(other, card_hash="0123456789abcdef", dim=32) as st:
        st.append(["x"], np.full((1, 32), 32**-0.5, np.float32))
    with pytest.raises(DatabaseError, match="another model"):
        Collection.open(other, db=pg_url, table="collection_t").sync()


def test_duplicates_leave_out_removed_rows(tiny_model, tmp_path, photos):
    import shutil

    import cv2

    from regatt_sdk import Collection
    from regatt_sdk.tombstones import remove

    d = tmp_path / "p"
    d.mkdir()
    cv2.imwrite(str(d / "a.jpg"), photos["astronaut"])
    shutil.copy(d / "a.jpg", d / "a-copy.jpg")
    cv2.imwrite(str(d / "b.jpg"), photos["coffee"])
    col = Collection.create(tmp_path / "s", tiny_model)
    col.add([str(d)])
    before = col.duplicates(threshold=0.99999)  # identical files: identical descriptors (any model)
    assert before.groups == 1 and {r.name.rsplit("/", 1)[-1] for r in before.rows} == {"a.jpg", "a-copy.jpg"}
    with col.store.__class__.open(col.path, writable=True) as st:
        remove(st, [col.names.index(str(d / "a-copy.jpg"))])
    col = Collection.open(tmp_path / "s", tiny_model)
    assert col.duplicates(threshold=0.99999).groups == 0
