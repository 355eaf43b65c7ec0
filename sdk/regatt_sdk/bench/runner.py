"""Orchestration of one ``regatt bench`` run: models, engines, fp32 peak, profile, rows.

With no model file the paper's configuration is built (torch needed, or a complete cache):
each variant with random weights, exported to ONNX, plus the backbone-only graph. With a model
file only onnxruntime runs (no torch), and the backbone's share comes from profiling.
``engine_matrix`` adds engines x precisions side by side per model (:mod:`.matrix`, the code
``benchmarks/engine_bench.py`` runs). Every % column is a share of the machine's truthful fp32
peak (:func:`.peak.machine_peak`: the best of onnxruntime, OpenVINO and NumPy GEMMs at the start
and the end of the run, and the theoretical FMA peak).
"""

from __future__ import annotations

import gc
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..card import read_card
from ..engines.ort import cpu_count
from ..errors import MissingExtraError, RegattError
from . import engines as eng
from . import matrix
from .machine import load_average, machine_info
from .paper import PAPER_HARDWARE, PAPER_ROWS, PAPER_TIMES_S
from .peak import machine_peak, precision_peaks, share
from .profile import Profile, profile_model
from .targets import evaluate_targets

VARIANTS: tuple[str, ...] = ("none", "regional", "context")
PAPER_BACKBONE = "resnet101-caffe"
Tick = Callable[[str], None]


@dataclass
class BenchConfig:
    """Everything a run needs; the CLI fills it from its options."""

    model: Path | None = None
    compare: tuple[Path, ...] = ()  # more exported models timed in the same run (e.g. int8)
    quality: Path | None = None  # landmark folder (one sub-folder per landmark) for an mAP column
    backbone: str = PAPER_BACKBONE
    height: int = 768
    width: int = 1024
    variants: tuple[str, ...] = VARIANTS
    engines: tuple[str, ...] | None = None  # None: every engine available
    runs: int = 5
    warmup: int = 1
    threads: int | None = None
    levels: int = 5
    seed: int = 0
    cache: Path | None = None
    images: Path | None = None
    max_images: int = 20
    gemm_size: int = 2048
    gemm_runs: int = 8
    profile_runs: int = 2
    #: engines timed side by side per model (``regatt bench --engine``): onnxruntime, openvino
    engine_matrix: tuple[str, ...] = ()
    #: their precisions (``--precision``); None: each engine's own (see :func:`.matrix.variants_for`)
    matrix_precisions: tuple[str, ...] | None = None
    #: time each engine/precision in fresh processes, interleaved (False: all in this process)
    matrix_separate: bool = True


@dataclass
class Models:
    """The ONNX files to time, and (when torch built them) the modules for eager timing."""

    paths: dict[str, Path]
    backbone_path: Path | None
    modules: dict[str, object] = field(default_factory=dict)
    export_s: dict[str, float | None] = field(default_factory=dict)
    backbone_name: str = ""
    weights: str = "random"
    bench_models: object | None = None
    precision: dict[str, str] = field(default_factory=dict)
    parity: dict[str, float | None] = field(default_factory=dict)


def resolve_engines(cfg: BenchConfig, torch_ok: bool, notes: list[str]) -> list[str]:
    """The engines to run, in report order; explains every one skipped in ``notes``."""
    ort_ok = eng.available_ort_engines()
    wanted = list(cfg.engines) if cfg.engines else [eng.EAGER, *ort_ok]
    unknown = [e for e in wanted if e not in eng.ENGINES]
    if unknown:
        raise RegattError(f"unknown engine(s) {unknown}: choose from {', '.join(eng.ENGINES)}")
    chosen = []
    for name in eng.ENGINES:
        if name not in wanted:
            continue
        if name == eng.EAGER and not torch_ok:
            notes.append(
                "eager PyTorch skipped: "
                + ("a given ONNX file has no PyTorch module to run" if cfg.model else "torch is not installed")
            )
            continue
        if name != eng.EAGER and name not in ort_ok:
            notes.append(f"{name} skipped: onnxruntime here has no {eng.ORT_PROVIDERS[name]}")
            continue
        chosen.append(name)
    if not chosen:
        raise RegattError("no engine left to run (see the notes above)")
    return chosen


