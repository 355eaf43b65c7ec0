"""Held-out landmark check of exported models through the SDK (no torch).

Every photo of ``--landmarks`` (one sub-folder per landmark, e.g. ../shared/data/paris6k-subset)
is a query; the photos of its landmark are the positives; the query is removed from its own
ranking. Prints and writes mAP per model and longest side S:

    .venv/bin/regatt export -o /tmp/default.onnx
    .venv/bin/regatt export -o /tmp/rmac.onnx --no-default-assets
    .venv/bin/python benchmarks/landmark_check.py /tmp/default.onnx /tmp/rmac.onnx -S 384 512
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def main(argv: list[str] | None = None) -> int:
    from precision_report import landmark_map, landmark_set
    from regatt_sdk import Encoder

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+", type=Path)
    ap.add_argument("-S", "--sides", nargs="+", type=int, default=[512])
    ap.add_argument("--landmarks", type=Path, default=HERE.parents[1] / "shared" / "data" / "paris6k-subset")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "landmark_check")
    args = ap.parse_args(argv)
    files, labels = landmark_set(args.landmarks)
    rows = []
    for model in args.models:
        for side in args.sides:
            enc = Encoder(model, device="cpu", max_side=side)
            vectors = enc.encode(files, batch_size=1)
            row = {
                "model": model.name,
                "backbone": enc.card.backbone,
                "attention": enc.card.attention,
                "whitening": enc.card.whitening,
                "S": side,
                "map": landmark_map(vectors, labels),
            }
            rows.append(row)
            print(f"{row['model']:<24} S={side:<5} whitening={row['whitening']:<36} mAP {row['map']:.2f}", flush=True)
    result = {"landmarks": str(args.landmarks), "photos": len(files), "groups": len(set(labels)), "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    lines = [
        "# Landmark check of exported models (SDK, onnxruntime CPU)",
        "",
        f"{len(files)} photos, {len(set(labels))} landmarks; every photo a query, removed from its own ranking. "
        "Made by `benchmarks/landmark_check.py`.",
        "",
        "| model | whitening | attention | S | mAP |",
        "| --- | --- | --- | ---: | ---: |",
    ]
    lines += [f"| {r['model']} | {r['whitening']} | {r['attention']} | {r['S']} | {r['map']:.2f} |" for r in rows]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
