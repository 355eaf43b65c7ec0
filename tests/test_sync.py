"""regatt sync: added, changed, touched, renamed and removed photos between runs; idempotent,
crash-safe, local features kept, metadata recorded, bad input refused."""

from __future__ import annotations

import os
import shutil
import struct
from pathlib import Path

import cv2
import numpy as np
import pytest

from regatt_sdk.photometa import exif, read_meta
from regatt_sdk.store import FeatureStore, StoreError
from regatt_sdk.sync import SyncError, sync
from regatt_sdk.tombstones import live_rows


@pytest.fixture(scope="module")
def encoder(tiny_model):
    from regatt_sdk.encoder import Encoder

    return Encoder(tiny_model)


def with_exif(jpeg: bytes, date: str, make: str, model: str) -> bytes:
    """``jpeg`` with an APP1 EXIF block: Make, Model in IFD0 and DateTimeOriginal in the EXIF IFD."""
    strings = [(0x010F, make.encode() + b"\0"), (0x0110, model.encode() + b"\0")]
    ifd0_entries = len(strings) + 1
    ifd0_size = 2 + 12 * ifd0_entries + 4
    data_at = 8 + ifd0_size
    blobs, entries = b"", b""
    for tag, raw in strings:
        entries += struct.pack("<HHII", tag, 2, len(raw), data_at + len(blobs))
        blobs += raw
    exif_ifd_at = data_at + len(blobs)
    entries += struct.pack("<HHII", 0x8769, 4, 1, exif_ifd_at)
    ifd0 = struct.pack("<H", ifd0_entries) + entries + b"\0\0\0\0"
    raw_date = date.encode() + b"\0"
    sub = struct.pack("<H", 1) + struct.pack("<HHII", 0x9003, 2, len(raw_date), exif_ifd_at + 18) + b"\0\0\0\0"
    tiff = b"II*\0" + struct.pack("<I", 8) + ifd0 + blobs + sub + raw_date
    app1 = b"Exif\0\0" + tiff
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + jpeg[2:]


@pytest.fixture
def folder(tmp_path, photos):
    d = tmp_path / "photos"
    (d / "trips" / "2024").mkdir(parents=True)
    for name, img in photos.items():
        sub = d / "trips" / "2024" if name in ("chelsea", "hubble_deep_field") else d
        cv2.imwrite(str(sub / f"{name}.jpg"), img)
    jpeg = (d / "coffee.jpg").read_bytes()
    (d / "coffee.jpg").write_bytes(with_exif(jpeg, "2024:05:01 10:20:30", "Canon", "Canon EOS R6"))
    return d


class Killed(BaseException):
    """Stands for kill -9: nothing catches it."""


def state(store: Path) -> dict:
    """Live rows by name: (vector bytes, metadata), plus the failure names."""
    st = FeatureStore.open(store)
    meta = read_meta(st)
    live = live_rows(st)
    return {n: (st.vectors[r].tobytes(), meta[r]) for n, r in live.items()}


def test_exif_date_and_camera():
    ok, buf = cv2.imencode(".jpg", np.zeros((8, 8, 3), np.uint8))
    data = with_exif(buf.tobytes(), "2023:12:24 18:00:01", "NIKON CORPORATION", "NIKON Z 6")
    assert exif(data) == {"date": "2023-12-24T18:00:01", "camera": "NIKON CORPORATION NIKON Z 6"}
    assert exif(buf.tobytes()) == {}
    assert exif(b"\xff\xd8\xff\xe1\x00\x10Exif\0\0garbage!") == {}


