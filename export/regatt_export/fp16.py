"""fp16 backbone for GPUs: convolutions (and the activations, residual adds, padding and pooling
between them) in half precision, everything else in fp32.

The graph's input and output stay as they are; one ``Cast`` to fp16 enters the backbone's float
data path and ``Cast`` back to fp32 leaves it, so the normalisation of the input, region pooling,
whitening, attention (tanh, softplus), every reduction and the L2 normalisations run in fp32.
Written with ``onnx`` alone (no onnxconverter-common). Nothing is written unless the descriptors
agree with the fp32 graph's (cosine >= ``min_cosine``) where the graph can be run.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import numpy as np

from regatt_sdk.card import ModelCard, read_card
from regatt_sdk.files import staged_file

from .calibration import ImageSet, parity_set
from .graph_edits import (
    _float_tensors,
    backbone_nodes,
    drop_unused_initializers,
    inline_constant_identities,
    same_pads_to_auto_pad,
)
from .parity import VariantParity, finish_variant, measure_parity

#: worst-image cosine to fp32 accepted by default: fp16 (10-bit mantissa) keeps descriptors at
#: 0.9999+ on real photos; 0.999 leaves room for fp16 accumulation on GPUs and catches overflow.
DEFAULT_MIN_COSINE_FP16 = 0.999
FP16_GOLDEN_ATOL = 2e-3
SUFFIX = "/fp16"


def convert_backbone_fp16(model) -> int:
    """Rewrite ``model`` in place so that its backbone runs in fp16. Returns the nodes converted."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    inline_constant_identities(model)
    g = model.graph
    region = backbone_nodes(model)
    region_ids = {id(n) for n in region}
    floats = _float_tensors(model)
    inits = {t.name: t for t in g.initializer}
    constants = {
        n.output[0]: next(a.t for a in n.attribute if a.name == "value")
        for n in g.node
        if n.op_type == "Constant" and any(a.name == "value" for a in n.attribute)
    }
    produced_in_region = {t for n in region for t in n.output if t in floats}
    graph_outputs = {o.name for o in g.output}
    outside_uses = {t for n in g.node if id(n) not in region_ids for t in n.input} | graph_outputs

    new_inits: dict[str, str] = {}
    casts_in: dict[str, str] = {}
    new_nodes = []

    def half_input(name: str) -> str:
        if name in produced_in_region:
            return name + SUFFIX
        if name in inits or name in constants:
            if name not in new_inits:
                src = inits[name] if name in inits else constants[name]
                arr = numpy_helper.to_array(src).astype(np.float16)
                g.initializer.append(numpy_helper.from_array(arr, name + SUFFIX))
                new_inits[name] = name + SUFFIX
            return new_inits[name]
        if name not in casts_in:
            casts_in[name] = name + "/to_fp16"
            new_nodes.append(
                helper.make_node("Cast", [name], [casts_in[name]], name=name + "/Cast_to_fp16", to=TensorProto.FLOAT16)
            )
        return casts_in[name]

    for node in list(g.node):
        if id(node) not in region_ids:
            new_nodes.append(node)
            continue
        for i, name in enumerate(node.input):
            if name and name in floats:
                node.input[i] = half_input(name)
        new_nodes.append(node)
        for i, name in enumerate(node.output):
            if name not in produced_in_region:
                continue
            node.output[i] = name + SUFFIX
            if name in outside_uses:
                new_nodes.append(
                    helper.make_node("Cast", [name + SUFFIX], [name], name=name + "/Cast_to_fp32", to=TensorProto.FLOAT)
                )
    del g.node[:]
    g.node.extend(new_nodes)
    # fp32 initializers no longer used anywhere
    used = {t for n in g.node for t in n.input}
    keep = [t for t in g.initializer if t.name in used or t.name in {i.name for i in g.input}]
    del g.initializer[:]
    g.initializer.extend(keep)
    del g.value_info[:]
    onnx.checker.check_model(model)
    return len(region)


def _quiet(ort):
    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # no optimizer chatter on the console
    return opts


def _runnable_providers(path: Path) -> list[str] | None:
    """Providers able to run the fp16 graph here (CPU first, then CUDA), or None."""
    from regatt_sdk.engines.ort import create_session, import_ort

    ort = import_ort()

    for providers in (["CPUExecutionProvider"], ["CUDAExecutionProvider", "CPUExecutionProvider"]):
        if providers[0] not in ort.get_available_providers():
            continue
        try:
            create_session(path, options=_quiet(ort), providers=providers)
        except Exception:  # noqa: BLE001 - a missing fp16 kernel is reported as a generic failure
            continue
        return providers
    return None


def convert_fp16(
    fp32_path: str | Path,
    out_path: str | Path,
    *,
    parity_dir: str | Path | None = None,
    parity_count: int | None = 16,
    min_cosine: float = DEFAULT_MIN_COSINE_FP16,
) -> tuple[ModelCard, VariantParity | None]:
    """Write an fp16-backbone copy of ``fp32_path`` at ``out_path`` after the parity gate.

    Parity images: ``parity_dir`` photos, else generated test images at the card's ``prepare_side``.
    When no provider here can run fp16 kernels, the gate is skipped (returned parity is None,
    and the card says so); it never passes a graph that ran and disagreed.
    """
    import onnx

    card = read_card(fp32_path)
    model = onnx.load(str(fp32_path))
    same_convs = same_pads_to_auto_pad(model)  # 0 on files from ``export_onnx`` (already edited)
    converted = convert_backbone_fp16(model)
    unused = drop_unused_initializers(model)  # the fp32 originals of the converted weights
    with staged_file(out_path, ".fp16.onnx.tmp") as tmp:
        onnx.save(model, tmp)
        images: ImageSet = parity_set(parity_dir, [], card.prepare_side, parity_count)
        providers = _runnable_providers(Path(tmp))
        provenance = dict(card.provenance)
        provenance["fp16"] = {
            "nodes": converted,
            "same_pads_as_auto_pad": same_convs,
            "unused_initializers_removed": unused,
            "fp32_parts": "input normalisation, region pooling, whitening, attention, reductions, normalisations",
        }
        parity = None
        if providers is None:
            provenance["parity"] = {
                "skipped": "no onnxruntime provider here runs fp16 kernels; run  regatt doctor  on a GPU machine"
            }
            new_card = replace(card, precision="fp16", provenance=provenance)
            from .onnx_export import write_card

            write_card(tmp, new_card)
            os.chmod(tmp, 0o644)
            os.replace(tmp, out_path)
            return new_card, None
        parity = measure_parity(fp32_path, tmp, images, "fp16", min_cosine, providers)
        provenance["parity"] = parity.to_dict()
        new_card = replace(card, precision="fp16", provenance=provenance)
        new_card = finish_variant(tmp, out_path, new_card, parity, FP16_GOLDEN_ATOL)
    return new_card, parity


__all__: Sequence[str] = ("convert_backbone_fp16", "convert_fp16", "DEFAULT_MIN_COSINE_FP16")
