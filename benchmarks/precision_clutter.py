"""The fast precisions on the clutter checks (issue 24 left them unmeasured): the default model's
descriptors from onnxruntime fp32 and from a faster variant (default: OpenVINO bf16, what
``precision="auto"`` picks on an AMX CPU) on the ``twostage_check.py`` database and its
realistic clutter queries; global mAP and two-stage mAP (the same stored local features:
only the global candidates and scores change). Nothing is chosen here; test split only.

    python benchmarks/precision_clutter.py /tmp/rg/default.onnx --work /tmp/twostage
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from regatt_sdk.bench.machine import machine_info  # noqa: E402
from regatt_sdk.local.rerank import RerankConfig, Reranker  # noqa: E402
from regatt_sdk.store import FeatureStore  # noqa: E402
from twostage_check import Runner, evaluate, make_checks  # noqa: E402

CHECKS = ("clutter-test", "clutter-test-catalogue", "lm-test")


def main(argv: list[str] | None = None) -> int:
    from regatt_sdk.encoder import Encoder
    from regatt_sdk.pipeline import encode_to_store

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("--work", type=Path, default=Path("/tmp/twostage"))
    ap.add_argument("--engine", default="openvino")
    ap.add_argument("--precision", default="bf16")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "precision_clutter")
    args = ap.parse_args(argv)
    t0 = time.time()
    sets = json.loads((args.work / "sets.json").read_text())
    base = FeatureStore.open(args.work / "db")
    variant_path = args.work / f"db-{args.engine}-{args.precision}"
    enc = Encoder(str(args.model), device="cpu", engine=args.engine, precision=args.precision)
    if not (variant_path / "manifest.json").exists():
        encode_to_store(enc, sets["db"], variant_path, progress=False)
    variant = FeatureStore.open(variant_path)
    if variant.names != base.names:
        raise SystemExit(f"{variant_path}: rows differ from {args.work / 'db'}")
    rr = Reranker(base)
    cfg = RerankConfig()
    qcfg = cfg.query_config(rr.local.config)
    runners = {"onnxruntime fp32": Runner(Encoder(str(args.model), device="cpu"), base, rr),
               f"{args.engine} {args.precision}": Runner(enc, variant, rr)}  # fmt: skip
    res: dict[str, dict[str, dict]] = {}
    for label, runner in runners.items():
        checks = make_checks(sets, runner.names)
        res[label] = {k: evaluate(runner, checks[k], qcfg, cfg) for k in CHECKS}
        print(label, json.dumps({k: (v["map_global"], v["map_twostage"]) for k, v in res[label].items()}), flush=True)
    out = {"machine": machine_info(2), "model": str(args.model), "results": res, "seconds": time.time() - t0}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(out, indent=1))
    ref, var = list(res)
    lines = [
        "# Fast precisions on the clutter checks (mAP, test split)", "",
        f"Made by `benchmarks/precision_clutter.py` on the `twostage_check.py` database ({len(base.names):,} photos "
        f"incl. 1,380 distractors) and its realistic clutter queries. Machine: {out['machine'].get('cpu_model', '')}, "
        "2 cores. Two-stage: as in `twostage.md` (the shipped `RerankConfig`, without QE after verification) over the same stored local "
        "features; only the global descriptors differ.", "",
        f"| check | global, {ref} | global, {var} | delta | two-stage, {ref} | two-stage, {var} | delta |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]  # fmt: skip
    for k in CHECKS:
        a, b = res[ref][k], res[var][k]
        lines.append(f"| {a['check']} | {a['map_global']:.2f} | {b['map_global']:.2f} | {b['map_global'] - a['map_global']:+.2f} "
                     f"| {a['map_twostage']:.2f} | {b['map_twostage']:.2f} | {b['map_twostage'] - a['map_twostage']:+.2f} |")  # fmt: skip
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