def test_sync_finds_added_changed_touched_renamed_removed(encoder, folder, tmp_path, photos):
    store = tmp_path / "s"
    r = sync(encoder, [str(folder)], store)
    assert (r.added, r.changed, r.removed, r.unchanged, r.live) == (6, 0, 0, 0, 6)
    st = FeatureStore.open(store)
    meta = {n: read_meta(st)[row] for n, row in live_rows(st).items()}
    coffee = meta[str(folder / "coffee.jpg")]
    assert coffee["date"] == "2024-05-01T10:20:30" and coffee["camera"] == "Canon EOS R6"
    assert (coffee["width"], coffee["height"]) == photos["coffee"].shape[1::-1]
    assert meta[str(folder / "trips" / "2024" / "coffee.jpg".replace("coffee", "chelsea"))]["folder"].endswith(
        "photos/trips/2024"
    )
    commits = st.manifest["commits"]
    again = sync(encoder, [str(folder)], store)  # idempotent: nothing read, nothing committed
    assert (again.added, again.changed, again.removed, again.unchanged) == (0, 0, 0, 6)
    assert FeatureStore.open(store).manifest["commits"] == commits

    astro = folder / "astronaut.jpg"
    cv2.imwrite(str(astro), cv2.flip(photos["astronaut"], 1))  # changed
    rocket = folder / "rocket.jpg"
    os.utime(rocket, ns=(rocket.stat().st_atime_ns, rocket.stat().st_mtime_ns + 5_000_000_000))  # touched
    (folder / "camera.jpg").unlink()  # removed
    os.rename(folder / "trips" / "2024" / "chelsea.jpg", folder / "cat.jpg")  # renamed
    cv2.imwrite(str(folder / "new.jpg"), cv2.flip(photos["coffee"], 0))  # added
    old_state = state(store)
    r = sync(encoder, [str(folder)], store)
    assert (r.added, r.changed, r.touched, r.removed, r.unchanged) == (2, 1, 1, 2, 2), r.summary()
    now = state(store)
    assert set(now) == {str(p) for p in folder.rglob("*.jpg")}
    np.testing.assert_array_equal(np.frombuffer(now[str(astro)][0], np.float32), encoder.encode(str(astro)))
    assert now[str(rocket)][0] == old_state[str(rocket)][0]  # copied, not encoded again
    assert now[str(rocket)][1]["mtime_ns"] == rocket.stat().st_mtime_ns
    assert now[str(folder / "cat.jpg")][0] == old_state[str(folder / "trips" / "2024" / "chelsea.jpg")][0]
    again = sync(encoder, [str(folder)], store)
    assert (again.added, again.changed, again.touched, again.removed, again.unchanged) == (0, 0, 0, 0, 6)
    from regatt_sdk.integrity import verify

    assert verify(store).ok
    # search never returns a removed or replaced row
    from regatt_sdk.index.searcher import Searcher

    s = Searcher.for_store(store, encoder)
    hits = s.search(str(astro), top=20)
    assert len(hits) == 6 and len({h.name for h in hits}) == 6
    assert not any(h.name.endswith("camera.jpg") for h in hits)


def test_sync_killed_at_any_commit_ends_like_a_clean_run(encoder, folder, tmp_path, photos, monkeypatch):
    base = tmp_path / "base"
    sync(encoder, [str(folder)], base)
    cv2.imwrite(str(folder / "astronaut.jpg"), cv2.flip(photos["astronaut"], 1))
    os.utime(folder / "rocket.jpg", ns=(0, 10**18))
    (folder / "camera.jpg").unlink()
    cv2.imwrite(str(folder / "new.jpg"), cv2.flip(photos["coffee"], 0))
    cv2.imwrite(str(folder / "new2.jpg"), cv2.flip(photos["rocket"], 0))
    clean = tmp_path / "clean"
    shutil.copytree(base, clean)
    sync(encoder, [str(folder)], clean, chunk_rows=1)
    want = state(clean)
    real = FeatureStore.append
    for kill_at in range(1, 100):
        work = tmp_path / f"k{kill_at}"
        shutil.copytree(base, work)
        calls = [0]

        def dying(self, *a, _at=kill_at, **kw):
            calls[0] += 1
            if calls[0] == _at:
                raise Killed  # the process dies before this commit (no handler commits anything)
            return real(self, *a, **kw)

        monkeypatch.setattr(FeatureStore, "append", dying)
        try:
            sync(encoder, [str(folder)], work, chunk_rows=1)
        except Killed:
            pass
        else:
            break  # fewer commits than kill_at: every one was interrupted once
        finally:
            monkeypatch.setattr(FeatureStore, "append", real)
        sync(encoder, [str(folder)], work, chunk_rows=1)
        assert state(work) == want, kill_at
    assert kill_at >= 4  # the encoded rows, the copied row and the removals were each interrupted


