"""onnxruntime profiling: per-node times and shapes -> multiply-adds, the backbone/head split,
and what dominates the head.

A node belongs to the *backbone* if its name carries the backbone module's path
(``/backbone/``; the exporter names nodes after modules) or it is one of onnxruntime's NCHWc
reorder nodes; every node executed before the last backbone node counts with the backbone
(input cast, mean subtraction, layout), every node after it is the *head* (regional pooling,
whitening, normalisation, attention, aggregation).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..engines.ort import create_session, import_ort, session_options

_SUFFIX = "_kernel_time"
_REORDER_OPS = ("ReorderInput", "ReorderOutput")
#: ops whose multiply-adds are counted (elementwise work is not)
MAC_OPS = ("Conv", "FusedConv", "NchwcConv", "QLinearConv", "MatMul", "FusedMatMul", "Gemm", "ConvTranspose")


@dataclass
class NodeStat:
    """One graph node over the profiled runs: median time (us), op, shapes, MACs, part."""

    name: str
    op: str
    median_us: float
    inputs: list[list[int]]
    outputs: list[list[int]]
    macs: float
    part: str = "head"


@dataclass
class Profile:
    """The nodes of one model at one input size, and their backbone/head totals."""

    nodes: list[NodeStat]
    runs: int
    backbone_us: float = 0.0
    head_us: float = 0.0
    backbone_macs: float = 0.0
    head_macs: float = 0.0
    by_op_head: dict[str, float] = field(default_factory=dict)

    @property
    def total_us(self) -> float:
        return self.backbone_us + self.head_us

    @property
    def macs(self) -> float:
        return self.backbone_macs + self.head_macs

    @property
    def head_share(self) -> float:
        """Head time as a fraction of the backbone's (profiled kernel time)."""
        return self.head_us / self.backbone_us if self.backbone_us else float("nan")

    def top_head(self, k: int = 8) -> list[NodeStat]:
        return sorted((n for n in self.nodes if n.part == "head"), key=lambda n: -n.median_us)[:k]

    def to_dict(self, top: int = 10) -> dict[str, object]:
        return {
            "runs": self.runs,
            "backbone_ms": self.backbone_us / 1000.0,
            "head_ms": self.head_us / 1000.0,
            "head_share_of_backbone": self.head_share,
            "backbone_gmacs": self.backbone_macs / 1e9,
            "head_gmacs": self.head_macs / 1e9,
            "head_ms_by_op": {k: v / 1000.0 for k, v in sorted(self.by_op_head.items(), key=lambda kv: -kv[1])},
            "head_top_nodes": [
                {"name": n.name, "op": n.op, "ms": n.median_us / 1000.0, "inputs": n.inputs, "outputs": n.outputs}
                for n in self.top_head(top)
            ],
        }


def _shapes(entries: list[dict] | None) -> list[list[int]]:
    return [list(next(iter(e.values()))) for e in entries or [] if e]


def node_macs(op: str, inputs: list[list[int]], outputs: list[list[int]]) -> float:
    """Multiply-adds of a Conv/MatMul/Gemm node from its profiled shapes (0 for other ops).

    Conv: output elements x (input channels per group x kernel area), read off the weight
    shape ``(Co, Ci/g, kh, kw)``. MatMul/Gemm: output elements x the reduced dimension.
    """
    if op not in MAC_OPS or not outputs or not inputs:
        return 0.0
    out = float(np.prod(outputs[0])) if outputs[0] else 0.0
    if "Conv" in op:
        if len(inputs) < 2 or len(inputs[1]) < 3:
            return 0.0
        return out * float(np.prod(inputs[1][1:]))
    a = inputs[0]
    if not a:
        return 0.0
    return out * float(a[-1])


def parse_profile(events: list[dict]) -> Profile:
    """Per-node medians over the ``model_run`` events of a profile JSON."""
    runs = sorted(
        (e["ts"], e["ts"] + e["dur"]) for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"
    )
    per_node: dict[str, list[float]] = defaultdict(list)
    meta: dict[str, tuple[str, list[list[int]], list[list[int]]]] = {}
    order: list[str] = []
    for e in sorted(
        (e for e in events if e.get("cat") == "Node" and e.get("name", "").endswith(_SUFFIX)), key=lambda e: e["ts"]
    ):
        if runs and not any(a <= e["ts"] <= b for a, b in runs):
            continue
        name = e["name"][: -len(_SUFFIX)]
        args = e.get("args", {})
        if name not in meta:
            order.append(name)
            meta[name] = (
                args.get("op_name", "?"),
                _shapes(args.get("input_type_shape")),
                _shapes(args.get("output_type_shape")),
            )
        per_node[name].append(float(e["dur"]))
    nodes = []
    for name in order:
        op, ins, outs = meta[name]
        nodes.append(NodeStat(name, op, float(np.median(per_node[name])), ins, outs, node_macs(op, ins, outs)))
    return split_parts(nodes, max(len(runs), 1))


def _is_backbone(node: NodeStat) -> bool:
    return "/backbone/" in node.name or node.op in _REORDER_OPS


def split_parts(nodes: list[NodeStat], runs: int) -> Profile:
    """Label nodes backbone/head (see the module docstring) and total them."""
    last = max((i for i, n in enumerate(nodes) if _is_backbone(n)), default=-1)
    prof = Profile(nodes, runs)
    by_op: dict[str, float] = defaultdict(float)
    for i, n in enumerate(nodes):
        n.part = "backbone" if i <= last else "head"
        if n.part == "backbone":
            prof.backbone_us += n.median_us
            prof.backbone_macs += n.macs
        else:
            prof.head_us += n.median_us
            prof.head_macs += n.macs
            by_op[n.op] += n.median_us
    prof.by_op_head = dict(by_op)
    return prof


def profile_model(
    model_path: str | Path, image: np.ndarray, threads: int, runs: int = 2, providers: list | None = None
) -> Profile:
    """Profile ``runs`` calls (after one unprofiled-equivalent warm-up call) on ``image``."""
    ort = import_ort()
    with tempfile.TemporaryDirectory(prefix="regatt-prof-") as tmp:
        opts = session_options(ort, threads)
        opts.enable_profiling = True
        opts.profile_file_prefix = os.path.join(tmp, "prof")
        sess = create_session(model_path, "cpu", options=opts, providers=providers or ["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        feed = {name: image.astype(_input_dtype(sess), copy=False)}
        sess.run(None, feed)
        for _ in range(runs):
            sess.run(None, feed)
        path = sess.end_profiling()
        events = json.loads(Path(path).read_text())
    events = _drop_first_run(events)
    return parse_profile(events)


def _drop_first_run(events: list[dict]) -> list[dict]:
    """Remove the first ``model_run`` (first-call costs) and its nodes from a profile."""
    runs = sorted(
        (e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"), key=lambda e: e["ts"]
    )
    if len(runs) < 2:
        return events
    first = runs[0]
    end = first["ts"] + first["dur"]
    return [e for e in events if not (e is first or (e.get("cat") == "Node" and first["ts"] <= e["ts"] <= end))]


def _input_dtype(sess) -> type:
    kind = sess.get_inputs()[0].type
    return np.uint8 if "uint8" in kind else np.float32
