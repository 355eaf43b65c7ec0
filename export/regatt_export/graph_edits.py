"""ONNX graph edits for the precision variants: which nodes are the backbone, the
backbone's fp32 exceptions, and the clean-ups after quantization (uint8 Pads, inlined constant
Identities)."""

from __future__ import annotations

import numpy as np


def _float_tensors(model) -> set[str]:
    """Names of float32 tensors (graph inputs, initializers, inferred values, Constant outputs)."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    g = inferred.graph
    out = {
        vi.name
        for vi in list(g.input) + list(g.value_info) + list(g.output)
        if vi.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    }
    out |= {t.name for t in g.initializer if t.data_type == onnx.TensorProto.FLOAT}
    for node in g.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value" and a.t.data_type == onnx.TensorProto.FLOAT:
                    out.add(node.output[0])
    return out


def backbone_nodes(model) -> list:
    """The backbone's float data path: nodes reachable from a ``Conv`` through float tensors that
    also lead to a ``Conv`` (in graph order). A multi-scale graph holds one backbone per scale
    (sharing weights): the result is all of them, and none of the resizes between them.

    Shape arithmetic (``Shape``/``Gather``/``Cast`` chains of same-padding) is not on it: it starts
    from integer tensors. Everything after the last convolution (pooling, whitening, attention)
    and before the first (normalisation) is outside.
    """
    g = model.graph
    convs = [n for n in g.node if n.op_type == "Conv"]
    if not convs:
        raise ValueError("the graph has no Conv node: not a regatt encoder")
    floats = _float_tensors(model)
    consumers: dict[str, list[int]] = {}
    for i, n in enumerate(g.node):
        for t in n.input:
            consumers.setdefault(t, []).append(i)
    producers = {t: i for i, n in enumerate(g.node) for t in n.output}
    index = {id(n): i for i, n in enumerate(g.node)}
    conv_ids = [index[id(c)] for c in convs]
    # forward: from every conv along float outputs
    forward = set(conv_ids)
    stack = list(conv_ids)
    while stack:
        i = stack.pop()
        for t in g.node[i].output:
            if t not in floats:
                continue
            for j in consumers.get(t, []):
                if j not in forward and g.node[j].op_type != "Shape":
                    forward.add(j)
                    stack.append(j)
    # backward: ancestors of every conv
    backward = set(conv_ids)
    stack = list(conv_ids)
    while stack:
        i = stack.pop()
        for t in g.node[i].input:
            j = producers.get(t)
            if j is not None and j not in backward:
                backward.add(j)
                stack.append(j)
    return [g.node[i] for i in sorted(forward & backward)]


def first_conv_quantized_by_default(backbone: str) -> bool:
    """Whether ``backbone``'s stem convolution is quantized unless told otherwise (its spec's
    ``int8_first_conv``; False for names not in the registry)."""
    from .backbones import BACKBONES

    spec = BACKBONES.get(backbone)
    return bool(spec is not None and spec.int8_first_conv)


def default_fp32_nodes(backbone: str) -> tuple[str, ...]:
    """Node-name substrings of ``backbone`` kept fp32 unless told otherwise (its spec's
    ``int8_fp32_nodes``; none for names not in the registry)."""
    from .backbones import BACKBONES

    spec = BACKBONES.get(backbone)
    return tuple(spec.int8_fp32_nodes) if spec is not None else ()


def fuse_qdq_pads(model) -> int:
    """Run zero-padding on the quantized tensor itself; returns the number of ``Pad`` nodes changed.

    onnxruntime fuses ``DequantizeLinear -> Conv -> QuantizeLinear`` into ``QLinearConv`` but leaves
    ``DequantizeLinear -> Pad -> QuantizeLinear`` (the dynamic TF-SAME padding) in float: two
    conversions and a float copy of the largest activations (a third of the int8 EfficientNet's
    time). When both sides use the same per-tensor scale and zero point, a ``Pad`` of the uint8
    tensor with the zero point as its constant gives the same bytes, so the pair is replaced by
    it. ``Shape`` nodes that read a dequantized tensor are pointed at the quantized one (same
    shape), so no dequantization is left running just to feed them. Edits ``model`` in place.
    """
    from onnx import helper, numpy_helper

    g = model.graph
    init = {t.name: t for t in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in g.node:
        for t in n.input:
            consumers.setdefault(t, []).append(n)

    def constant(name: str):
        if name in init:
            return numpy_helper.to_array(init[name])
        node = producer.get(name)
        if node is not None and node.op_type == "Constant":
            return numpy_helper.to_array(node.attribute[0].t)
        return None

    def qparams(node) -> tuple | None:
        if len(node.input) < 3:
            return None
        scale, zero = constant(node.input[1]), constant(node.input[2])
        if scale is None or zero is None or scale.size != 1 or zero.size != 1:
            return None
        return float(scale.reshape(())), zero.reshape(())

    drop, count = [], 0
    for pad in [n for n in g.node if n.op_type == "Pad"]:
        mode = next((a.s for a in pad.attribute if a.name == "mode"), b"constant")
        dq, outs = producer.get(pad.input[0]), consumers.get(pad.output[0], [])
        if mode != b"constant" or (len(pad.input) > 2 and pad.input[2]):
            continue  # a non-zero pad value would need its own quantization
        if dq is None or dq.op_type != "DequantizeLinear" or len(outs) != 1 or outs[0].op_type != "QuantizeLinear":
            continue
        q = outs[0]
        a, b = qparams(dq), qparams(q)
        if a is None or b is None or a[0] != b[0] or a[1] != b[1] or a[1].dtype != b[1].dtype:
            continue
        zero_name = f"{pad.name or pad.output[0]}/zero_point"
        g.initializer.append(numpy_helper.from_array(np.asarray(a[1], dtype=a[1].dtype), zero_name))
        fused = helper.make_node(
            "Pad", [dq.input[0], pad.input[1], zero_name], [q.output[0]], name=f"{pad.name}/uint8", mode="constant"
        )
        g.node.insert(list(g.node).index(pad), fused)
        drop += [pad, q]
        count += 1
    for n in g.node:
        if n.op_type == "Shape":
            src = producer.get(n.input[0])
            if src is not None and src.op_type == "DequantizeLinear":
                n.input[0] = src.input[0]
    for n in drop:
        g.node.remove(n)
    outputs = {o.name for o in g.output}
    used = {t for n in g.node for t in n.input}
    for n in [
        n for n in g.node if n.op_type == "DequantizeLinear" and n.output[0] not in used and n.output[0] not in outputs
    ]:
        g.node.remove(n)
    return count


def inline_constant_identities(model) -> int:
    """Replace ``Identity`` nodes that copy an initializer by a copy of the initializer (in place).

    The TorchScript exporter shares equal tensors through ``Identity`` nodes; a convolution whose
    bias is not an initializer is not quantized by onnxruntime (it stays fp32 between Q/DQ pairs).
    Returns the number of nodes removed.
    """
    from onnx import numpy_helper

    g = model.graph
    inits = {t.name: t for t in g.initializer}
    outputs = {o.name for o in g.output}
    keep, removed = [], 0
    for node in g.node:
        if node.op_type == "Identity" and node.input[0] in inits and node.output[0] not in outputs:
            g.initializer.append(numpy_helper.from_array(numpy_helper.to_array(inits[node.input[0]]), node.output[0]))
            removed += 1
        else:
            keep.append(node)
    del g.node[:]
    g.node.extend(keep)
    return removed