def test_sync_keeps_local_features(encoder, folder, tmp_path, photos):
    from regatt_sdk.local.storage import LocalIndex

    store = tmp_path / "s"
    sync(encoder, [str(folder)], store, local=True)
    cv2.imwrite(str(folder / "astronaut.jpg"), cv2.flip(photos["astronaut"], 1))
    os.utime(folder / "rocket.jpg", ns=(0, 10**18))
    r = sync(encoder, [str(folder)], store)  # local=None: as the store does
    assert (r.changed, r.touched) == (1, 1)
    st = FeatureStore.open(store)
    li = LocalIndex.open(st)
    assert li.count == st.count == 8
    live = live_rows(st)
    old_rocket = st.names.index(str(folder / "rocket.jpg"))
    np.testing.assert_array_equal(li.features(live[str(folder / "rocket.jpg")]).desc, li.features(old_rocket).desc)


def test_sync_of_an_encoded_store_records_metadata_then_removes(encoder, folder, tmp_path):
    from regatt_sdk.pipeline import encode_to_store

    store = tmp_path / "s"
    encode_to_store(encoder, [str(folder)], store, progress=False)
    (folder / "camera.jpg").unlink()
    r = sync(encoder, [str(folder)], store)
    assert (r.described, r.added, r.removed, r.unchanged) == (6, 0, 1, 5)
    assert len(read_meta(FeatureStore.open(store))) == 6


def test_bad_input_is_refused_and_nothing_is_lost(encoder, folder, tmp_path, monkeypatch, tiny_model):
    from regatt_sdk.sources import SourceError

    store = tmp_path / "s"
    with pytest.raises(SourceError, match="no such file"):
        sync(encoder, [str(tmp_path / "nowhere")], store)
    with FeatureStore.create(tmp_path / "other", card_hash="another", dim=int(encoder.dim)):
        pass
    with pytest.raises(StoreError, match="another model"):
        sync(encoder, [str(folder)], tmp_path / "other")
    sync(encoder, [str(folder)], store)
    # the source folder vanishes while it is walked (an unplugged disk): nothing is removed
    import regatt_sdk.sync as sync_module

    real = sync_module.iter_sources

    def vanish(*a, **kw):
        for k, item in enumerate(real(*a, **kw)):
            if k == 1:
                shutil.move(str(folder), str(tmp_path / "elsewhere"))
            yield item

    monkeypatch.setattr(sync_module, "iter_sources", vanish)
    with pytest.raises(SyncError, match="disappeared during the sync: nothing was removed"):
        sync(encoder, [str(folder)], store)
    assert len(live_rows(FeatureStore.open(store))) == 6


def test_cli_sync_then_compact(tiny_model, folder, tmp_path, capsys):
    from regatt_sdk.cli.app import main

    store = tmp_path / "s"

    def run(*args: str) -> int:
        try:
            main(list(args))
        except SystemExit as exc:
            return int(exc.code or 0)
        return 0

    assert run("sync", str(tiny_model), str(folder), "-o", str(store), "--no-progress") == 0
    assert "6 added" in capsys.readouterr().out
    (folder / "camera.jpg").unlink()
    assert run("sync", str(tiny_model), str(folder), "-o", str(store), "--no-progress") == 0
    assert "1 removed" in capsys.readouterr().out
    assert run("compact", str(store)) == 0
    assert "1 removed rows dropped, 5 rows kept" in capsys.readouterr().out
    assert FeatureStore.open(store).count == 5 and len(read_meta(FeatureStore.open(store))) == 5
    assert run("sync", str(tiny_model), str(folder), "-o", str(store), "--no-progress") == 0
    assert "0 added, 0 changed, 0 removed, 0 touched (same content), 5 unchanged" in capsys.readouterr().out


