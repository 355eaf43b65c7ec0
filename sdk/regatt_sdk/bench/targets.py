"""The benchmark's targets, checked on the measured rows (never in tests).

- head share on CPU: (full - backbone) / backbone <= 5 % (onnxruntime CPU, every variant);
- onnxruntime CPU fp32 full encoder >= 85 % of the measured fp32 peak (best GEMM probe);
- onnxruntime CPU >= 1.3x faster than eager PyTorch in the same run.
"""

from __future__ import annotations

#: (key, description, row field, comparison, threshold)
TARGETS: tuple[tuple[str, str, str, str, float], ...] = (
    ("head_share", "head <= 5% of the backbone (onnxruntime CPU)", "head_share", "<=", 0.05),
    ("gemm_pct", "onnxruntime CPU full encoder >= 85% of the measured fp32 peak", "gemm_pct", ">=", 85.0),
    ("speedup", "onnxruntime CPU >= 1.3x faster than eager PyTorch", "speedup_vs_eager", ">=", 1.3),
)


def evaluate_targets(rows: list[dict[str, object]]) -> list[dict[str, object]]:
    """One entry per target: the per-variant values on the ``ort-cpu`` rows and whether all meet it."""
    out = []
    for key, text, fld, op, threshold in TARGETS:
        values = {
            str(r["variant"]): r.get(fld)
            for r in rows
            if r["engine"] == "ort-cpu" and r.get("precision", "fp32") == "fp32" and r.get(fld) is not None
        }
        if not values:
            out.append({"target": key, "description": text, "threshold": threshold, "values": {}, "met": None})
            continue
        ok = [(v <= threshold) if op == "<=" else (v >= threshold) for v in values.values()]
        out.append({"target": key, "description": text, "threshold": threshold, "values": values, "met": all(ok)})
    return out
