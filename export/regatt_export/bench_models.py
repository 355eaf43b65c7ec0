"""The torch side of ``regatt bench``: build the benchmarked variants with random weights,
export each (and the backbone alone) to ONNX, count multiply-adds, and run eager PyTorch.

Everything here is for timing only: backbone, attention and whitening are random (seeded), so
the descriptors mean nothing, but every layer has the paper's shapes. The SDK's timing code
(``regatt_sdk.bench``) calls in through :func:`prepare_variant`, :func:`export_backbone` and
:class:`EagerEngine`.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from .build import EncoderConfig, build_encoder
from .encoder import RegionalAttentionEncoder
from .onnx_export import OPSET, export_onnx

#: sizes the exporter's parity gate checks for a timing model (small: it only has to prove the
#: graph is the module; the benchmark runs at the real size). (name, height, width)
TIMING_CHECK_SIZES: tuple[tuple[str, int, int], ...] = (("landscape", 64, 96),)
#: the backbone-only graph is traced at this (N, H, W) and checked at ``TIMING_CHECK_SIZES``
BACKBONE_TRACE = (1, 96, 128)


class BackboneOnly(nn.Module):
    """``normalize_input`` + ``backbone`` of an encoder: ``(N, H, W, 3)`` -> ``(N, C, h, w)``."""

    def __init__(self, encoder: RegionalAttentionEncoder):
        super().__init__()
        self.encoder = encoder

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.encoder.backbone(self.encoder.normalize_input(image))


def model_name(backbone: str, variant: str, levels: int, seed: int) -> str:
    """File name of a cached timing model."""
    return f"{backbone}-{variant}-L{levels}-seed{seed}.onnx"


def backbone_name(backbone: str, seed: int) -> str:
    """File name of a cached backbone-only graph."""
    return f"{backbone}-trunk-seed{seed}.onnx"


def random_whitening_file(channels: int, seed: int, directory: Path) -> Path:
    """A random ``channels x channels`` whitening (the paper's PCA shape) as a regatt ``.npz``."""
    rng = np.random.default_rng(seed)
    components = (rng.standard_normal((channels, channels)) / np.sqrt(channels)).astype(np.float32)
    mean = (rng.standard_normal(channels) * 0.01).astype(np.float32)
    path = directory / f"whitening-random-{channels}-seed{seed}.npz"
    if not path.is_file():
        np.savez(path, mean=mean, components=components)
    return path


def build_variant(backbone: str, variant: str, levels: int, seed: int, workdir: Path):
    """A random-weight encoder with a random whitening (the paper's PCA shape) and its card.

    ``variant`` is none, regional or context. Returns ``(encoder, card)``.
    """
    from .backbones import get_spec

    channels = get_spec(backbone).channels
    cfg = EncoderConfig(
        backbone=backbone,
        weights="random",
        attention=variant,
        whitening=str(random_whitening_file(channels, seed, workdir)),
        levels=levels,
        seed=seed,
        use_default_assets=False,
    )
    return build_encoder(cfg)


@dataclass
class PreparedVariant:
    """One variant ready to time: its module, its ONNX file and how long the export took."""

    variant: str
    encoder: RegionalAttentionEncoder
    onnx_path: Path
    export_s: float | None  # None: reused from the cache


def prepare_variant(backbone: str, variant: str, levels: int, seed: int, directory: Path) -> PreparedVariant:
    """Build ``variant`` and export it to ``directory`` unless a cached file is already there."""
    directory.mkdir(parents=True, exist_ok=True)
    encoder, card = build_variant(backbone, variant, levels, seed, directory)
    path = directory / model_name(backbone, variant, levels, seed)
    if path.is_file():
        return PreparedVariant(variant, encoder, path, None)
    start = time.perf_counter()
    export_onnx(encoder, card, path, sizes=TIMING_CHECK_SIZES)
    return PreparedVariant(variant, encoder, path, time.perf_counter() - start)


def export_backbone(encoder: RegionalAttentionEncoder, path: Path, atol: float = 1e-4) -> float | None:
    """Export ``normalize_input + backbone`` to ``path`` (dynamic N, H, W); checked against torch.

    Returns the export time in seconds, or None when ``path`` already exists (cache).
    """
    from regatt_sdk.engines.ort import create_session, import_ort

    ort = import_ort()
    if path.is_file():
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    module = BackboneOnly(encoder).eval()
    n, h, w = BACKBONE_TRACE
    example = torch.zeros((n, h, w, 3), dtype=torch.uint8)
    tmp = path.with_suffix(".onnx.tmp")
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (example,),
            str(tmp),
            dynamo=False,
            input_names=["image"],
            output_names=["features"],
            dynamic_axes={"image": {0: "batch", 1: "height", 2: "width"}, "features": {0: "batch", 2: "fh", 3: "fw"}},
            opset_version=OPSET,
            do_constant_folding=True,
        )
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = create_session(tmp, options=opts, providers=["CPUExecutionProvider"])
    for _, ch, cw in TIMING_CHECK_SIZES:
        image = np.random.default_rng(ch * cw).integers(0, 256, (1, ch, cw, 3), dtype=np.uint8)
        with torch.inference_mode():
            want = module(torch.from_numpy(image)).numpy()
        got = sess.run(None, {"image": image})[0]
        scale = max(float(np.abs(want).max()), 1.0)
        if got.shape != want.shape or not float(np.abs(got - want).max()) <= atol * scale:
            tmp.unlink()
            raise RuntimeError(f"backbone-only graph disagrees with PyTorch at {ch}x{cw}")
    tmp.replace(path)
    return time.perf_counter() - start


def count_macs(module: nn.Module, image: np.ndarray) -> dict[str, float]:
    """Multiply-adds of one forward pass on ``image`` (N, H, W, 3), by PyTorch's flop counter.

    Returns ``{"total": MACs, "<module path>": MACs, ...}`` for the direct children of the
    module (FLOP/2: conv, matmul, linear; elementwise ops are not counted).
    """
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False, depth=2)
    with torch.inference_mode(), counter:
        module(torch.from_numpy(np.ascontiguousarray(image)))
    counts = counter.get_flop_counts()
    out = {"total": counter.get_total_flops() / 2.0}
    for name, ops in counts.items():
        if name != "Global" and name.count(".") == 1:
            out[name.split(".", 1)[1]] = sum(ops.values()) / 2.0
    return out


class EagerEngine:
    """Eager PyTorch on the CPU: the project's own module, ``torch.inference_mode``."""

    name = "torch-eager"

    def __init__(self, encoder: RegionalAttentionEncoder, threads: int):
        torch.set_num_threads(threads)
        self.threads = threads
        self.encoder = encoder.eval()
        self.trunk = BackboneOnly(encoder).eval()

    def full(self, image: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return self.encoder(torch.from_numpy(image)).numpy()

    def backbone(self, image: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return self.trunk(torch.from_numpy(image)).numpy()


def torch_version() -> str:
    """The installed torch version (for the report)."""
    return torch.__version__
