"""Static INT8 (QDQ, per-channel) quantization of an exported encoder, gated by descriptor parity.

Only the backbone is quantized (by default its convolutions, minus the first one); the input
normalisation, the region pooling, whitening, attention and every normalisation stay fp32.
Calibration feeds real photos prepared exactly as the SDK prepares them
(:func:`regatt_sdk.preprocess.prepare` at the card's ``max_side``, or a smaller calibration side).
Nothing is written unless the quantized graph's descriptors have a cosine of at least
``min_cosine`` to the fp32 graph's on photos disjoint from the calibration set.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from regatt_sdk.card import CARD_KEY, Golden, ModelCard, golden_image
from regatt_sdk.imageio import read_image
from regatt_sdk.preprocess import prepare

from .onnx_export import GOLDEN_SIZE, ParityError, staged_file, write_card

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
#: worst-image cosine to fp32 accepted by default. Measured on held-out ImageNet photos at S=512:
#: random resnet18 0.999, random resnet101-caffe 0.9998; the default model (efficientnet-lite0
#: with its whitening, first block kept fp32) min 0.93, mean 0.96, with its landmark mAP
#: unchanged (the power-0.5 whitening scales up the low-variance directions where int8 noise
#: sits, so descriptor cosines run lower than the retrieval result suggests). A broken
#: quantization (wrong scales, overflow) gives < 0.5. Use --min-cosine to move it per model.
DEFAULT_MIN_COSINE_INT8 = 0.90
#: the golden tolerance stored for an int8 graph: integer kernels differ between CPUs
#: (VNNI vs AVX2 saturation) and CUDA runs QDQ as fake-quantized fp32.
INT8_GOLDEN_ATOL = 2e-2
#: op types quantized by default, inside the backbone only: the convolutions and the activations and
#: residual adds between them, so each Q sees the post-activation range (Conv alone: mean parity
#: cosine 0.936 on efficientnet-lite0; with these 0.968) and int8 chains stay unbroken
DEFAULT_OP_TYPES = ("Conv", "Relu", "Clip", "Add", "MaxPool", "Pad")
#: generated parity images (height, width) when no photos are available
GENERATED_PARITY_SIZES = ((240, 320), (320, 240), (256, 256), (160, 400), (200, 200), (288, 216))


class CalibrationError(ValueError):
    """The calibration or parity image set is unusable (missing, empty, unreadable)."""


# -- which nodes are the backbone ------------------------------------------------------------------
def _float_tensors(model) -> set[str]:
    """Names of float32 tensors (graph inputs, initializers, inferred values, Constant outputs)."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    g = inferred.graph
    out = {vi.name for vi in list(g.input) + list(g.value_info) + list(g.output) if vi.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}
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
        fused = helper.make_node("Pad", [dq.input[0], pad.input[1], zero_name], [q.output[0]], name=f"{pad.name}/uint8", mode="constant")
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
    for n in [n for n in g.node if n.op_type == "DequantizeLinear" and n.output[0] not in used and n.output[0] not in outputs]:
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


# -- images ----------------------------------------------------------------------------------------
def list_images(folder: str | Path) -> list[Path]:
    """Image files directly in ``folder`` or below it, sorted by path."""
    root = Path(folder)
    if not root.is_dir():
        raise CalibrationError(f"{root}: not a directory of images")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise CalibrationError(f"{root}: no image files ({', '.join(IMAGE_SUFFIXES)})")
    return files


def spread(items: Sequence[Path], count: int | None) -> list[Path]:
    """``count`` items evenly spread over ``items`` (all of them when ``count`` is None or larger)."""
    if count is None or count >= len(items):
        return list(items)
    if count < 1:
        raise CalibrationError(f"count must be at least 1, got {count}")
    picks = np.linspace(0, len(items) - 1, count).round().astype(int)
    return [items[i] for i in sorted(set(picks.tolist()))]


