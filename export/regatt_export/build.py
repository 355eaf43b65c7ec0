"""One factory for every way of making an encoder: the release directory, a registry backbone
with optional learned files, or random weights; returns the module and its model card."""

from __future__ import annotations

import platform
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from regatt_sdk.card import ModelCard
from regatt_sdk.scales import check_aggregation, input_side, parse_scales

from . import __version__
from .backbones import build_backbone, get_spec
from .encoder import RegionalAttentionEncoder
from .head import Attention
from .official import load_attention_file, load_npy, load_whitening_arrays, load_whitening_file, release_files
from .scales import MultiScaleEncoder
from .weights import WeightsError, assign_strict, load_state_dict  # noqa: F401

DEFAULT_BACKBONE = "efficientnet-lite0"
#: The built-in default ships context attention trained for retrieval on the train landmarks of
#: landmarks-train with clutter views (``regatt train --objective landmark``), chosen on the val
#: landmarks by benchmarks/heldout_report.py (benchmarks/results/heldout.md; PROVENANCE.md).
DEFAULT_ATTENTION = "context"
DEFAULT_MAX_SIDE = 512
#: scales of the built-in default (benchmarks/results/scales.md); other models default to (1,)
DEFAULT_SCALES: tuple[float, ...] = (1.0,)
PAPER_MAX_SIDE = 1024


@dataclass(frozen=True)
class EncoderConfig:
    """What to build. ``official`` (a release directory) fixes backbone, attention and PCA."""

    backbone: str = DEFAULT_BACKBONE
    weights: str | None = None  # None: the backbone's default; "random"; or a file
    official: str | None = None
    attention: str | None = None  # None: context for the release, the default's choice, else
    attention_weights: str | None = None  # context when weights are given, otherwise none
    whitening: str | None = None
    levels: int = 5
    pooling: str = "roi"
    max_side: int | None = None  # None: 512 for the default model, 1024 (the paper's) otherwise
    seed: int = 0
    use_default_assets: bool = True  # the packaged learned files for the default backbone
    scales: tuple[float, ...] | None = None  # None: DEFAULT_SCALES for the default model, else (1,)
    scale_aggregation: str = "sum"


def _versions() -> dict[str, str]:
    import onnx

    return {
        "regatt": __version__,
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "python": platform.python_version(),
    }


def is_default_preset(cfg: EncoderConfig) -> bool:
    return not cfg.official and cfg.backbone == DEFAULT_BACKBONE and not cfg.weights and cfg.use_default_assets


def resolve(cfg: EncoderConfig) -> EncoderConfig:
    """Fill the choices left open (attention variant, longest side) from what is being built."""
    attention = cfg.attention
    if attention is None:
        if cfg.official:
            attention = "context"
        elif cfg.attention_weights:
            attention = "context"
        elif is_default_preset(cfg):
            attention = DEFAULT_ATTENTION
        else:
            attention = "none"
    max_side = cfg.max_side or (DEFAULT_MAX_SIDE if is_default_preset(cfg) else PAPER_MAX_SIDE)
    scales = cfg.scales if cfg.scales is not None else (DEFAULT_SCALES if is_default_preset(cfg) else (1.0,))
    scales = parse_scales(list(scales), max_side)
    check_aggregation(cfg.scale_aggregation)
    return replace(cfg, attention=attention, max_side=max_side, scales=scales)


