"""``tiny``: a small random-weight convolutional backbone (stride 32, 32 channels) for tests and
smoke runs. Its ONNX export is tens of KB, so the runtime's tests can use a committed model
file instead of exporting one with PyTorch (``tests/fixtures/tiny.onnx``, see its README)."""

from __future__ import annotations

import torch
import torch.nn as nn

from .base import BackboneSpec, register

#: output channels of the five stride-2 stages
WIDTHS = (8, 16, 16, 32, 32)


def _tiny() -> nn.Module:
    layers: list[nn.Module] = []
    cin = 3
    for cout in WIDTHS:
        layers += [nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.ReLU(inplace=True)]
        cin = cout
    return nn.Sequential(*layers)


def _build(weights: str | None) -> nn.Module:
    """Seeded random weights (seed 0, the global RNG left as it was) or a state-dict file."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = _tiny()
    if weights not in (None, "random"):
        model.load_state_dict(torch.load(str(weights), map_location="cpu", weights_only=True))
    return model


register(
    BackboneSpec(
        name="tiny",
        color="RGB",
        mean=(123.675, 116.28, 103.53),
        std=(58.395, 57.12, 57.375),
        stride=32,
        channels=WIDTHS[-1],
        build=_build,
        description="five 3x3 stride-2 convolutions, 32 channels, seeded random weights (tests, smoke runs)",
        offline=True,
    )
)
