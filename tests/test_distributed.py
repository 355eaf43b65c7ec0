"""Encoding on a local Ray cluster equals the single-process pipeline, row for row."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from regatt_sdk.pipeline import encode_to_store
from regatt_sdk.store import Failure, FeatureStore


def _collection(photo_dir: Path, tmp: Path) -> Path:
    """The sample photos twice (original and a subfolder copy) plus two files that must fail."""
    src = tmp / "collection"
    shutil.copytree(photo_dir, src)
    shutil.copytree(photo_dir, src / "more")
    (src / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (src / "empty.png").write_bytes(b"")
    return src


@pytest.mark.slow
def test_ray_matches_single_process(tiny_model: Path, photo_dir: Path, tmp_path: Path) -> None:
    ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'regatt[ray]')")
    pytest.importorskip("ray.data")
    from regatt_sdk.distributed import encode_with_ray, merge_stores
    from regatt_sdk.encoder import Encoder

    src = _collection(photo_dir, tmp_path)
    single = tmp_path / "single"
    enc = Encoder(tiny_model, device="cpu", max_side=96, threads=1)
    encode_to_store(enc, [src], single, batch_size=4, workers=1, progress=False)

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        report = encode_with_ray(tiny_model, [src], tmp_path / "dist", num_actors=2, batch_size=4,
                                 rows_per_call=3, max_side=96, threads=1, decode_threads=1,
                                 progress=False)  # fmt: skip
    finally:
        ray.shutdown()

    a, b = FeatureStore.open(single), FeatureStore.open(tmp_path / "dist")
    assert b.names == a.names and len(a.names) == 12
    np.testing.assert_allclose(b.vectors, a.vectors, atol=1e-6, rtol=0)
    assert [f.name for f in b.failures] == [f.name for f in a.failures]
    assert {f.name for f in b.failures} == {str(src / "broken.jpg"), str(src / "empty.png")}
    assert [f.reason for f in b.failures] == [f.reason for f in a.failures]
    assert b.manifest["model"] == a.manifest["model"] and b.card_hash == a.card_hash
    assert (report.encoded, report.failed, report.rows) == (12, 2, 12)
    assert not (tmp_path / "dist.shards").exists()  # shards merged and removed

    # merge_stores alone: two shards concatenated, a name lost in none of them reported
    merged = FeatureStore.create(tmp_path / "merged", card_hash=a.card_hash, dim=a.dim)
    rows, failures = merge_stores([single], merged, order=list(reversed(a.names)) + ["ghost"])
    assert rows == 12 and failures == [Failure("ghost", "lost: no worker returned it")]
    np.testing.assert_array_equal(merged.vectors, np.asarray(a.vectors)[::-1])
    merged.close()


def test_missing_ray_message(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    from regatt_sdk import distributed
    from regatt_sdk.errors import MissingExtraError

    real = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ImportError(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    # ray may already be imported in this worker: a None entry makes any import of it fail
    monkeypatch.setitem(sys.modules, "ray", None)
    monkeypatch.setitem(sys.modules, "ray.data", None)
    with pytest.raises(MissingExtraError, match=r"pip install 'regatt\[ray\]'"):
        distributed.import_ray()