def _torch_side():
    """The PyTorch model builder registered by the export package (``regatt.providers``
    entry point ``bench_models``), or None without it or without torch."""
    from ..plugins import provider

    return provider("bench_models")


def load_models(cfg: BenchConfig, workdir: Path, tick: Tick, notes: list[str]) -> Models:
    """The given model, or the variants built (or found in the cache) for the configuration."""
    if cfg.model is not None:
        models = Models({}, None)
        for path in (cfg.model, *cfg.compare):
            card = read_card(path)
            key = card.attention if not cfg.compare else f"{card.attention}+{card.precision}"
            if key in models.paths:
                key = f"{key}+{path.stem}"
            models.paths[key] = path
            models.precision[key] = card.precision
            parity = card.provenance.get("parity") if isinstance(card.provenance, dict) else None
            models.parity[key] = parity.get("min_cosine") if isinstance(parity, dict) else None
            models.backbone_name, models.weights = card.backbone, card.preset
            notes.append(
                f"model {path}: {card.backbone}, {card.attention} attention, {card.precision}, weights {card.preset}"
            )
        return models
    bm = _torch_side()
    names = _cache_names(cfg)
    if bm is None:
        paths = {v: workdir / n for v, n in names["variants"].items()}
        trunk = workdir / names["trunk"]
        if all(p.is_file() for p in paths.values()) and trunk.is_file():
            notes.append("torch not installed: timing cached ONNX files only (no eager PyTorch)")
            return Models(paths, trunk, backbone_name=cfg.backbone)
        raise MissingExtraError("torch", "export", "building the benchmark models (or pass MODEL.onnx)")
    models = Models({}, None, backbone_name=cfg.backbone, bench_models=bm)
    for variant in cfg.variants:
        tick(f"{variant}: build + export")
        prepared = bm.prepare_variant(cfg.backbone, variant, cfg.levels, cfg.seed, workdir)
        models.paths[variant] = prepared.onnx_path
        models.modules[variant] = prepared.encoder
        models.export_s[variant] = prepared.export_s
    first = models.modules[cfg.variants[0]]
    trunk = workdir / bm.backbone_name(cfg.backbone, cfg.seed)
    tick("backbone-only graph")
    models.export_s["backbone"] = bm.export_backbone(first, trunk)
    models.backbone_path = trunk
    return models


def _cache_names(cfg: BenchConfig) -> dict[str, object]:
    """Cache file names, duplicated from ``bench_models`` so a torch-free run can find them."""
    return {
        "variants": {v: f"{cfg.backbone}-{v}-L{cfg.levels}-seed{cfg.seed}.onnx" for v in cfg.variants},
        "trunk": f"{cfg.backbone}-trunk-seed{cfg.seed}.onnx",
    }


def _timing_row(
    engine: str, variant: str, m: eng.Measurement, threads: int, precision: str = "fp32"
) -> dict[str, object]:
    row: dict[str, object] = {
        "engine": engine,
        "variant": variant,
        "precision": precision,
        "providers": m.providers,
        "threads": threads,
        "runs": m.full.n,
        **{k: v for k, v in m.full.to_dict().items() if k != "n"},
        "first_call_ms": m.first_call_ms,
        "session_s": m.setup_s,
        "rss_before_mb": m.rss_before_mb,
        "peak_rss_mb": m.peak_rss_mb,
        "rss_growth_mb": (m.peak_rss_mb - m.rss_before_mb) if m.peak_rss_mb and m.rss_before_mb else None,
        "peak_rss_scope": "this phase" if m.peak_reset else "whole process",
        "backbone_first_call_ms": m.backbone_first_call_ms,
        "backbone_p50_ms": m.backbone.p50_ms if m.backbone else None,
        "backbone_p90_ms": m.backbone.p90_ms if m.backbone else None,
        "backbone_method": "backbone-only graph, paired runs" if m.backbone else None,
        "head_ms": m.head_ms,
    }
    return row


