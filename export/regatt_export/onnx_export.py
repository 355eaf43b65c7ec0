"""Export an encoder to one self-contained ONNX file, then prove it matches PyTorch.

The graph's input is the resized image ``(N, H, W, 3)`` BGR (uint8 or float32, any N, H, W);
its output ``descriptor (N, D)``; with ``explain=True`` also ``boxes (R, 4)``, ``valid (R,)``,
``weights (N, R)`` and ``regions (N, R, D)`` (the regional vectors, checked like the descriptor). The model card (with a golden vector) goes into ``metadata_props``.
The traced graph's dynamic TF-SAME ``Pad -> Conv`` pairs become ``Conv(auto_pad=SAME_UPPER)``
(:func:`regatt_export.graph_edits.same_pads_to_auto_pad`) before the check, so the check is of
the edited graph. Nothing is written at the destination unless onnxruntime agrees with PyTorch at
every check size, none of which is the traced size.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from regatt_sdk.card import CARD_KEY, Golden, ModelCard, golden_image
from regatt_sdk.files import staged_file

from .encoder import ExplainEncoder, RegionalAttentionEncoder
from .graph_edits import same_pads_to_auto_pad

TRACE_SIZE = (1, 200, 264)
#: (name, height, width): portrait, landscape, square, 1:4, 4:1, tiny, odd
CHECK_SIZES: tuple[tuple[str, int, int], ...] = (
    ("portrait", 320, 240),
    ("landscape", 240, 320),
    ("square", 256, 256),
    ("1:4", 96, 384),
    ("4:1", 384, 96),
    ("tiny", 16, 16),
    ("odd", 77, 123),
)
GOLDEN_SIZE = (96, 128, 1234)
OPSET = 17


class ParityError(RuntimeError):
    """The exported graph disagrees with PyTorch; nothing was written."""


@dataclass(frozen=True)
class ParityRow:
    name: str
    height: int
    width: int
    batch: int
    max_abs_diff: float
    min_cosine: float
    ok: bool


class _Wrapped(nn.Module):
    def __init__(self, encoder: RegionalAttentionEncoder, explain: bool):
        super().__init__()
        self.inner = ExplainEncoder(encoder) if explain else encoder

    def forward(self, image: torch.Tensor):
        return self.inner(image)


def torch_descriptor(encoder: nn.Module, image: np.ndarray) -> np.ndarray:
    """Run the PyTorch encoder on ``(N, H, W, 3)`` uint8/float32 -> ``(N, D)`` float32."""
    with torch.no_grad():
        out = encoder(torch.from_numpy(np.ascontiguousarray(image)))
    if isinstance(out, tuple):
        out = out[0]
    return out.float().numpy()


def _check_image(batch: int, height: int, width: int, seed: int, dtype: str) -> np.ndarray:
    imgs = np.stack([golden_image(height, width, seed + i) for i in range(batch)])
    return imgs if dtype == "uint8" else imgs.astype(np.float32)


def check_parity(
    encoder: nn.Module,
    onnx_path: str | Path,
    input_dtype: str = "uint8",
    sizes: tuple[tuple[str, int, int], ...] = CHECK_SIZES,
    atol: float = 1e-5,
    providers: list[str] | None = None,
) -> list[ParityRow]:
    """Compare onnxruntime with PyTorch on seeded images at ``sizes`` (and a batch of 2)."""
    from regatt_sdk.engines.ort import create_session, import_ort

    opts = import_ort().SessionOptions()
    opts.log_severity_level = 3  # no optimizer chatter on the console
    sess = create_session(onnx_path, options=opts, providers=providers or ["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    rows = []
    cases = [(n, h, w, 1) for n, h, w in sizes] + [("batch of 2", sizes[0][1], sizes[0][2], 2)]
    for i, (label, h, w, batch) in enumerate(cases):
        image = _check_image(batch, h, w, 100 + i, input_dtype)
        want = torch_descriptor(encoder, image)
        outs = sess.run(None, {name: image})
        got = outs[0]
        if len(outs) == 5 and hasattr(encoder, "explain_regions"):  # the regional vectors too
            with torch.no_grad():
                ref = encoder.explain_regions(torch.from_numpy(np.ascontiguousarray(image)))[4].numpy()
            if ref.shape != outs[4].shape or not np.allclose(ref, outs[4], rtol=0, atol=atol):
                got = np.full_like(got, np.inf)  # counts as a failed check
        diff = float(np.abs(want - got).max()) if np.isfinite(got).all() else float("inf")
        cos = float(np.min(np.sum(want * got, axis=1) / (np.linalg.norm(want, axis=1) * np.linalg.norm(got, axis=1))))
        rows.append(ParityRow(label, h, w, batch, diff, cos, diff <= atol))
    return rows


def make_golden(encoder: nn.Module, input_dtype: str, atol: float) -> Golden:
    h, w, seed = GOLDEN_SIZE
    vec = torch_descriptor(encoder, _check_image(1, h, w, seed, input_dtype))[0]
    return Golden(height=h, width=w, seed=seed, vector=[float(x) for x in vec], atol=atol)


def write_card(onnx_path: str | Path, card: ModelCard) -> None:
    """Store ``card`` as JSON in the model's ``metadata_props`` (in place)."""
    import onnx

    model = onnx.load(str(onnx_path))
    del model.metadata_props[:]
    entry = model.metadata_props.add()
    entry.key, entry.value = CARD_KEY, card.to_json()
    model.producer_name = "regatt"
    onnx.save(model, str(onnx_path))


