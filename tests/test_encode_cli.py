"""``regatt encode`` end to end with the tiny exported model: exit codes, failures, kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from regatt_sdk.cli.app import main  # noqa: E402
from regatt_sdk.store import FeatureStore, load_features  # noqa: E402
from test_pipeline import make_mixed_folder, small_photos  # noqa: E402

CLI = [sys.executable, "-c", "from regatt_sdk.cli.app import main; main()"]


def run_main(args: list[str]) -> int:
    with pytest.raises(SystemExit) as info:
        main(args)
    return int(info.value.code or 0)


def test_mixed_folder_exit_1_lists_failures(tiny_model: Path, tmp_path: Path, capsys) -> None:
    from regatt_sdk.encoder import Encoder

    good, broken = make_mixed_folder(tmp_path / "photos")
    store = tmp_path / "store"
    code = run_main(["encode", str(tiny_model), str(tmp_path / "photos"), "-o", str(store)])
    out, err = capsys.readouterr()
    assert code == 1
    assert f"encoded {len(good)} images" in out and f"{len(broken)} failed" in out
    assert err.count("failed: ") == min(len(broken), 10)
    names, vectors = load_features(store)
    assert names == good
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    encoder = Encoder(tiny_model)
    assert vectors.shape == (len(good), encoder.dim)
    for name, row in zip(names[:3], vectors[:3]):
        np.testing.assert_allclose(row, encoder.encode(name), atol=1e-4)
    lines = (store / "failures.jsonl").read_text().splitlines()
    recorded = {json.loads(line)["name"]: json.loads(line)["reason"] for line in lines}
    assert set(recorded) == set(broken)
    for name, part in broken.items():
        assert part in recorded[name]


def test_exit_codes_and_usage_errors(tiny_model: Path, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for i, im in enumerate(small_photos()[:3]):
        cv2.imwrite(str(folder / f"{i}.jpg"), im)
    store = str(tmp_path / "s")
    assert run_main(["encode", str(tiny_model), str(folder), "-o", store, "--no-progress"]) == 0
    assert "encoded 3 images, 0 failed" in capsys.readouterr().out
    # stdin and list files
    listing = tmp_path / "list.txt"
    listing.write_text(f"{folder / '0.jpg'}\n{folder / '1.jpg'}\n")
    assert run_main(["encode", str(tiny_model), "--list", str(listing), "-o", str(tmp_path / "l")]) == 0
    assert load_features(tmp_path / "l")[0] == [str(folder / "0.jpg"), str(folder / "1.jpg")]
    capsys.readouterr()
    usage = [
        ["encode", str(tiny_model), str(folder), "-o", store],  # exists, no --resume
        ["encode", str(tiny_model), str(tmp_path / "missing"), "-o", str(tmp_path / "x")],
        ["encode", str(tiny_model), "-o", str(tmp_path / "x")],  # no sources
        ["encode", str(tmp_path / "nomodel.onnx"), str(folder), "-o", str(tmp_path / "x")],
        ["encode", str(tiny_model), str(folder), "-o", str(tmp_path / "x"), "--batch-size", "0"],
    ]
    for args in usage:
        assert run_main(args) == 2, args
        err = capsys.readouterr().err
        assert err.strip(), args
    assert "--resume" in _last_error(tiny_model, folder, store, capsys, [])
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    manifest["card_hash"] = "0123456789abcdef"
    (tmp_path / "s" / "manifest.json").write_text(json.dumps(manifest))
    assert "another model" in _last_error(tiny_model, folder, store, capsys, ["--resume"])


def _last_error(model: Path, folder: Path, store: str, capsys, extra: list[str]) -> str:
    assert run_main(["encode", str(model), str(folder), "-o", store, *extra]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1  # one clear line, no traceback
    return err


def _count(store: Path) -> int:
    try:
        return int(json.loads((store / "manifest.json").read_text())["count"])
    except (OSError, ValueError, KeyError):
        return 0


def test_kill_9_and_resume_matches_uninterrupted_run(tiny_model: Path, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(3)
    base = small_photos()
    n = 128  # enough that a run outlasts the kill's random delay on a fast machine
    for i in range(n):
        im = cv2.resize(base[i % len(base)], (40 + 8 * (i % 3), 40))
        noisy = np.clip(im.astype(int) + rng.integers(-20, 20, im.shape), 0, 255).astype(np.uint8)
        cv2.imwrite(str(folder / f"{i:03d}.png"), noisy)
    (folder / "zz_bad.jpg").write_text("not an image")
    args = [str(tiny_model), str(folder), "--batch-size", "1", "--chunk-rows", "4",
            "--max-side", "64", "--workers", "2", "--no-progress", "--device", "cpu",
            "--threads", "1"]  # fmt: skip
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    ref = tmp_path / "reference"
    assert run_main(["encode", *args, "-o", str(ref)]) == 1  # uninterrupted, in this process

    store = tmp_path / "killed"
    kills_mid_run = 0
    for _ in range(3):
        proc = subprocess.Popen(
            CLI + ["encode", *args, "-o", str(store), "--resume"], env=env,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        before = _count(store)
        deadline = time.monotonic() + 30
        while proc.poll() is None and _count(store) <= before and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(float(rng.uniform(0, 0.02)))
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            kills_mid_run += _count(store) < n
        proc.wait()
        names, vectors = load_features(store)  # consistent after every kill
        assert len(names) == vectors.shape[0] == _count(store)
    assert kills_mid_run >= 2
    assert run_main(["encode", *args, "-o", str(store), "--resume"]) in (0, 1)
    names, vectors = load_features(store)
    ref_names, ref_vectors = load_features(ref)
    assert names == ref_names and len(names) == n
    np.testing.assert_array_equal(vectors, ref_vectors)
    assert FeatureStore.open(store).failures == FeatureStore.open(ref).failures