def _apply_profile(row: dict[str, object], prof: Profile | None) -> None:
    """Backbone time from the profile when no backbone graph was timed; profiled head share."""
    if prof is None:
        return
    row["head_share_profile"] = prof.head_share
    if row["backbone_p50_ms"] is None and row["engine"] == "ort-cpu" and prof.total_us:
        frac = prof.backbone_us / prof.total_us
        row["backbone_p50_ms"] = float(row["p50_ms"]) * frac
        row["head_ms"] = float(row["p50_ms"]) - float(row["backbone_p50_ms"])
        row["backbone_method"] = "onnxruntime profile (kernel-time fraction of p50)"


def finish_rows(
    rows: list[dict[str, object]],
    macs: dict[str, float],
    gemm: float,
    paper_config: bool,
    theoretical: float | None = None,
    notes: list[str] | None = None,
) -> None:
    """Derived columns: head share, GFLOP/s, % of the measured (``gemm``) and theoretical fp32
    peak, speed-up vs eager, the paper. A share over 100 % is noted as a probe bug."""
    eager = {r["variant"]: r["p50_ms"] for r in rows if r["engine"] == eng.EAGER}
    for r in rows:
        v = str(r["variant"])
        bb, head = r.get("backbone_p50_ms"), r.get("head_ms")
        r["head_share"] = head / bb if bb and head is not None else None
        # MACs and the GEMM peak are fp32 figures: not meaningful for a quantized graph
        total = macs.get(v) if r.get("precision", "fp32") == "fp32" else None
        r["gmacs"] = total / 1e9 if total else None
        r["gflops_per_s"] = 2.0 * total / (float(r["p50_ms"]) * 1e6) if total else None
        cpu = r["engine"] in (eng.EAGER, "ort-cpu")
        r["gemm_pct"], bad = share(r["gflops_per_s"] if cpu else None, gemm)
        r["theoretical_pct"], bad2 = share(r["gflops_per_s"] if cpu else None, theoretical)
        if notes is not None:
            notes += [f"{r['variant']} {r['engine']}: {b}" for b in (bad, bad2) if b]
        r["speedup_vs_eager"] = eager[v] / float(r["p50_ms"]) if v in eager and r["engine"] != eng.EAGER else None
        r["paper_s"] = PAPER_TIMES_S.get(v.split("+")[0])  # given files: "context+int8"
        r["paper_comparable"] = paper_config
        r["vs_paper"] = (float(r["p50_ms"]) / 1000.0) / r["paper_s"] if r["paper_s"] else None


