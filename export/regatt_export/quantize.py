"""Static INT8 (QDQ, per-channel) quantization of an exported encoder, gated by descriptor parity.

Only the backbone is quantized (by default its convolutions, minus the first one); the input
normalisation, the region pooling, whitening, attention and every normalisation stay fp32.
Calibration feeds real photos prepared exactly as the SDK prepares them
(:func:`regatt_sdk.preprocess.prepare` at the card's ``prepare_side``, or a smaller calibration side).
Nothing is written unless the quantized graph's descriptors have a cosine of at least
``min_cosine`` to the fp32 graph's on photos disjoint from the calibration set.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from regatt_sdk.card import ModelCard, read_card
from regatt_sdk.files import staged_file

from .calibration import (
    CalibrationError,
    ImageReader,
    list_images,
    parity_set,
    prepared_images,
    split_holdout,
    spread,
)
from .graph_edits import (
    backbone_nodes,
    default_fp32_nodes,
    drop_unused_initializers,
    first_conv_quantized_by_default,
    fuse_qdq_pads,
    inline_constant_identities,
    same_pads_to_auto_pad,
)
from .parity import VariantParity, finish_variant, measure_parity

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


# -- INT8 ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Int8Options:
    """How to calibrate and what to quantize.

    ``side``: longest side of the calibration photos (default: the card's ``prepare_side``, the
    side the SDK feeds the graph: S, or ``round(max(scales) * S)`` with a scale > 1; smaller
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

    table = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }
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
    card = read_card(fp32_path)
    side = int(options.side or card.prepare_side)
    files = list_images(calibration_dir)
    use_holdout = options.parity_dir is None
    calib_files, held = split_holdout(files, options.holdout if use_holdout else 0)
    calib_files = spread(calib_files, options.count)
    calib = prepared_images(calib_files, side)
    parity_images = parity_set(options.parity_dir, held, card.prepare_side, options.parity_count)
    if options.parity_dir is not None:
        overlap = {Path(p).resolve() for p in list_images(options.parity_dir)} & {p.resolve() for p in calib_files}
        if overlap:
            raise CalibrationError(
                f"{len(overlap)} parity photos are also calibration photos (e.g. {sorted(overlap)[0]})"
            )

    model = onnx.load(str(fp32_path))
    inline_constant_identities(model)
    # OpenVINO mis-runs QDQ around dynamic Pads. ``export_onnx`` already made this edit (its count
    # is in provenance["graph_edits"]); on such a file it finds no pair (0): files from older
    # exports get it here.
    same_convs = same_pads_to_auto_pad(model)
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
        unused = drop_unused_initializers(quantized)  # the fp32 weights the QDQ ones replaced
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
            "unused_initializers_removed": unused,
            "same_pads_as_auto_pad": same_convs,
            "fp32_parts": "input normalisation, region pooling, whitening, attention, normalisations",
        }
        provenance["parity"] = parity.to_dict()
        new_card = replace(card, precision="int8", provenance=provenance)
        new_card = finish_variant(tmp, out_path, new_card, parity, INT8_GOLDEN_ATOL)
    return new_card, parity