def split_holdout(files: Sequence[Path], holdout: int) -> tuple[list[Path], list[Path]]:
    """Every k-th file held out for parity (``holdout`` of them), the rest for calibration."""
    if len(files) < 2 or holdout < 1:
        return list(files), []
    holdout = min(holdout, len(files) // 2)
    step = len(files) / holdout
    held = {int(step * k + step / 2) for k in range(holdout)}
    return [f for i, f in enumerate(files) if i not in held], [f for i, f in enumerate(files) if i in held]


def prepared_images(files: Iterable[Path], side: int) -> list[np.ndarray]:
    """Decode and prepare each file exactly as the SDK does (``prepare`` at ``side``)."""
    out = []
    for f in files:
        out.append(prepare(read_image(f), side))
    return out


def generated_images(side: int) -> list[np.ndarray]:
    """Deterministic textured test images at a few aspect ratios, longest side ``side``."""
    out = []
    for k, (h, w) in enumerate(GENERATED_PARITY_SIZES):
        scale = side / max(h, w)
        out.append(golden_image(max(16, round(h * scale)), max(16, round(w * scale)), 500 + k))
    return out


@dataclass(frozen=True)
class ImageSet:
    """Prepared images and where they came from (for the card and the report)."""

    images: list[np.ndarray]
    source: str
    files: tuple[str, ...] = ()


def parity_set(
    parity_dir: str | Path | None, holdout: Sequence[Path], side: int, count: int | None = None
) -> ImageSet:
    """Photos from ``parity_dir``, else the held-out calibration photos, else generated images."""
    if parity_dir is not None:
        files = spread(list_images(parity_dir), count)
        return ImageSet(prepared_images(files, side), str(Path(parity_dir).resolve()), tuple(f.name for f in files))
    if holdout:
        return ImageSet(prepared_images(holdout, side), "held-out calibration photos", tuple(f.name for f in holdout))
    return ImageSet(generated_images(side), "generated test images")


class ImageReader:
    """A ``CalibrationDataReader`` over prepared images, one ``(1, h, w, 3)`` batch at a time.

    Supports ``set_range`` so the quantizer can calibrate image by image (sizes differ, and the
    histogram methods would otherwise keep every activation of every image in memory).
    """

    def __init__(self, images: Sequence[np.ndarray], input_name: str, dtype=np.uint8):
        self.images = list(images)
        self.input_name = input_name
        self.dtype = dtype
        self.set_range(0, len(self.images))

    def __len__(self) -> int:
        return len(self.images)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._iter = iter(range(start_index, min(end_index, len(self.images))))

    def get_next(self) -> dict[str, np.ndarray] | None:
        i = next(self._iter, None)
        if i is None:
            return None
        return {self.input_name: np.ascontiguousarray(self.images[i][None], dtype=self.dtype)}

    def rewind(self) -> None:
        self.set_range(0, len(self.images))


# -- parity ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class VariantParity:
    """Descriptor agreement of a reduced-precision graph with its fp32 graph."""

    precision: str
    images: str
    count: int
    min_cosine: float
    mean_cosine: float
    threshold: float
    provider: str

    @property
    def ok(self) -> bool:
        return bool(np.isfinite(self.min_cosine) and self.min_cosine >= self.threshold)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ok"] = self.ok
        return d

    def summary(self) -> str:
        return (
            f"{self.precision} parity on {self.count} {self.images} ({self.provider}): cosine to fp32 "
            f"min {self.min_cosine:.5f}, mean {self.mean_cosine:.5f}, required >= {self.threshold:g} "
            f"-> {'pass' if self.ok else 'FAIL'}"
        )


def _session(path: str | Path, providers: Sequence[str]):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=opts, providers=list(providers))