def run_bench(cfg: BenchConfig, tick: Tick, total: Callable[[int], None] | None = None) -> dict[str, object]:
    """Run everything ``cfg`` asks for; returns the JSON-ready report."""
    threads = cfg.threads or cpu_count()
    notes: list[str] = []
    machine = machine_info(threads)
    torch_side = None if cfg.model else _torch_side()
    engines = resolve_engines(cfg, torch_side is not None, notes)
    if total is not None:
        per = len(engines) * (1 + cfg.warmup + cfg.runs) + 2
        side = 3 * len(matrix.ENGINES) + cfg.runs if cfg.engine_matrix else 0
        total(len(cfg.variants) * (per + 1 + side) + 3 + (0 if cfg.model else 1))
    tick("fp32 peak probes")
    peak_first = machine_peak(threads, sizes=(cfg.gemm_size,), runs=cfg.gemm_runs)
    tick("bf16 and int8 peak probes")
    peaks = precision_peaks(threads, peak_first, sizes=(cfg.gemm_size,), runs=cfg.gemm_runs)
    with tempfile.TemporaryDirectory(prefix="regatt-bench-") as tmp:
        workdir = Path(cfg.cache) if cfg.cache else Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        models = load_models(cfg, workdir, tick, notes)
        if eng.EAGER in engines and not models.modules:
            engines.remove(eng.EAGER)
        image = np.random.default_rng(cfg.seed).integers(0, 256, (1, cfg.height, cfg.width, 3), dtype=np.uint8)
        rows, profiles, macs, macs_torch = [], {}, {}, {}
        for variant, path in models.paths.items():
            for engine in engines:
                rows.append(_run_engine(engine, variant, path, models, image, cfg, threads, tick))
                gc.collect()
            prof_engine = "ort-cpu" if "ort-cpu" in engines else next((e for e in engines if e != eng.EAGER), None)
            if prof_engine is not None:
                tick(f"{variant}: profile")
                providers = list(dict.fromkeys([eng.ORT_PROVIDERS[prof_engine], "CPUExecutionProvider"]))
                prof = profile_model(path, image, threads, cfg.profile_runs, providers)
                profiles[variant] = prof
                macs[variant] = prof.macs
                for r in rows:
                    if r["variant"] == variant and r["engine"] == prof_engine:
                        _apply_profile(r, prof)
            if variant in models.modules:
                tick(f"{variant}: count MACs (torch)")
                macs_torch[variant] = models.bench_models.count_macs(models.modules[variant], image)
                macs.setdefault(variant, macs_torch[variant]["total"])
        images = _run_images(cfg, models, engines, threads, tick) if cfg.images else None
        if cfg.quality is not None:
            _add_quality(cfg, models, rows, tick)
        side_by_side = _run_matrix(cfg, models, macs, threads, tick) if cfg.engine_matrix else []
    tick("fp32 peak probes (again)")
    peak_last = machine_peak(threads, sizes=(cfg.gemm_size,), runs=cfg.gemm_runs, clock=False)
    gemm = max(peak_first.measured_gflops, peak_last.measured_gflops)
    theoretical = peak_first.theoretical_gflops
    best = peak_first if peak_first.measured_gflops >= peak_last.measured_gflops else peak_last
    notes += list(peak_first.notes) + list(peak_last.notes)
    paper_config = models.backbone_name == PAPER_BACKBONE and max(cfg.height, cfg.width) == 1024
    finish_rows(rows, macs, gemm, paper_config, theoretical, notes)
    peaks["fp32"].update(measured_gops=gemm, measured_by=best.measured_by)  # start and end, as the % columns
    notes += matrix.apply_peak(side_by_side, gemm, theoretical, peaks)
    for p in peaks.values():
        notes += list(p["notes"])
    if paper_config:
        _paper_columns(side_by_side)
    machine["load_average_end"] = load_average()
    if models.bench_models is not None:
        machine["torch"] = models.bench_models.torch_version()
    if models.weights == "random":
        notes.append(
            "weights are random (timing only): the descriptors are meaningless, every layer has the real model's shape"
        )
    if not paper_config:
        notes.append("not the paper's configuration (ResNet-101 Caffe at S=1024): paper times are for reference only")
    return {
        "machine": machine,
        "config": {
            **{k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
            "threads": threads,
            "engines_run": engines,
            "max_side": max(cfg.height, cfg.width),
            "backbone": models.backbone_name,
            "weights": models.weights,
            "models": {k: str(v) for k, v in models.paths.items()},
            "backbone_model": str(models.backbone_path) if models.backbone_path else None,
            "export_s": models.export_s,
            "input": f"{cfg.height}x{cfg.width} (HxW), batch 1, uint8 BGR",
        },
        "results": rows,
        "engines": side_by_side,
        "gemm_gflops_per_s": gemm,
        "peak": {
            "measured_gflops": gemm,
            "measured_by": best.measured_by,
            "theoretical_gflops": theoretical,
            "start": peak_first.to_dict(),
            "end": peak_last.to_dict(),
            "used": "best of onnxruntime MatMul, OpenVINO MatMul and NumPy BLAS, start and end of the run",
        },
        "peaks": peaks,
        "macs": {"profile": {v: p.macs for v, p in profiles.items()}, "torch": macs_torch},
        "profiles": {v: p.to_dict() for v, p in profiles.items()},
        "paper": {"times_s": PAPER_TIMES_S, "rows": PAPER_ROWS, "hardware": PAPER_HARDWARE, "comparable": paper_config},
        "images": images,
        "targets": evaluate_targets(rows),
        "notes": notes,
    }


def _run_engine(
    engine: str, variant: str, path: Path, models: Models, image: np.ndarray, cfg: BenchConfig, threads: int, tick: Tick
) -> dict[str, object]:
    label = f"{variant} / {engine}"
    step: Tick = lambda what: tick(f"{label}: {what}")  # noqa: E731
    if engine == eng.EAGER:
        runner = models.bench_models.EagerEngine(models.modules[variant], threads)
        opened = eng.Opened(runner.full, None, None, ["torch CPU"])
        m = eng.measure(lambda: opened, runner.backbone, image, cfg.warmup, cfg.runs, step)
    else:
        backbone = eng.open_ort_backbone(engine, models.backbone_path, threads)
        m = eng.measure(lambda: eng.open_ort(engine, path, threads), backbone, image, cfg.warmup, cfg.runs, step)
    return _timing_row(engine, variant, m, threads, models.precision.get(variant, "fp32"))


def _run_matrix(
    cfg: BenchConfig, models: Models, macs: dict[str, float], threads: int, tick: Tick
) -> list[dict[str, object]]:
    """Engines x precisions per model, each model's variants interleaved (:func:`.matrix.bench_model`)."""
    blocks = []
    for key, path in models.paths.items():
        variants = matrix.variants_for(read_card(path).precision, cfg.engine_matrix, cfg.matrix_precisions)
        blocks.append(
            matrix.bench_model(
                path, cfg.height, cfg.width, cfg.runs, threads, variants, key, macs=macs.get(key), tick=tick,
                separate=cfg.matrix_separate,
            )
        )  # fmt: skip
        gc.collect()
    return blocks


def _paper_columns(blocks: list[dict[str, object]]) -> None:
    """The paper's GPU time beside each engine x precision row of its configuration."""
    for block in blocks:
        paper_s = PAPER_TIMES_S.get(str(block.get("attention")))
        for r in block["rows"]:
            r["paper_ms"] = 1000.0 * paper_s if paper_s else None
            r["vs_paper"] = r["p50_ms"] / r["paper_ms"] if paper_s else None


def _add_quality(cfg: BenchConfig, models: Models, rows: list[dict[str, object]], tick: Tick) -> None:
    """mAP of every model on the landmark check (each photo a query, its landmark the positives,
    itself removed), and the parity cosine to fp32 recorded in the model's card."""
    from ..compose import EncoderOptions, open_encoder
    from .quality import landmark_map, landmark_set

    files, labels = landmark_set(Path(cfg.quality))
    for key, path in models.paths.items():
        tick(f"{key}: landmark mAP on {len(files)} photos")
        enc = open_encoder(path, EncoderOptions(device="cpu", max_side=max(cfg.height, cfg.width), threads=cfg.threads))
        score = landmark_map(enc.encode(files, batch_size=1), labels)
        for r in rows:
            if r["variant"] == key:
                r["map"] = score
                r["parity_min_cosine"] = models.parity.get(key)


def _run_images(
    cfg: BenchConfig, models: Models, engines: list[str], threads: int, tick: Tick
) -> list[dict[str, object]]:
    from .images import bench_images, image_files

    files = image_files(Path(cfg.images), cfg.max_images)
    out = []
    for variant, path in models.paths.items():
        for engine in engines:
            if engine == eng.EAGER:
                continue
            res = bench_images(
                path,
                eng.ORT_DEVICES[engine],
                files,
                max(cfg.height, cfg.width),
                threads,
                lambda w: tick(f"{variant} / {engine}: {w}"),
            )
            out.append({"engine": engine, "variant": variant, **res})
    return out
