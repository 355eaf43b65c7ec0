"""``regatt bench``: a fast run on small models; checks the JSON schema and the files written
(never the timings themselves)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from regatt_sdk.bench.onnx_proto import matmul_model
from regatt_sdk.bench.profile import node_macs
from regatt_sdk.bench.stats import summarize
from regatt_sdk.cli.app import main

ROW_KEYS = {
    "engine",
    "variant",
    "p50_ms",
    "p90_ms",
    "backbone_p50_ms",
    "gflops_per_s",
    "head_share",
    "gemm_pct",
    "peak_rss_mb",
    "first_call_ms",
}
FAST = ["--runs", "2", "--warmup", "0", "--gemm-size", "128", "--profile-runs", "1", "--no-progress"]


def run_main(args: list[str]) -> int:
    with pytest.raises(SystemExit) as info:
        main(args)
    return int(info.value.code or 0)


def check_report(report: dict, engines: set[str], variants: set[str]) -> None:
    assert {"machine", "config", "results", "gemm_gflops_per_s", "targets", "paper"} <= set(report)
    assert report["gemm_gflops_per_s"] > 0
    assert report["machine"]["cpu_model"] and report["machine"]["threads"] >= 1
    rows = report["results"]
    assert {(r["engine"], r["variant"]) for r in rows} == {(e, v) for e in engines for v in variants}
    for r in rows:
        assert ROW_KEYS <= set(r), ROW_KEYS - set(r)
        assert r["p50_ms"] > 0 and r["p90_ms"] >= r["p50_ms"] * 0.999
        assert r["backbone_p50_ms"] is not None and r["backbone_p50_ms"] > 0
        assert r["gflops_per_s"] > 0
    assert {t["target"] for t in report["targets"]} == {"head_share", "gemm_pct", "speedup"}


def test_bench_given_model_json_and_files(tiny_model: Path, tmp_path: Path, capsys) -> None:
    out, js = tmp_path / "out", tmp_path / "b.json"
    code = run_main(
        [
            "bench",
            str(tiny_model),
            "--size",
            "64x96",
            "--engines",
            "ort-cpu",
            *FAST,
            "--out",
            str(out),
            "--json",
            str(js),
        ]
    )
    text = capsys.readouterr().out
    assert code == 0
    assert "| engine | variant | precision | p50 ms" in text and "0.123" in text  # the paper's context time beside ours
    report = json.loads(js.read_text())
    check_report(report, {"ort-cpu"}, {"context"})
    assert report["results"][0]["backbone_method"].startswith("onnxruntime profile")
    assert (out / "bench.json").is_file() and (out / "bench.md").read_text().startswith("# regatt bench")
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_given_model_without_torch(tiny_model: Path, tmp_path: Path) -> None:
    """A given ONNX model is benchmarked with torch unimportable; eager is skipped, with a note."""
    js = tmp_path / "b.json"
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from regatt_sdk.cli.app import main\n"
        "try:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        "assert sys.modules.get('torch') is None\n"
    )
    args = ["bench", str(tiny_model), "--size", "64x96", *FAST, "--json", str(js)]
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(js.read_text())
    assert {r["engine"] for r in report["results"]} == {"ort-cpu"}
    assert any("eager PyTorch skipped" in n for n in report["notes"])


def test_bench_builds_variants_with_eager(tmp_path: Path) -> None:
    """No model: build resnet18 variants, time eager PyTorch beside onnxruntime, reuse the cache."""
    js, cache = tmp_path / "b.json", tmp_path / "cache"
    args = [
        "bench",
        "--backbone",
        "resnet18",
        "--size",
        "64x96",
        "--variants",
        "none",
        "--engines",
        "torch-eager,ort-cpu",
        *FAST,
    ]
    assert run_main([*args, "--cache", str(cache), "--json", str(js)]) == 0
    report = json.loads(js.read_text())
    check_report(report, {"torch-eager", "ort-cpu"}, {"none"})
    ort_row = next(r for r in report["results"] if r["engine"] == "ort-cpu")
    assert ort_row["speedup_vs_eager"] > 0 and ort_row["backbone_method"].startswith("backbone-only graph")
    assert report["macs"]["torch"]["none"]["total"] > 0
    assert sorted(p.name for p in cache.glob("*.onnx")) == ["resnet18-none-L5-seed0.onnx", "resnet18-trunk-seed0.onnx"]
    assert run_main([*args, "--cache", str(cache), "--json", str(js)]) == 0
    assert json.loads(js.read_text())["config"]["export_s"]["none"] is None  # reused, not exported again


def test_bench_usage_errors(tmp_path: Path, capsys) -> None:
    assert run_main(["bench", str(tmp_path / "missing.onnx")]) == 2
    assert run_main(["bench", "--size", "big"]) == 2
    assert run_main(["bench", "--variants", "fancy"]) == 2
    assert "error:" in capsys.readouterr().err


def test_parts() -> None:
    """The torch-free helpers: stats, MAC formulas, the hand-written ONNX MatMul graph."""
    t = summarize([0.001, 0.002, 0.003, 0.004])
    assert t.n == 4 and t.p50_ms == pytest.approx(2.5) and t.images_per_s == pytest.approx(400.0)
    assert node_macs("Conv", [[1, 3, 8, 8], [4, 3, 3, 3]], [[1, 4, 8, 8]]) == 4 * 64 * 27
    assert node_macs("MatMul", [[1, 5, 16]], [[1, 5, 2]]) == 5 * 2 * 16
    assert node_macs("Relu", [[1, 4]], [[1, 4]]) == 0
    import numpy as np

    from regatt_sdk.engines.ort import create_session

    sess = create_session(matmul_model(3, 4, 5), providers=["CPUExecutionProvider"])
    a, b = np.ones((3, 4), np.float32), np.full((4, 5), 2.0, np.float32)
    np.testing.assert_allclose(sess.run(None, {"A": a, "B": b})[0], a @ b)


def test_bench_precision_and_quality_columns(tiny_model: Path, tmp_path: Path, photos) -> None:
    """fp32 and int8 of one model timed side by side, each with its landmark mAP and parity."""
    import cv2

    from regatt_export.quantize import Int8Options, quantize_int8

    lm = tmp_path / "landmarks"
    for name in ("astronaut", "coffee", "chelsea"):
        (lm / name).mkdir(parents=True)
        img = photos[name]
        cv2.imwrite(str(lm / name / "a.jpg"), img)
        cv2.imwrite(str(lm / name / "b.jpg"), cv2.flip(img, 1))
    calib = tmp_path / "calib"
    calib.mkdir()
    for name in ("rocket", "camera", "hubble_deep_field"):
        cv2.imwrite(str(calib / f"{name}.jpg"), photos[name])
    int8 = tmp_path / "int8.onnx"
    quantize_int8(tiny_model, int8, calib, Int8Options(count=3, holdout=1, min_cosine=-1.0))
    js = tmp_path / "p.json"
    code = run_main(
        [
            "bench",
            str(tiny_model),
            str(int8),
            "--size",
            "64x96",
            "--engines",
            "ort-cpu",
            "--quality",
            str(lm),
            *FAST,
            "--json",
            str(js),
        ]
    )
    assert code == 0
    rows = json.loads(js.read_text())["results"]
    by = {r["precision"]: r for r in rows}
    assert set(by) == {"fp32", "int8"} and len(rows) == 2
    assert all(0 <= r["map"] <= 100 for r in rows)
    assert by["int8"]["parity_min_cosine"] is not None and by["fp32"]["gemm_pct"] is not None
    assert by["int8"]["gemm_pct"] is None  # the fp32 GEMM peak says nothing about int8


def test_bench_engines_side_by_side(tiny_model: Path, tmp_path: Path, capsys) -> None:
    """--engine onnxruntime --engine openvino: one gated, interleaved row per engine in the
    engines x precisions table, shares of the truthful peak (measured and theoretical)."""
    pytest.importorskip("openvino")
    js = tmp_path / "e.json"
    args = ["bench", str(tiny_model), "--size", "64x96", "--engines", "ort-cpu", *FAST, "--json", str(js)]
    code = run_main([*args, "--engine", "onnxruntime", "--engine", "openvino", "--precision", "fp32"])
    text = capsys.readouterr().out
    assert code == 0
    section = text.split("## Engines x precisions", 1)[1].split("\n## ", 1)[0]
    table = [line for line in section.splitlines() if line.startswith("| ") and "| engine |" not in line]
    assert [line.split(" | ")[2:4] for line in table] == [["onnxruntime", "fp32"], ["openvino", "fp32"]]
    report = json.loads(js.read_text())
    (block,) = report["engines"]
    rows = {r["engine"]: r for r in block["rows"]}
    assert set(rows) == {"onnxruntime", "openvino"} and not block["refused"]
    assert all(r["gate"]["passed"] and r["runs"] == 2 and r["p50_ms"] > 0 for r in rows.values())
    assert rows["openvino"]["cosine_to_ort_fp32"] > 0.99999
    assert rows["onnxruntime"]["pct_measured_peak"] > 0 and rows["onnxruntime"]["peak_rss_mb"] > 0
    peak = report["peak"]
    assert report["gemm_gflops_per_s"] == peak["measured_gflops"] > 0
    assert {p["engine"].split()[0] for p in peak["start"]["probes"]} >= {"onnxruntime", "openvino", "numpy"}
    pct = 100 * rows["onnxruntime"]["gflops_per_s"] / peak["measured_gflops"]
    assert rows["onnxruntime"]["pct_measured_peak"] == pytest.approx(pct)
    # one fresh process per engine and round (the default): each row holds its processes' medians
    assert block["separate"] and all(len(r["process_p50_ms"]) == 2 for r in rows.values())
    assert all(r["retrieval"]["top10_mean"] == 1.0 for r in rows.values())  # exact engines rank as fp32
    assert "one fresh process per engine/precision and round" in text and "retrieval gate" in section
    # a peak per precision, measured and theoretical, in the JSON and the Markdown
    assert set(report["peaks"]) == {"fp32", "bf16", "int8"} and "| precision | unit (CPU flag) |" in text
    assert report["peaks"]["fp32"]["measured_gops"] == peak["measured_gflops"]
    assert set(report["machine"]["units"]) == {"fp32", "bf16", "int8"}


def test_bench_same_process_matrix(tiny_model: Path, tmp_path: Path, capsys) -> None:
    js = tmp_path / "s.json"
    args = ["bench", str(tiny_model), "--size", "64x96", "--engines", "ort-cpu", *FAST, "--json", str(js)]
    assert run_main([*args, "--engine", "onnxruntime", "--same-process"]) == 0
    assert "one interleaved run per model, in one process" in capsys.readouterr().out
    (block,) = json.loads(js.read_text())["engines"]
    assert not block["separate"] and block["rows"][0]["runs"] == 2


def test_precision_units_by_cpu_flag_never_by_vendor() -> None:
    from regatt_sdk.bench.peak import precision_units

    spr = precision_units({"fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16", "amx_int8"})
    assert (spr["bf16"]["unit"], spr["bf16"]["ops_per_cycle"]) == ("AMX-BF16", 1024)
    assert (spr["int8"]["unit"], spr["int8"]["ops_per_cycle"]) == ("AMX-INT8", 2048)
    cpx = precision_units({"fma", "avx512f", "avx512_bf16", "avx512_vnni"})  # AVX512-BF16 without AMX
    assert (cpx["bf16"]["flag"], cpx["bf16"]["ops_per_cycle"]) == ("avx512_bf16", 128)
    assert (cpx["int8"]["flag"], cpx["int8"]["ops_per_cycle"]) == ("avx512_vnni", 256)
    avx2 = precision_units({"fma", "avx2"})
    assert avx2["bf16"]["ops_per_cycle"] is None and "no bf16 unit" in avx2["bf16"]["rule"]
    assert avx2["int8"]["unit"] is None and avx2["fp32"]["ops_per_cycle"] == 32


def test_precision_peaks_check_their_products() -> None:
    pytest.importorskip("openvino")
    from regatt_sdk.bench.peak import Peak, openvino_gemm, precision_peaks

    for precision in ("bf16", "int8"):  # each raises if its product is wrong
        assert openvino_gemm(64, threads=1, runs=1, warmup=0, precision=precision).best_gflops_per_s > 0
    fp32 = Peak(100.0, "test", [], 200.0, 64, 2.0, "test", 1, "test")
    peaks = precision_peaks(1, fp32, sizes=(64,), runs=1)
    assert peaks["fp32"]["measured_gops"] == 100.0 and peaks["fp32"]["theoretical_gops"] == 64 * 2.0
    assert peaks["int8"]["measured_gops"] > 0 and {p["engine"].split()[0] for p in peaks["int8"]["probes"]} == {
        "onnxruntime",
        "openvino",
    }
    for p in peaks.values():
        assert p["theoretical_gops"] is None or p["theoretical_gops"] == p["ops_per_cycle"] * 2.0


def test_paper_columns_beside_engine_rows() -> None:
    from regatt_sdk.bench.runner import _paper_columns

    blocks = [{"attention": "context", "rows": [{"p50_ms": 246.0}]}, {"attention": "other", "rows": [{"p50_ms": 1.0}]}]
    _paper_columns(blocks)
    assert blocks[0]["rows"][0]["paper_ms"] == pytest.approx(123.0) and blocks[0]["rows"][0]["vs_paper"] == 2.0
    assert blocks[1]["rows"][0]["paper_ms"] is None


def test_bench_engine_and_precision_choices(tmp_path: Path, capsys) -> None:
    from regatt_sdk.bench.matrix import variants_for
    from regatt_sdk.errors import RegattError

    assert variants_for("fp32") == [("onnxruntime", "fp32"), ("openvino", "fp32"), ("openvino", "bf16")]
    assert variants_for("int8") == [("onnxruntime", "fp32"), ("openvino", "fp32")]  # the INT8 file as it is
    assert variants_for("fp32", ["openvino"], ["bf16", "int8"]) == [("openvino", "bf16")]
    assert variants_for("int8", ["onnxruntime"], ["int8", "fp32", "bf16"]) == [("onnxruntime", "fp32")]
    with pytest.raises(RegattError):
        variants_for("fp32", ["tensorflow"])
    model = tmp_path / "m.onnx"
    model.write_bytes(b"")
    assert run_main(["bench", str(model), "--precision", "bf16"]) == 2  # --precision without --engine
    assert run_main(["bench", str(model), "--engine", "tensorflow"]) == 2
    assert "error:" in capsys.readouterr().err


def test_gemm_probes_check_their_products_and_report_throughput():
    pytest.importorskip("onnxruntime")
    from regatt_sdk.bench.gemm import ort_gemm, ort_gemm_int8

    f32 = ort_gemm(96, threads=1, runs=2, warmup=1)
    i8 = ort_gemm_int8(96, threads=1, runs=2, warmup=1)  # raises if MatMulInteger computes a wrong product
    assert f32.gflops_per_s > 0 and i8.gflops_per_s > 0
    assert i8.engine.startswith("onnxruntime MatMulInteger") and i8.size == 96


def test_landmark_map_with_query_side_vectors() -> None:
    import numpy as np

    from regatt_sdk.bench.quality import landmark_map

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 16))
    labels = [str(i % 3) for i in range(12)]
    v = centres[[i % 3 for i in range(12)]] + 0.05 * rng.normal(size=(12, 16))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    assert landmark_map(v, labels) == landmark_map(v, labels, v) == 100.0
    # queries described "another way" that point at the wrong landmark rank the positives last
    wrong = v[[(i + 1) % 12 for i in range(12)]]
    assert landmark_map(v, labels, wrong) < 50.0
