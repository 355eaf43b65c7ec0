"""The feature store: numpy-readable, all-or-nothing appends, survives kill -9, refuses mix-ups."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import regatt_sdk
from regatt_sdk.errors import RegattError
from regatt_sdk.store import Failure, FeatureStore, StoreError, load_features


def rows(start: int, n: int, dim: int = 4) -> np.ndarray:
    """Rows whose every value is their global row index: ``(n, dim)`` float32."""
    return np.repeat(np.arange(start, start + n, dtype=np.float32)[:, None], dim, axis=1)


def test_roundtrip_and_numpy_only_reading(tmp_path: Path) -> None:
    path = tmp_path / "store"
    names = ["a.jpg", "dir/b.png", "ünï cödé.jpg", "new\nline.jpg", "bad\udcff.jpg"]
    with FeatureStore.create(path, card_hash="abc", dim=4) as store:
        store.append(names[:2], rows(0, 2))
        store.append(names[2:], rows(2, 3), [Failure("x.jpg", "file is empty")])
    got_names, vectors = regatt_sdk.load_features(path)
    assert got_names == names
    assert isinstance(vectors, np.memmap) and vectors.dtype == np.float32
    np.testing.assert_array_equal(vectors, rows(0, 5))
    # numpy alone, from the manifest
    manifest = json.loads((path / "manifest.json").read_text())
    raw = np.memmap(path / "vectors.f32", "<f4", "r", shape=(manifest["count"], manifest["dim"]))
    np.testing.assert_array_equal(raw, rows(0, 5))
    store = FeatureStore.open(path)
    assert (store.count, store.dim, store.card_hash) == (5, 4, "abc")
    assert store.failures == [Failure("x.jpg", "file is empty")]
    lines = (path / "failures.jsonl").read_text().splitlines()
    assert json.loads(lines[0]) == {"name": "x.jpg", "reason": "file is empty"}
    assert store.done_names() == set(names) | {"x.jpg"}


def test_empty_store_loads(tmp_path: Path) -> None:
    FeatureStore.create(tmp_path / "s", card_hash="h", dim=7).close()
    names, vectors = load_features(tmp_path / "s")
    assert names == [] and vectors.shape == (0, 7) and vectors.dtype == np.float32


def test_append_validates(tmp_path: Path) -> None:
    with FeatureStore.create(tmp_path / "s", card_hash="h", dim=4) as store:
        with pytest.raises(ValueError):
            store.append(["a"], rows(0, 1, dim=3))
        with pytest.raises(ValueError):
            store.append(["a"], rows(0, 1).astype(np.float64))
        with pytest.raises(ValueError):
            store.append(["a", "b"], rows(0, 1))
    with pytest.raises(StoreError, match="read-only"):
        FeatureStore.open(tmp_path / "s").append(["a"], rows(0, 1))


def test_uncommitted_leftovers_are_ignored_then_cut(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "s"
    with FeatureStore.create(path, card_hash="h", dim=4) as store:
        store.append(["a", "b"], rows(0, 2))

        def crash(manifest: dict) -> None:
            raise OSError("disk pulled")

        monkeypatch.setattr(store, "_write_manifest", crash)
        with pytest.raises(StoreError, match="disk pulled"):
            store.append(["c"], rows(2, 1), [Failure("d", "bad")])
    assert (path / "vectors.f32").stat().st_size > 2 * 4 * 4  # bytes past the commit exist
    names, vectors = load_features(path)
    assert names == ["a", "b"] and vectors.shape == (2, 4)
    with FeatureStore.open(path, writable=True) as store:
        assert (path / "vectors.f32").stat().st_size == 2 * 4 * 4
        assert (path / "failures.jsonl").stat().st_size == 0
        store.append(["c"], rows(2, 1))
    names, vectors = load_features(path)
    assert names == ["a", "b", "c"]
    np.testing.assert_array_equal(vectors, rows(0, 3))


def test_refusals(tmp_path: Path) -> None:
    path = tmp_path / "s"
    FeatureStore.open_for_append(path, card_hash="h1", dim=4, resume=False).close()
    with pytest.raises(StoreError, match="--resume"):
        FeatureStore.open_for_append(path, card_hash="h1", dim=4, resume=False)
    with pytest.raises(StoreError, match="another model"):
        FeatureStore.open_for_append(path, card_hash="h2", dim=4, resume=True)
    with pytest.raises(StoreError, match="another model"):
        FeatureStore.open_for_append(path, card_hash="h1", dim=8, resume=True)
    FeatureStore.open_for_append(path, card_hash="h1", dim=4, resume=True).close()
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(StoreError, match="not a feature store"):
        FeatureStore.create(other, card_hash="h", dim=4)
    with pytest.raises(StoreError, match="not a feature store"):
        load_features(other)
    with pytest.raises(StoreError, match="does not exist"):
        load_features(tmp_path / "nowhere")
    assert issubclass(StoreError, RegattError)


def test_one_writer_at_a_time(tmp_path: Path) -> None:
    path = tmp_path / "s"
    with FeatureStore.create(path, card_hash="h", dim=4):
        with pytest.raises(StoreError, match="another process"):
            FeatureStore.open(path, writable=True)
        FeatureStore.open(path)  # readers are fine
    FeatureStore.open(path, writable=True).close()


def test_damaged_store_reported(tmp_path: Path) -> None:
    path = tmp_path / "s"
    with FeatureStore.create(path, card_hash="h", dim=4) as store:
        store.append(["a", "b"], rows(0, 2))
    with open(path / "vectors.f32", "r+b") as fh:
        fh.truncate(8)
    with pytest.raises(StoreError, match="damaged"):
        FeatureStore.open(path)
    (path / "manifest.json").write_text("{not json")
    with pytest.raises(StoreError, match="not JSON"):
        FeatureStore.open(path)


WRITER = """
import sys, numpy as np
from regatt_sdk.store import FeatureStore, Failure
path = sys.argv[1]
store = FeatureStore.open_for_append(path, card_hash="h", dim=64, resume=True)
n = store.count
print("ready", flush=True)
while True:
    k = 1 + n % 5
    vec = np.repeat(np.arange(n, n + k, dtype=np.float32)[:, None], 64, axis=1)
    store.append([f"img{i}" for i in range(n, n + k)], vec, [Failure(f"bad{n}", "x")])
    n += k
