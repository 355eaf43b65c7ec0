"""Importer for the authors' released weights directory (SPEC §2) and the two small file
formats regatt itself writes (attention weights, whitening).

Release directory::

    resnet101_caffeProto.pth                       Caffe ResNet-101 state dict (+ fc)
    ContextAwareRegionalAttention_weights.pth      conv_att_1.weight [64,4096,1], .bias [64],
                                                   conv_att_2.weight [1,64,1], .bias [1]
    pca_components.npy                             float32 [2048, 2048] (rows = outputs)
    pca_mean.npy                                   float32 [2048] (added before projecting)

Everything is read without unpickling (``weights_only=True``, ``allow_pickle=False``) and any
missing or misshaped tensor is an error naming the file.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch

from .head import HIDDEN, Attention, Whitening
from .weights import WeightsError, load_state_dict

BACKBONE_FILE = "resnet101_caffeProto.pth"
ATTENTION_FILE = "ContextAwareRegionalAttention_weights.pth"
PCA_COMPONENTS_FILE = "pca_components.npy"
PCA_MEAN_FILE = "pca_mean.npy"
ATTENTION_KEYS = ("conv_att_1.weight", "conv_att_1.bias", "conv_att_2.weight", "conv_att_2.bias")


def load_npy(path: str | Path) -> np.ndarray:
    """``np.load`` with ``allow_pickle=False``, as float32, naming the file on failure."""
    p = Path(path)
    if not p.is_file():
        raise WeightsError(f"{p}: file not found")
    try:
        arr = np.load(p, allow_pickle=False)
    except Exception as exc:
        raise WeightsError(f"{p}: not a plain .npy array ({exc})") from None
    if not np.issubdtype(arr.dtype, np.floating):
        raise WeightsError(f"{p}: expected floating-point data, got {arr.dtype}")
    return arr.astype(np.float32)


def release_files(directory: str | Path) -> dict[str, Path]:
    """The four release files in ``directory``; raises naming every missing one."""
    d = Path(directory)
    if not d.is_dir():
        raise WeightsError(f"{d}: not a directory (expected the unpacked release weights.tar)")
    names = {
        "backbone": BACKBONE_FILE,
        "attention": ATTENTION_FILE,
        "components": PCA_COMPONENTS_FILE,
        "mean": PCA_MEAN_FILE,
    }
    files = {k: d / v for k, v in names.items()}
    missing = [v for k, v in names.items() if not files[k].is_file()]
    if missing:
        raise WeightsError(f"{d}: release directory lacks {missing}")
    return files


def load_whitening_arrays(
    mean: np.ndarray, components: np.ndarray, source: str, channels: int | None = None
) -> Whitening:
    """Check shapes (``components (D, C)``, ``mean (C,)``) and build a :class:`Whitening`."""
    if components.ndim != 2:
        raise WeightsError(f"{source}: components must be 2-d (D, C), got shape {components.shape}")
    if mean.shape != (components.shape[1],):
        raise WeightsError(f"{source}: mean has shape {mean.shape}, components {components.shape}")
    if channels is not None and components.shape[1] != channels:
        raise WeightsError(
            f"{source}: whitening is for {components.shape[1]}-d regional vectors, the backbone gives {channels}"
        )
    if not (np.isfinite(mean).all() and np.isfinite(components).all()):
        raise WeightsError(f"{source}: contains NaN or infinity")
    return Whitening(torch.from_numpy(mean), torch.from_numpy(components), source=source)


def load_whitening_file(path: str | Path, channels: int | None = None) -> Whitening:
    """A whitening ``.npz`` written by ``regatt whiten`` (``mean (C,)``, ``components (D, C)``)."""
    p = Path(path)
    if not p.is_file():
        raise WeightsError(f"{p}: whitening file not found")
    if not zipfile.is_zipfile(p):
        raise WeightsError(f"{p}: not an .npz archive (expected the output of  regatt whiten)")
    try:
        with np.load(p, allow_pickle=False) as z:
            mean, comps = z["mean"].astype(np.float32), z["components"].astype(np.float32)
    except KeyError:
        raise WeightsError(f"{p}: expected arrays 'mean' and 'components' (a file from regatt whiten)") from None
    except Exception as exc:
        raise WeightsError(f"{p}: not a readable .npz ({exc})") from None
    return load_whitening_arrays(mean, comps, str(p), channels)


def attention_from_state(state: dict[str, torch.Tensor], channels: int, variant: str, source: str) -> Attention:
    """Build an :class:`Attention` from release-format tensors (1x1 Conv1d = linear)."""
    missing = [k for k in ATTENTION_KEYS if k not in state]
    if missing:
        raise WeightsError(f"{source}: missing attention tensors {missing}")
    extra = [k for k in state if k not in ATTENTION_KEYS]
    if extra:
        raise WeightsError(f"{source}: unexpected tensors {extra[:3]}")
    in_dim = 2 * channels if variant == "context" else channels
    expected = {
        "conv_att_1.weight": (HIDDEN, in_dim, 1),
        "conv_att_1.bias": (HIDDEN,),
        "conv_att_2.weight": (1, HIDDEN, 1),
        "conv_att_2.bias": (1,),
    }
    for key, shape in expected.items():
        if tuple(state[key].shape) != shape:
            raise WeightsError(
                f"{source}: {key} has shape {tuple(state[key].shape)}, the '{variant}' attention on "
                f"{channels} channels needs {shape}"
            )
    att = Attention(channels, variant)
    with torch.no_grad():
        att.fc1.weight.copy_(state["conv_att_1.weight"][:, :, 0])
        att.fc1.bias.copy_(state["conv_att_1.bias"])
        att.fc2.weight.copy_(state["conv_att_2.weight"][:, :, 0])
        att.fc2.bias.copy_(state["conv_att_2.bias"])
    return att


def attention_state(att: Attention) -> dict[str, torch.Tensor]:
    """The release-format state dict of ``att`` (what ``regatt train`` writes)."""
    return {
        "conv_att_1.weight": att.fc1.weight.detach().clone()[:, :, None],
        "conv_att_1.bias": att.fc1.bias.detach().clone(),
        "conv_att_2.weight": att.fc2.weight.detach().clone()[:, :, None],
        "conv_att_2.bias": att.fc2.bias.detach().clone(),
    }


def load_attention_file(path: str | Path, channels: int, variant: str) -> Attention:
    return attention_from_state(load_state_dict(path), channels, variant, str(path))