def test_dedup_against_a_collection(encoder, tiny_model, folder, tmp_path, photos, capsys):
    from regatt_sdk.cli.app import main
    from regatt_sdk.collection import Collection

    store = tmp_path / "s"
    sync(encoder, [str(folder)], store)
    (folder / "camera.jpg").unlink()
    sync(encoder, [str(folder)], store)  # camera's row is removed: it never matches
    new = tmp_path / "new"
    new.mkdir()
    coffee = photos["coffee"]
    cv2.imwrite(str(new / "coffee_small.jpg"), cv2.resize(coffee, None, fx=0.7, fy=0.7), [cv2.IMWRITE_JPEG_QUALITY, 80])
    cv2.imwrite(str(new / "camera_copy.jpg"), photos["camera"])
    rng = np.random.default_rng(0)
    cv2.imwrite(str(new / "noise.png"), rng.integers(0, 255, (200, 300, 3), dtype=np.uint8))
    (new / "broken.jpg").write_bytes(b"not a jpeg")
    col = Collection.open(store, encoder)
    before = FeatureStore.open(store).manifest
    for kw in ({"threshold": 0.95}, {"preset": "near"}):
        rep = col.duplicates_of([str(new)], **kw)
        assert rep.new == 3 and [n for n, _ in rep.failed] == [str(new / "broken.jpg")]
        by_new = {}
        for m in rep.matches:
            by_new.setdefault(m.new, []).append(m)
        assert by_new[str(new / "coffee_small.jpg")][0].name == str(folder / "coffee.jpg"), kw
        assert not any(m.name.endswith("camera.jpg") for m in rep.matches)
    assert FeatureStore.open(store).manifest == before  # the collection is not changed
    out = tmp_path / "out"
    try:
        main([
            "dedup", str(tiny_model), "--against", str(store), str(new / "coffee_small.jpg"), "-o", str(out),
            "--threshold", "0.95",
        ])  # fmt: skip
    except SystemExit as exc:
        assert not exc.code
    assert "1 of 1 new photos duplicate" in capsys.readouterr().out
    lines = (out / "against.csv").read_text().splitlines()
    assert lines[0] == "new,name,score,cosine,row,path" and "coffee.jpg" in lines[1]


def _manifest_commits(store: Path) -> int:
    import json

    try:
        return int(json.loads((store / "manifest.json").read_text())["commits"])
    except (OSError, ValueError, KeyError):
        return 0


