"""Loading state dicts safely and strictly: never unpickle, fail loudly on any mismatch."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn


class WeightsError(ValueError):
    """A weights file is missing, unreadable, or does not fit the model."""


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a ``.pth`` state dict with ``weights_only=True`` (no code runs from the file)."""
    p = Path(path)
    if not p.is_file():
        raise WeightsError(f"{p}: weights file not found")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt, or not a plain tensor dict
        raise WeightsError(f"{p}: not a readable PyTorch state dict ({exc.__class__.__name__}: {exc})") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{p}: expected a dict of tensors (a state dict)")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def assign_strict(
    module: nn.Module, state: dict[str, torch.Tensor], source: str, optional: tuple[str, ...] = ("num_batches_tracked",)
) -> None:
    """Copy ``state`` into ``module``; every tensor of the module must be present and shaped right.

    Keys ending in one of ``optional`` may be missing (old checkpoints lack them). Extra keys
    in ``state`` are an error too, so a wrong file is never half-loaded.
    """
    own = module.state_dict()
    missing = [k for k in own if k not in state and not k.endswith(optional)]
    unexpected = [k for k in state if k not in own]
    wrong = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} tensors (e.g. {missing[:3]})")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)} tensors (e.g. {unexpected[:3]})")
    if wrong:
        problems.append(f"misshaped: {wrong[:3]}")
    if problems:
        raise WeightsError(f"{source}: does not fit the model: " + "; ".join(problems))
    merged = {k: (state[k] if k in state else v) for k, v in own.items()}
    module.load_state_dict({k: v.to(own[k].dtype) for k, v in merged.items()}, strict=True)
