"""ONNX graph edits for the precision variants: which nodes are the backbone, the
backbone's fp32 exceptions, dynamic TF-SAME pads turned into ``auto_pad``, and the clean-ups
after quantization (uint8 Pads, inlined constant Identities, unused initializers)."""

from __future__ import annotations

import numpy as np


def graph_index(g) -> tuple[dict, dict, dict[str, list]]:
    """``(initializers by name, producing node by tensor, consuming nodes by tensor)`` of ``g``."""
    init = {t.name: t for t in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in g.node:
        for t in n.input:
            consumers.setdefault(t, []).append(n)
    return init, producer, consumers


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


#: (height, width) sizes at which a dynamic ``Pad`` is checked against the SAME_UPPER rule: both
#: parities, smaller than a kernel, and a few larger sizes
SAME_CHECK_SIZES: tuple[tuple[int, int], ...] = ((1, 1), (2, 3), (4, 5), (7, 6), (8, 9), (15, 16), (33, 50), (97, 64))


def _same_upper(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """``(before, after)`` padding of ONNX ``auto_pad=SAME_UPPER`` (= TF "SAME") for one axis."""
    out = -(-size // stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def _pads_graph(model, pad, producer: dict, init: dict):
    """A model computing ``pad``'s ``pads`` input from its data input's ``Shape`` alone, or None
    when the pads depend on anything else (values, another tensor, a graph input) or are a
    constant."""
    from onnx import TensorProto, helper

    data, target = pad.input[0], pad.input[1]
    if target in init or target not in producer or producer[target].op_type == "Constant":
        return None
    nodes, stack, used_init = {}, [target], set()
    while stack:
        t = stack.pop()
        if t in init:
            used_init.add(t)
            continue
        if t == data:
            continue
        node = producer.get(t)
        if node is None:
            return None  # a graph input other than the padded tensor
        if id(node) in nodes:
            continue
        nodes[id(node)] = node
        stack.extend(i for i in node.input if i)
    readers = [n for n in nodes.values() if data in n.input]
    if not readers or any(n.op_type != "Shape" for n in readers):
        return None  # amounts that do not come from the padded tensor's shape alone
    order = [n for n in model.graph.node if id(n) in nodes]
    graph = helper.make_graph(
        order,
        "pads",
        [helper.make_tensor_value_info(data, TensorProto.FLOAT, ["n", "c", "h", "w"])],
        [helper.make_tensor_value_info(target, TensorProto.INT64, None)],
        [init[t] for t in sorted(used_init)],
    )
    sub = helper.make_model(graph, opset_imports=model.opset_import)
    sub.ir_version = model.ir_version
    return sub


def _conv_geometry(conv, init: dict, producer: dict) -> tuple[list[int], list[int], list[int]] | None:
    """``(kernel, strides, dilations)`` of an undilated 2-D ``conv`` whose own padding is zero,
    else None."""
    from onnx import helper

    attrs = {a.name: helper.get_attribute_value(a) for a in conv.attribute}
    if any(attrs.get("pads", [0])) or attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", b""):
        return None
    kernel = list(attrs.get("kernel_shape", []))
    if not kernel:
        weight = init.get(conv.input[1])
        if weight is None and conv.input[1] in producer and producer[conv.input[1]].op_type == "DequantizeLinear":
            weight = init.get(producer[conv.input[1]].input[0])
        if weight is None:
            return None
        kernel = list(weight.dims[2:])
    dilations = list(attrs.get("dilations", [1, 1]))
    if len(kernel) != 2 or any(d != 1 for d in dilations):
        return None  # onnxruntime refuses auto_pad SAME with dilations
    return kernel, list(attrs.get("strides", [1, 1])), dilations


def remove_dead_nodes(model) -> int:
    """Drop nodes none of whose outputs is used (by a node or as a graph output); returns the count."""
    g = model.graph
    outputs = {o.name for o in g.output}
    removed = 0
    while True:
        used = {t for n in g.node for t in n.input} | outputs
        dead = [n for n in g.node if not any(o in used for o in n.output if o)]
        if not dead:
            return removed
        for n in dead:
            g.node.remove(n)
        removed += len(dead)


def _graph_reads(g) -> set[str]:
    """Tensor names read by the nodes of ``g`` and of its subgraphs (If/Loop/Scan bodies)."""
    import onnx

    used = {t for n in g.node for t in n.input if t}
    for n in g.node:
        for attr in n.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                used |= _graph_reads(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    used |= _graph_reads(sub)
    return used


def drop_unused_initializers(model) -> int:
    """Remove the constants nothing reads (in place): nodes none of whose outputs is used
    (:func:`remove_dead_nodes`: e.g. the ``Constant`` min/max of Clips the quantizer folded into
    its QDQ ranges), then the initializers no node (subgraphs included) reads and no graph output
    names, with their graph-input entries; returns how many were removed. onnxruntime turns
    ``Constant`` nodes into initializers and removes unused ones itself on every load, with one
    warning line each (~60 on the default INT8 file before this)."""
    g = model.graph
    dead = remove_dead_nodes(model)
    keep = _graph_reads(g) | {o.name for o in g.output}
    unused = [t for t in g.initializer if t.name not in keep]
    names = {t.name for t in unused}
    for t in unused:
        g.initializer.remove(t)
    for i in [i for i in g.input if i.name in names]:
        g.input.remove(i)
    return dead + len(unused)


def same_pads_to_auto_pad(model, sizes: tuple[tuple[int, int], ...] = SAME_CHECK_SIZES) -> int:
    """Replace each dynamic TF-SAME ``Pad -> Conv`` pair by the ``Conv`` with ``auto_pad=SAME_UPPER``.

    The backbones' TF-SAME convolutions export as a zero ``Pad`` whose ``pads`` come from the
    input's shape (:mod:`regatt_export.backbones.same_pad`), then a ``Conv`` without padding.
    ONNX's ``SAME_UPPER`` is the same rule (total padding of ``ceil(n / s)`` outputs, the odd
    pixel after), evaluated by the runtime from the input shape, so the pair becomes one node and
    the graph keeps no shape arithmetic. A pair is replaced only when its ``pads`` subgraph,
    run by onnxruntime on inputs of every size in ``sizes`` (height and width both ways), gives
    exactly the SAME_UPPER amounts for that convolution's kernel and strides. Dilated
    convolutions keep their ``Pad`` (onnxruntime has no ``auto_pad`` SAME with dilations).

    Why: OpenVINO's CPU plugin (2026.4, dynamic shapes) computes a convolution's per-channel bias
    wrongly (channel 0's bias for every channel) when the quantized activation it writes is padded
    by such a runtime-computed ``Pad`` before the next quantized convolution: the INT8 QDQ graph
    then gave descriptors at cosine ~0.01 to onnxruntime's. Without the ``Pad`` both engines
    agree; onnxruntime also loses a copy of the activation. Edits ``model`` in place and removes
    the shape arithmetic left unused; returns the number of pairs replaced.
    """
    import numpy as np
    from onnx import helper

    from regatt_sdk.engines.ort import create_session

    g = model.graph
    init, producer, consumers = graph_index(g)
    outputs = {o.name for o in g.output}
    replaced = []
    for pad in [n for n in g.node if n.op_type == "Pad"]:
        mode = next((a.s for a in pad.attribute if a.name == "mode"), b"constant")
        outs = consumers.get(pad.output[0], [])
        if mode != b"constant" or (len(pad.input) > 2 and pad.input[2]) or len(pad.input) < 2:
            continue
        if pad.output[0] in outputs or len(outs) != 1 or outs[0].op_type != "Conv" or outs[0].input[0] != pad.output[0]:
            continue
        conv = outs[0]
        geometry = _conv_geometry(conv, init, producer)
        sub = _pads_graph(model, pad, producer, init) if geometry is not None else None
        if sub is None:
            continue
        (kh, kw), (sh, sw), (dh, dw) = geometry
        session = create_session(sub.SerializeToString(), "cpu", 1)
        matches = True
        for h, w in list(sizes) + [(w, h) for h, w in sizes]:
            try:
                got = session.run(None, {pad.input[0]: np.zeros((1, 1, h, w), np.float32)})[0]
            except Exception:  # a pads subgraph that reads more than H and W
                matches = False
                break
            (top, bottom), (left, right) = _same_upper(h, kh, sh, dh), _same_upper(w, kw, sw, dw)
            if np.asarray(got).tolist() != [0, 0, top, left, 0, 0, bottom, right]:
                matches = False
                break
        if not matches:
            continue
        conv.input[0] = pad.input[0]
        kept = [a for a in conv.attribute if a.name not in ("pads", "auto_pad")]
        del conv.attribute[:]
        conv.attribute.extend(kept + [helper.make_attribute("auto_pad", "SAME_UPPER")])
        replaced.append(pad)
    for pad in replaced:
        g.node.remove(pad)
    if replaced:
        remove_dead_nodes(model)
    return len(replaced)


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
    init, producer, consumers = graph_index(g)

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