"""


def test_kill_9_never_tears_the_store(tmp_path: Path) -> None:
    path = tmp_path / "s"
    rng = np.random.default_rng(7)
    counts = []
    for _ in range(6):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        time.sleep(float(rng.uniform(0.02, 0.2)))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        names, vectors = load_features(path)
        assert names == [f"img{i}" for i in range(len(names))]
        np.testing.assert_array_equal(vectors[:, 0], np.arange(len(names), dtype=np.float32))
        assert np.all(vectors == vectors[:, :1])
        failures = FeatureStore.open(path).failures
        assert all(f.reason == "x" for f in failures)
        counts.append(len(names))
    assert counts == sorted(counts) and counts[-1] > 0


def test_side_files_commit_with_the_manifest_and_cut_uncommitted_bytes(tmp_path, monkeypatch):
    """Side files (local features) are append-only, committed by the same manifest, and a
    writer's open cuts bytes past their committed length that an interrupted commit left, like
    the vectors."""
    from regatt_sdk.store import FeatureStore

    path = tmp_path / "s"
    st = FeatureStore.create(path, card_hash="h", dim=2)
    st.append(["a"], np.ones((1, 2), np.float32), side={"local.kp": b"abc"}, side_meta={"local": {"count": 1}})
    st.append([], np.zeros((0, 2), np.float32), side={"local.kp": b"de"}, side_meta={"local": {"count": 2}})
    with monkeypatch.context() as mp:  # killed before its manifest: the side bytes are uncommitted
        mp.setattr(st, "_write_manifest", lambda m: (_ for _ in ()).throw(OSError("killed")))
        with pytest.raises(StoreError, match="killed"):
            st.append([], np.zeros((0, 2), np.float32), side={"local.kp": b"uncommitted"})
    st.close()
    assert (path / "local.kp").read_bytes() == b"abcdeuncommitted"
    st = FeatureStore.open(path, writable=True)
    assert st.side_bytes("local.kp") == 5 and st.side_meta == {"local": {"count": 2}}
    assert (path / "local.kp").read_bytes() == b"abcde"
    assert st.side_bytes("other") == 0
    for bad in ("../x", "vectors.f32", ".hidden", "a/b", ""):
        with pytest.raises(ValueError):
            st.append([], np.zeros((0, 2), np.float32), side={bad: b"x"})
    st.close()
    (path / "local.kp").write_bytes(b"ab")
    with pytest.raises(StoreError, match="local.kp"):
        FeatureStore.open(path)