def build_encoder(cfg: EncoderConfig) -> tuple[RegionalAttentionEncoder | MultiScaleEncoder, ModelCard]:
    """Build the encoder (eval mode) and the card describing it (without a golden vector).

    With scales other than ``(1,)`` the module is a :class:`MultiScaleEncoder` around the
    single-scale one (its ``.base``). With a scale > 1 the card's ``input_side`` is
    ``round(max(scales) * S)`` (the side the SDK prepares photos at; the graph resizes that input
    by ``s / max(scales)``); with every scale <= 1 it is left unset (prepared at S).
    """
    cfg = resolve(cfg)
    torch.manual_seed(cfg.seed)
    if cfg.levels < 1 or cfg.levels > 10:
        raise ValueError(f"--levels must be 1..10, got {cfg.levels}")
    preset = "custom"
    if cfg.official:
        files = release_files(cfg.official)
        spec = get_spec("resnet101-caffe")
        backbone = build_backbone("resnet101-caffe", "random")
        assign_strict(backbone, load_state_dict(files["backbone"]), str(files["backbone"]))
        backbone.eval()
        if cfg.attention == "none":
            attention = Attention(spec.channels, "none")
        else:
            attention = load_attention_file(files["attention"], spec.channels, "context")
            if cfg.attention != "context":
                raise ValueError("the release ships 'context' attention only: use --attention context or none")
        whitening = load_whitening_arrays(
            load_npy(files["mean"]), load_npy(files["components"]), "official", spec.channels
        )
        whitening.source = "official (PCA Landmark)"
        preset = "official"
    else:
        spec = get_spec(cfg.backbone)
        backbone = build_backbone(cfg.backbone, cfg.weights)
        assets = default_assets(cfg) if cfg.use_default_assets else {}
        att_file = cfg.attention_weights or assets.get("attention")
        if cfg.attention == "none":
            attention = Attention(spec.channels, "none")
        elif att_file:
            attention = load_attention_file(att_file, spec.channels, cfg.attention)
        else:
            attention = Attention(spec.channels, cfg.attention)  # random init (seeded)
        wh_file = cfg.whitening or assets.get("whitening")
        whitening = load_whitening_file(wh_file, spec.channels) if wh_file else None
        if whitening is not None:
            whitening.source = Path(wh_file).name
        if cfg.weights == "random":
            preset = "random"
        elif cfg.backbone == DEFAULT_BACKBONE and not cfg.weights:
            preset = "default"
    encoder = RegionalAttentionEncoder(backbone, spec, attention, whitening, cfg.levels, cfg.pooling).eval()
    aggregation = cfg.scale_aggregation if cfg.scales != (1.0,) else "sum"
    if cfg.scales != (1.0,):
        encoder = MultiScaleEncoder(encoder, cfg.scales, aggregation).eval()
    fed = input_side(cfg.max_side, cfg.scales)
    card = ModelCard(
        backbone=spec.name,
        dim=encoder.dim,
        channels=spec.channels,
        stride=spec.stride,
        color=spec.color,
        mean=tuple(spec.mean),
        std=tuple(spec.std),
        max_side=cfg.max_side,
        levels=cfg.levels,
        pooling=cfg.pooling,
        attention=attention.variant,
        whitening=whitening.source if whitening is not None else "none",
        preset=preset,
        scales=tuple(cfg.scales),
        scale_aggregation=aggregation,
        input_side=fed if fed != cfg.max_side else None,
        versions=_versions(),
        provenance={
            "official": cfg.official,
            "weights": cfg.weights or "default",
            "attention_weights": _attention_source(cfg, attention.variant),
            "seed": cfg.seed,
        },
    )
    return encoder, card


def _attention_source(cfg: EncoderConfig, variant: str) -> str:
    if variant == "none":
        return "none"
    if cfg.official:
        return "official"
    path = cfg.attention_weights or (default_assets(cfg).get("attention") if cfg.use_default_assets else None)
    return Path(path).name if path else "random-init"


def default_assets(cfg: EncoderConfig) -> dict[str, str]:
    """Packaged learned files (attention, whitening) for the default backbone, if present."""
    if cfg.official or cfg.backbone != DEFAULT_BACKBONE or cfg.weights:
        return {}
    root = Path(__file__).parent / "assets"
    found = {}
    att = root / f"{DEFAULT_BACKBONE}-attention-{cfg.attention}.pth"
    if att.is_file():
        found["attention"] = str(att)
    wh = root / f"{DEFAULT_BACKBONE}-whitening.npz"
    if wh.is_file():
        found["whitening"] = str(wh)
    return found


__all__ = ["EncoderConfig", "build_encoder", "WeightsError", "replace"]
