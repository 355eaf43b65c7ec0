"""Issue 23 #1 and #9: a store whose manifest is older than its data is refused, never cut, on a
writer's open; finite values on write; a CRC-32 per committed chunk (vectors, names, failures,
side files) checked cheaply on open and in full by ``regatt verify``; ``--repair`` cuts back to
the last good chunk, keeping a copy; stores from before checksums keep opening."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from regatt_sdk.cli.app import main
from regatt_sdk.integrity import repair, verify
from regatt_sdk.store import CHECKSUMS, Failure, FeatureStore, StoreError, load_features

DIM = 8


def rows(start: int, n: int) -> np.ndarray:
    v = np.arange(start * DIM, (start + n) * DIM, dtype=np.float32).reshape(n, DIM) + 1
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def make_store(path: Path, chunks: int = 5, per: int = 50, *, side: bool = False) -> Path:
    with FeatureStore.create(path, card_hash="h", dim=DIM) as st:
        for k in range(chunks):
            extra = {"side": {"local.kp": bytes([k]) * 7}} if side else {}
            st.append([f"img{k * per + i:04d}.jpg" for i in range(per)], rows(k * per, per),
                      [Failure(f"bad{k}.jpg", "unreadable")], **extra)  # fmt: skip
    return path


def cli(args: list[str], capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as info:
        main(args)
    out = capsys.readouterr()
    return int(info.value.code or 0), out.out + out.err


def sizes(path: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in path.iterdir() if p.is_file()}


# ------------------------------------------------------------------ 1: validate before cutting


def test_a_manifest_older_than_its_data_is_refused_never_cut(tmp_path: Path, capsys) -> None:
    """250 rows on disk, a manifest (restored from a backup) that commits 200: a writer's open,
    and so ``encode --resume``, refuses before a byte is cut (was: 50 rows of vectors cut, then
    "250 names for 200 rows"); ``regatt verify`` says so; ``--repair`` cuts them to a copy."""
    path = tmp_path / "s"
    with FeatureStore.create(path, card_hash="h", dim=DIM) as st:
        for k in range(4):
            st.append([f"img{k * 50 + i:04d}.jpg" for i in range(50)], rows(k * 50, 50))
        backup = json.loads((path / "manifest.json").read_text())
        st.append([f"img{200 + i:04d}.jpg" for i in range(50)], rows(200, 50))
    (path / "manifest.json").write_text(json.dumps(backup))
    before = sizes(path)
    with pytest.raises(StoreError, match="past what its manifest commits.*50 rows of vectors.*Nothing was cut"):
        FeatureStore.open(path, writable=True)
    with pytest.raises(StoreError, match="Nothing was cut"):
        FeatureStore.open_for_append(path, card_hash="h", dim=DIM, resume=True)
    assert sizes(path) == before  # not a byte cut
    names, vectors = load_features(path)  # readers see the committed 200 rows
    assert len(names) == 200 and vectors.shape == (200, DIM)
    code, out = cli(["verify", str(path)], capsys)
    assert code == 1 and "manifest is older than the data" in out, out
    code, out = cli(["verify", str(path), "--repair"], capsys)
    assert code == 0 and "kept 200 rows" in out, out
    copy = next(path.glob("repair-*"))
    assert (copy / "vectors.f32").read_bytes() == rows(200, 50).tobytes()  # the cut rows, kept
    assert json.loads((copy / "manifest.json").read_text()) == backup
    with FeatureStore.open(path, writable=True) as st:
        st.append(["new.jpg"], rows(300, 1))
    assert load_features(path)[0][-2:] == ["img0199.jpg", "new.jpg"]
    assert verify(path).ok


def test_an_interrupted_commit_is_still_cut_by_a_writer(tmp_path: Path, monkeypatch) -> None:
    path = make_store(tmp_path / "s", chunks=2)
    with FeatureStore.open(path, writable=True) as st:
        monkeypatch.setattr(st, "_write_manifest", lambda m: (_ for _ in ()).throw(OSError("killed")))
        with pytest.raises(StoreError, match="killed"):
            st.append(["x.jpg"], rows(500, 1), side={"local.kp": b"zz"})
    assert verify(path).ok and verify(path).interrupted
    with FeatureStore.open(path, writable=True) as st:
        assert st.count == 100
    assert verify(path).ok and not verify(path).tails


# ------------------------------------------------------------------ 9: finite values, checksums


def test_non_finite_vectors_are_refused_on_write(tmp_path: Path) -> None:
    with FeatureStore.create(tmp_path / "s", card_hash="h", dim=DIM) as st:
        for bad in (np.nan, np.inf, -np.inf):
            v = rows(0, 3)
            v[1, 2] = bad
            with pytest.raises(StoreError, match="1 row.*NaN or infinite.*'b.jpg'"):
                st.append(["a.jpg", "b.jpg", "c.jpg"], v)
        assert st.count == 0
    assert (tmp_path / "s" / "vectors.f32").stat().st_size == 0


def test_a_corrupted_chunk_is_found_named_and_cut_back(tmp_path: Path, capsys) -> None:
    """1e30 written into row 60 (chunk 1 of 5): open still works (only the last chunk is read),
    ``regatt verify`` names rows 50..99 and exits 1, ``--repair`` keeps rows 0..49 and a copy."""
    path = make_store(tmp_path / "s")
    code, out = cli(["verify", str(path)], capsys)
    assert code == 0 and "250 rows, 5 chunks checked" in out and "ok:" in out, out
    original = (path / "vectors.f32").read_bytes()
    with open(path / "vectors.f32", "r+b") as fh:
        fh.seek((60 * DIM + 3) * 4)
        fh.write(np.float32(1e30).tobytes())
    FeatureStore.open(path)  # the cheap check reads the last chunk only
    report = verify(path)
    assert not report.ok and [(d.start, d.end, d.chunk) for d in report.damage] == [(50, 100, 1)]
    assert "vectors.f32" in report.damage[0].reason and report.damage[0].names[0] == "img0050.jpg"
    code, out = cli(["verify", str(path)], capsys)
    assert code == 1 and "damaged: rows 50..99 (chunk 1): vectors.f32" in out and "img0050.jpg" in out, out
    code, out = cli(["verify", str(path), "--repair"], capsys)
    assert code == 0 and "kept 50 rows, cut 200" in out, out
    st = FeatureStore.open(path)
    assert st.count == 50 and st.failure_count == 1 and st.names[-1] == "img0049.jpg"
    copy = next(path.glob("repair-*"))
    cut = bytearray(original[50 * DIM * 4 :])
    cut[(10 * DIM + 3) * 4 : (10 * DIM + 4) * 4] = np.float32(1e30).tobytes()
    assert (copy / "vectors.f32").read_bytes() == bytes(cut)
    assert json.loads((copy / "cut.json").read_text())["rows_cut"] == 200
    assert verify(path).ok
    with FeatureStore.open(path, writable=True) as st:  # and it goes on
        st.append(["more.jpg"], rows(50, 1))
    assert verify(path).ok


def test_damage_in_the_last_chunk_is_refused_on_open(tmp_path: Path) -> None:
    path = make_store(tmp_path / "s", chunks=3)
    data = bytearray((path / "names.jsonl").read_bytes())
    data[-5] ^= 0x01  # one bit of the last commit's names
    (path / "names.jsonl").write_bytes(bytes(data))
    for writable in (False, True):
        with pytest.raises(StoreError, match=r"last commit \(rows 100..149\) is damaged.*names.jsonl"):
            FeatureStore.open(path, writable=writable)


def test_side_files_and_failures_are_checked_too(tmp_path: Path) -> None:
    path = make_store(tmp_path / "s", chunks=3, side=True)
    m = json.loads((path / "manifest.json").read_text())
    assert set(m["last_chunk"]["files"]) == {"vectors.f32", "names.jsonl", "failures.jsonl", "local.kp"}
    with open(path / "local.kp", "r+b") as fh:
        fh.seek(8)
        fh.write(b"\xff")
    report = verify(path)
    assert [(d.chunk, d.start) for d in report.damage] == [(1, 50)] and "local.kp" in report.damage[0].reason
    shutil.copy(path / "failures.jsonl", tmp_path / "f")
    out = repair(path)
    assert out.kept == 50 and (path / "local.kp").read_bytes() == bytes([0]) * 7
    assert verify(path).ok


def test_stores_from_before_checksums_keep_opening(tmp_path: Path) -> None:
    path = make_store(tmp_path / "s", chunks=2)
    m = json.loads((path / "manifest.json").read_text())
    for key in ("checksums_bytes", "checksums_from_row", "last_chunk"):
        m.pop(key)
    (path / "manifest.json").write_text(json.dumps(m))
    (path / CHECKSUMS).unlink()
    names, vectors = load_features(path)
    assert len(names) == 100
    report = verify(path)
    assert report.ok and report.unchecked_rows == 100 and report.chunks == 0
    with FeatureStore.open(path, writable=True) as st:  # checksums start with the next commit
        st.append(["new.jpg"], rows(100, 1))
    report = verify(path)
    assert report.ok and report.unchecked_rows == 100 and report.chunks == 1
    with open(path / "vectors.f32", "r+b") as fh:  # an old row goes bad: found by the value check
        fh.seek(30 * DIM * 4)
        fh.write(np.float32(np.nan).tobytes())
    report = verify(path)
    assert [(d.start, d.end) for d in report.damage] == [(30, 31)] and report.damage[0].names == ["img0030.jpg"]
    out = repair(path)
    assert out.kept == 30 and FeatureStore.open(path).count == 30 and verify(path).ok


def test_a_killed_creation_is_made_again_but_data_without_a_manifest_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "s"
    path.mkdir()
    for name in (".lock", "vectors.f32", "names.jsonl", "failures.jsonl"):
        (path / name).write_bytes(b"")  # killed between its first files and its first manifest
    FeatureStore.create(path, card_hash="h", dim=DIM).close()
    make_store(tmp_path / "t", chunks=1)
    (tmp_path / "t" / "manifest.json").unlink()
    with pytest.raises(StoreError, match="holds feature-store data .* but no manifest.json"):
        FeatureStore.create(tmp_path / "t", card_hash="h", dim=DIM)
    assert (tmp_path / "t" / "vectors.f32").stat().st_size == 50 * DIM * 4


def test_a_truncated_file_is_cut_back_to_the_chunk_it_reaches(tmp_path: Path) -> None:
    path = make_store(tmp_path / "s", chunks=4)
    size = (path / "names.jsonl").stat().st_size
    with open(path / "names.jsonl", "r+b") as fh:
        fh.truncate(size - 10)  # the last chunk's names lose their end
    with pytest.raises(StoreError, match="fewer than"):
        FeatureStore.open(path)
    report = verify(path)
    assert min(d.start for d in report.damage) == 150
    assert repair(path).kept == 150 and FeatureStore.open(path).count == 150 and verify(path).ok