def descriptors(session, images: Sequence[np.ndarray], dtype=np.uint8) -> np.ndarray:
    """Run ``session`` on each prepared image (one at a time: sizes differ) -> ``(N, D)``."""
    name = session.get_inputs()[0].name
    rows = [session.run(["descriptor"], {name: np.ascontiguousarray(im[None], dtype=dtype)})[0][0] for im in images]
    return np.stack(rows).astype(np.float32)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine of ``(N, D)`` arrays; NaN rows (non-finite output) give -inf."""
    num = np.sum(a * b, axis=1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = num / den
    return np.where(np.isfinite(cos), cos, -np.inf)


def measure_parity(
    fp32_path: str | Path,
    variant_path: str | Path,
    images: ImageSet,
    precision: str,
    threshold: float,
    providers: Sequence[str] = ("CPUExecutionProvider",),
) -> VariantParity:
    """Cosine of ``variant_path``'s descriptors to ``fp32_path``'s on ``images``."""
    if not images.images:
        raise CalibrationError("no parity images")
    dtype = _input_dtype(fp32_path)
    ref = descriptors(_session(fp32_path, ["CPUExecutionProvider"]), images.images, dtype)
    sess = _session(variant_path, providers)
    got = descriptors(sess, images.images, dtype)
    cos = cosines(ref, got)
    return VariantParity(
        precision=precision,
        images=images.source,
        count=len(images.images),
        min_cosine=float(cos.min()),
        mean_cosine=float(cos.mean()) if np.isfinite(cos).all() else float("-inf"),
        threshold=float(threshold),
        provider=sess.get_providers()[0],
    )


# -- cards and files -------------------------------------------------------------------------------
def read_card_file(path: str | Path) -> ModelCard:
    """The model card stored in an ONNX file."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    meta = {p.key: p.value for p in model.metadata_props}
    if CARD_KEY not in meta:
        raise ValueError(f"{path}: no regatt model card (export it with  regatt export  first)")
    return ModelCard.from_json(meta[CARD_KEY])


def _input_dtype(path: str | Path):
    return np.uint8 if read_card_file(path).input_dtype == "uint8" else np.float32


def variant_golden(path: str | Path, card: ModelCard, atol: float) -> Golden:
    """The golden vector recomputed on the variant itself (onnxruntime CPU)."""
    h, w, seed = GOLDEN_SIZE
    image = golden_image(h, w, seed)[None].astype(np.uint8 if card.input_dtype == "uint8" else np.float32)
    sess = _session(path, ["CPUExecutionProvider"])
    vec = sess.run(["descriptor"], {sess.get_inputs()[0].name: image})[0][0]
    return Golden(height=h, width=w, seed=seed, vector=[float(x) for x in vec], atol=atol)


def finish_variant(
    tmp: str | Path,
    out_path: str | Path,
    card: ModelCard,
    parity: VariantParity,
    golden_atol: float,
) -> ModelCard:
    """Refuse (``ParityError``) or stamp the card (golden from the variant) and move into place."""
    if not parity.ok:
        raise ParityError(parity.summary())
    card = replace(card, golden=variant_golden(tmp, card, golden_atol))
    write_card(tmp, card)
    os.chmod(tmp, 0o644)
    os.replace(tmp, out_path)
    return card


# -- INT8 ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Int8Options:
    """How to calibrate and what to quantize.

    ``side``: longest side of the calibration photos (default: the card's ``max_side``; smaller
    is faster and calibrates the same activations at a coarser scale). ``count``: photos used,
    evenly spread over the folder. ``holdout``: photos kept out of calibration for the parity
    gate when ``parity_dir`` is not given. ``op_types``: op types quantized inside the backbone.
    ``exclude_first_conv``: keep the stem convolution fp32 (``None``: as the backbone's spec says).
    """

    method: str = "minmax"
    side: int | None = None
    count: int | None = 64
    holdout: int = 8
    parity_dir: str | None = None
    parity_count: int | None = 16
    min_cosine: float = DEFAULT_MIN_COSINE_INT8
    exclude_first_conv: bool | None = None  # None: the backbone's own choice (``int8_first_conv``)
    exclude_last_conv: bool = True
    op_types: tuple[str, ...] = DEFAULT_OP_TYPES
    percentile: float = 99.999
    reduce_range: bool = False
    #: substrings of backbone node names kept fp32 (None: the backbone's ``int8_fp32_nodes``)
    keep_fp32: tuple[str, ...] | None = None
    parity_providers: tuple[str, ...] = ("CPUExecutionProvider",)


def _calibration_method(name: str):
    from onnxruntime.quantization import CalibrationMethod

    table = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy, "percentile": CalibrationMethod.Percentile}
    if name not in table:
        raise CalibrationError(f"calibration method {name!r}: use one of {', '.join(CALIBRATION_METHODS)}")
    return table[name]


