"""Which global stage for the two-stage system: recall of the global top 100 and the final mAP
after re-ranking, per global model, on the checks of ``twostage_check.py`` (same photos, same
local features, the second-stage settings chosen there). Choose on val, report test.

    python benchmarks/twostage_global.py default=/tmp/rg/default.onnx none=/tmp/rg/noatt.onnx

Needs ``twostage_check.py`` to have run (its work folder and ``results/twostage.json``).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from regatt_sdk.bench.machine import machine_info  # noqa: E402
from regatt_sdk.local.extract import LocalConfig  # noqa: E402
from regatt_sdk.local.rerank import RerankConfig, Reranker  # noqa: E402
from regatt_sdk.store import FeatureStore  # noqa: E402
from twostage_check import Runner, evaluate, make_checks  # noqa: E402

CHECKS = (
    "lm-val",
    "clutter-val",
    "clutter-val-catalogue",
    "lm-test",
    "paris",
    "clutter-test",
    "clutter-test-catalogue",
)


def main(argv: list[str] | None = None) -> int:
    from regatt_sdk.encoder import Encoder
    from regatt_sdk.pipeline import encode_to_store

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+", help="NAME=MODEL.onnx")
    ap.add_argument("--work", type=Path, default=Path("/tmp/twostage"))
    ap.add_argument("--chosen", type=Path, default=HERE / "results" / "twostage.json")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "twostage_global")
    args = ap.parse_args(argv)
    chosen = json.loads(args.chosen.read_text())["chosen"]
    qcfg = LocalConfig(chosen["query_side"], chosen["query_keypoints"])
    cfg = replace(
        RerankConfig(), threshold=chosen["threshold"], min_inliers=chosen["min_inliers"], weight=chosen["weight"]
    )
    sets = json.loads((args.work / "sets.json").read_text())
    local_store = FeatureStore.open(args.work / "db")
    reranker = Reranker(local_store)
    rows = []
    for spec in args.models:
        name, model = spec.split("=", 1)
        store_path = args.work / f"db-{name}"
        enc = Encoder(model, device="cpu")
        if str(enc.card.hash) == local_store.card_hash:
            store_path = args.work / "db"  # the model of twostage_check.py: its store as it is
        elif not (store_path / "manifest.json").exists():
            encode_to_store(enc, sets["db"], store_path, progress=False)
        store = FeatureStore.open(store_path)
        if store.names != local_store.names:
            raise SystemExit(f"{store_path}: rows differ from {args.work / 'db'}")
        runner = Runner(enc, local_store, reranker)
        runner.vectors = np.asarray(store.vectors)  # this model's global stage, the same local features
        checks = make_checks(sets, store.names)
        for key in CHECKS:
            r = evaluate(runner, checks[key], qcfg, cfg)
            r.update(model=name)
            rows.append(r)
            print(json.dumps(r), flush=True)
    res = {"machine": machine_info(2), "chosen": chosen, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(res, indent=1))
    lines = [
        "# The global stage under the second one (held out)",
        "",
        "Made by `benchmarks/twostage_global.py` on the checks of `twostage_check.py` (same photos, same local",
        "features, second-stage settings chosen there on val). Positives in the global top 100 (recall) and mAP",
        "before and after re-ranking; a global model is chosen on the val rows.",
        "",
        "| check | global model | positives in global top 100 | mAP global | mAP two-stage | top-1 two-stage |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    order = list(dict.fromkeys(r["check"] for r in rows))
    for check in order:
        for r in rows:
            if r["check"] == check:
                lines.append(
                    f"| {r['check']} | {r['model']} | {r['recall_global@100']:.1f} | {r['map_global']:.2f} | "
                    f"{r['map_twostage']:.2f} | {r['top1_twostage']:.1f} |"
                )
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