def test_kill_9_during_sync_then_rerun_equals_a_clean_run(tiny_model, tmp_path, photos):
    import signal
    import subprocess
    import sys
    import time

    rng = np.random.default_rng(5)
    d = tmp_path / "photos"
    d.mkdir()
    base_imgs = list(photos.values())

    def write(i: int, salt: int) -> None:
        im = cv2.resize(base_imgs[i % len(base_imgs)], (56 + 8 * (i % 3), 48))
        noise = np.random.default_rng(i * 100 + salt).integers(-20, 20, im.shape)
        cv2.imwrite(str(d / f"{i:03d}.png"), np.clip(im.astype(int) + noise, 0, 255).astype(np.uint8))

    for i in range(48):
        write(i, 0)
    base = tmp_path / "base"
    cmd = [sys.executable, "-m", "regatt_sdk", "sync", str(tiny_model), str(d), "--no-progress", "--chunk-rows", "2",
           "--batch-size", "2", "-o"]  # fmt: skip
    assert subprocess.run([*cmd, str(base)], capture_output=True).returncode == 0
    for i in range(0, 48, 3):
        write(i, 1)  # changed
    for i in range(1, 48, 9):
        (d / f"{i:03d}.png").unlink()  # removed
    for i in range(48, 60):
        write(i, 0)  # added
    clean = tmp_path / "clean"
    shutil.copytree(base, clean)
    assert subprocess.run([*cmd, str(clean)], capture_output=True).returncode == 0
    want = state(clean)
    kills = 0
    for trial in range(3):
        work = tmp_path / f"w{trial}"
        shutil.copytree(base, work)
        target = _manifest_commits(work) + int(rng.integers(1, 6))
        proc = subprocess.Popen([*cmd, str(work)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while proc.poll() is None and _manifest_commits(work) < target and time.monotonic() < deadline:
            time.sleep(0.001)
        time.sleep(float(rng.uniform(0, 0.01)))
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            kills += 1
        proc.wait()
        assert subprocess.run([*cmd, str(work)], capture_output=True).returncode == 0
        assert state(work) == want, trial
    assert kills >= 2  # the runs were killed mid-way, not finished first


def test_kill_9_during_compact_then_rerun_equals_a_clean_run(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    from regatt_sdk.tombstones import remove

    n, dim = 200_000, 16
    rng = np.random.default_rng(9)
    vecs = rng.standard_normal((n, dim)).astype(np.float32)
    base = tmp_path / "base"
    with FeatureStore.create(base, card_hash="c", dim=dim) as st:
        st.append([f"p{i:06d}.jpg" for i in range(n)], vecs)
        remove(st, rng.choice(n, n // 3, replace=False))
    clean = tmp_path / "clean"
    shutil.copytree(base, clean)
    t0 = time.monotonic()
    assert (
        subprocess.run([sys.executable, "-m", "regatt_sdk", "compact", str(clean)], capture_output=True).returncode == 0
    )
    took = time.monotonic() - t0
    ref = FeatureStore.open(clean)
    for trial in range(3):
        work = tmp_path / f"w{trial}"
        shutil.copytree(base, work)
        proc = subprocess.Popen([sys.executable, "-m", "regatt_sdk", "compact", str(work)])
        time.sleep(float(rng.uniform(0.3, 1.0)) * took)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert (
            subprocess.run([sys.executable, "-m", "regatt_sdk", "compact", str(work)], capture_output=True).returncode
            == 0
        )
        got = FeatureStore.open(work)
        assert got.names == ref.names
        np.testing.assert_array_equal(got.vectors, ref.vectors)
        assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
        from regatt_sdk.integrity import verify

        assert verify(work).ok


def test_sync_faiss_adds_the_new_rows_to_the_ann_index(tiny_model, folder, tmp_path, photos, capsys):
    pytest.importorskip("faiss")
    import warnings

    from regatt_sdk.cli.app import main
    from regatt_sdk.index.searcher import Searcher

    store = tmp_path / "s"

    def run(*args: str) -> str:
        try:
            main(["sync", str(tiny_model), str(folder), "-o", str(store), "--no-progress", "--faiss", *args])
        except SystemExit as exc:
            assert not exc.code
        return capsys.readouterr().out

    assert "(built)" in run()
    cv2.imwrite(str(folder / "astronaut.jpg"), cv2.flip(photos["astronaut"], 1))  # changed: a new row
    (folder / "camera.jpg").unlink()
    out = run()
    assert "1 changed, 1 removed" in out and "(added 1 rows)" in out
    assert "ANN index: up to date" in run()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # not stale: no fallback to exact search
        s = Searcher.for_store(store)
    assert s.index.backend == "faiss" and s.index.size == 7
    st = FeatureStore.open(store)
    _, rows = s.search_vectors(np.asarray(st.vectors), 7)
    live = set(live_rows(st).values())
    assert set(rows[rows >= 0].tolist()) == live