def quantize_int8(
    fp32_path: str | Path,
    out_path: str | Path,
    calibration_dir: str | Path,
    options: Int8Options = Int8Options(),
) -> tuple[ModelCard, VariantParity]:
    """Write a static INT8 QDQ copy of ``fp32_path`` (made by ``export_onnx``) at ``out_path``.

    Returns the new card (``precision="int8"``, calibration recorded in ``provenance``) and the
    parity result. Raises :class:`~regatt_export.onnx_export.ParityError` (nothing written)
    when the worst parity cosine is below ``options.min_cosine``.
    """
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType
    from onnxruntime.quantization import quantize_static as _quantize

    method = _calibration_method(options.method)
    card = read_card_file(fp32_path)
    side = int(options.side or card.max_side)
    files = list_images(calibration_dir)
    use_holdout = options.parity_dir is None
    calib_files, held = split_holdout(files, options.holdout if use_holdout else 0)
    calib_files = spread(calib_files, options.count)
    calib = prepared_images(calib_files, side)
    parity_images = parity_set(options.parity_dir, held, card.max_side, options.parity_count)
    if options.parity_dir is not None:
        overlap = {Path(p).resolve() for p in list_images(options.parity_dir)} & {p.resolve() for p in calib_files}
        if overlap:
            raise CalibrationError(f"{len(overlap)} parity photos are also calibration photos (e.g. {sorted(overlap)[0]})")

    model = onnx.load(str(fp32_path))
    inline_constant_identities(model)
    body = backbone_nodes(model)
    convs = [n for n in body if n.op_type == "Conv"]
    keep_first = options.exclude_first_conv
    if keep_first is None:
        keep_first = not first_conv_quantized_by_default(card.backbone)
    # one backbone per scale in a multi-scale graph: the stem / last convolution of each copy
    # are the convolutions sharing the first / last one's weight
    exclude = [c.name for c in convs if c.input[1] == convs[0].input[1]] if keep_first else []
    if options.exclude_last_conv:
        exclude += [c.name for c in convs if c.input[1] == convs[-1].input[1] and c.name not in exclude]
    keep = options.keep_fp32
    if keep is None:
        keep = default_fp32_nodes(card.backbone)
    exclude += [n.name for n in body if any(k in n.name for k in keep) and n.name not in exclude]
    targets = [n.name for n in body if n.op_type in options.op_types and n.name not in exclude]
    if not targets:
        raise ValueError(f"nothing to quantize: no {options.op_types} nodes in the backbone")
    dtype = np.uint8 if card.input_dtype == "uint8" else np.float32
    reader = ImageReader(calib, card.input_name, dtype)
    with staged_file(out_path, ".int8.onnx.tmp") as tmp:
        onnx.save(model, tmp)
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore", RuntimeWarning)  # zero-range tensors outside the backbone
            _quantize(
                tmp,
                tmp,
                reader,
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                reduce_range=options.reduce_range,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                op_types_to_quantize=list(options.op_types),
                nodes_to_quantize=targets,
                nodes_to_exclude=exclude,
                calibrate_method=method,
                extra_options={
                    "CalibStridedMinMax": 1,  # one image per pass: sizes differ, memory stays bounded
                    "CalibPercentile": options.percentile,
                    "ActivationSymmetric": False,
                    "WeightSymmetric": True,
                },
            )
        quantized = onnx.load(tmp)
        fused = fuse_qdq_pads(quantized)
        onnx.save(quantized, tmp)
        del quantized
        parity = measure_parity(fp32_path, tmp, parity_images, "int8", options.min_cosine, options.parity_providers)
        provenance = dict(card.provenance)
        provenance["calibration"] = {
            "folder": str(Path(calibration_dir).resolve()),
            "count": len(calib),
            "method": options.method,
            "side": side,
            "percentile": options.percentile if options.method == "percentile" else None,
        }
        provenance["quantization"] = {
            "format": "QDQ",
            "per_channel": True,
            "activations": "uint8 asymmetric",
            "weights": "int8 symmetric",
            "op_types": list(options.op_types),
            "nodes": len(targets),
            "excluded": exclude,
            "kept_fp32_patterns": list(keep),
            "uint8_pads": fused,
            "fp32_parts": "input normalisation, region pooling, whitening, attention, normalisations",
        }
        provenance["parity"] = parity.to_dict()
        new_card = replace(card, precision="int8", provenance=provenance)
        new_card = finish_variant(tmp, out_path, new_card, parity, INT8_GOLDEN_ATOL)
    return new_card, parity