def edit_graph(onnx_path: str | Path) -> dict[str, int]:
    """Apply the exact graph edits to the traced file at ``onnx_path`` (in place); returns
    ``{"same_pads_as_auto_pad": pairs replaced}`` (the file is rewritten only when it changed)."""
    import onnx

    model = onnx.load(str(onnx_path))
    same = same_pads_to_auto_pad(model)
    if same:
        onnx.save(model, str(onnx_path))
    return {"same_pads_as_auto_pad": same}


def export_onnx(
    encoder: nn.Module,
    card: ModelCard,
    out_path: str | Path,
    *,
    input_dtype: str = "uint8",
    explain: bool = False,
    atol: float = 1e-5,
    sizes: tuple[tuple[str, int, int], ...] = CHECK_SIZES,
) -> tuple[ModelCard, list[ParityRow]]:
    """Export, edit the graph (:func:`edit_graph`, counts in ``card.provenance["graph_edits"]``),
    embed the card, check parity; write ``out_path`` only if every check passes.

    ``encoder`` is a :class:`RegionalAttentionEncoder` or a multi-scale one
    (:class:`regatt_export.scales.MultiScaleEncoder`, which resizes inside the graph).

    Raises :class:`ParityError` (with the table) when onnxruntime and PyTorch disagree.
    """
    if input_dtype not in ("uint8", "float32"):
        raise ValueError(f"input dtype must be uint8 or float32, got {input_dtype!r}")
    if explain and not isinstance(encoder, RegionalAttentionEncoder):
        raise ValueError("--explain shows one scale's regions: export the explain model with --scales 1")
    encoder = encoder.eval()
    wrapped = _Wrapped(encoder, explain).eval()
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    n, h, w = TRACE_SIZE
    example = torch.from_numpy(_check_image(n, h, w, 7, input_dtype))
    outputs = ["descriptor", "boxes", "valid", "weights", "regions"] if explain else ["descriptor"]
    dynamic = {"image": {0: "batch", 1: "height", 2: "width"}, "descriptor": {0: "batch"}}
    if explain:
        dynamic["weights"] = {0: "batch", 1: "regions"}
        dynamic["regions"] = {0: "batch", 1: "regions"}
        dynamic["boxes"] = {0: "regions"}
        dynamic["valid"] = {0: "regions"}
    with staged_file(out_path, ".onnx.tmp") as tmp:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                wrapped,
                (example,),
                tmp,
                dynamo=False,
                input_names=["image"],
                output_names=outputs,
                dynamic_axes=dynamic,
                opset_version=OPSET,
                do_constant_folding=True,
            )
        wrapped.eval()
        provenance = {**card.provenance, "graph_edits": edit_graph(tmp)}
        card = replace(
            card,
            input_dtype=input_dtype,
            outputs=tuple(outputs),
            golden=make_golden(encoder, input_dtype, atol),
            provenance=provenance,
        )
        write_card(tmp, card)
        rows = check_parity(encoder, tmp, input_dtype, sizes, atol)
        if not all(r.ok for r in rows):
            raise ParityError("onnxruntime disagrees with PyTorch:\n" + format_parity(rows))
        os.chmod(tmp, 0o644)
        os.replace(tmp, out_path)
    return card, rows


def format_parity(rows: list[ParityRow]) -> str:
    lines = [f"{'case':<12} {'size':>10} {'batch':>5} {'max|diff|':>10} {'cosine':>10}  ok"]
    for r in rows:
        lines.append(
            f"{r.name:<12} {f'{r.height}x{r.width}':>10} {r.batch:>5} {r.max_abs_diff:>10.2e} {r.min_cosine:>10.7f}  {'yes' if r.ok else 'NO'}"
        )
    return "\n".join(lines)
