"""ResNets: the Caffe ResNet-101 of the release and torchvision's ResNet-50/101/152.

The Caffe variant differs from torchvision's in two places: in the first bottleneck of layers
2-4 the stride 2 sits on the 1x1 ``conv1`` (not the 3x3 ``conv2``), and the stem max-pool has
padding 0 with ``ceil_mode=True``. State-dict key names are the same as torchvision's.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torchvision

from ..weights import assign_strict, load_state_dict
from .base import BackboneSpec, register

CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
TORCH_MEAN_RGB = (123.675, 116.28, 103.53)
TORCH_STD_RGB = (58.395, 57.12, 57.375)


class ResNetTrunk(nn.Module):
    """A torchvision ResNet without its head: ``(N, 3, H, W) -> (N, 2048, ~H/32, ~W/32)``.

    Keeps the torchvision key names (``conv1``, ``layer4``, ``fc``); ``fc`` is the ImageNet
    classifier, exposed as ``classifier`` and unused by ``forward``.
    """

    def __init__(self, net: torchvision.models.ResNet):
        super().__init__()
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.fc = net.fc

    @property
    def classifier(self) -> nn.Linear:
        return self.fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def caffe_resnet(depth: int = 101) -> ResNetTrunk:
    """Random-weight Caffe-style ResNet (stride on ``conv1``, ceil-mode max-pool)."""
    net = getattr(torchvision.models, f"resnet{depth}")(weights=None)
    net.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=0, ceil_mode=True)
    for layer in (net.layer2, net.layer3, net.layer4):
        block = layer[0]
        block.conv1.stride = (2, 2)
        block.conv2.stride = (1, 1)
    return ResNetTrunk(net)


def _build_caffe(weights: str | None) -> nn.Module:
    model = caffe_resnet(101)
    if weights in (None, "random"):
        if weights is None:
            raise ValueError(
                "resnet101-caffe has no downloadable weights here: pass --official DIR (the "
                "authors' release) or --weights resnet101_caffeProto.pth, or 'random' for timing"
            )
        return model
    assign_strict(model, load_state_dict(weights), str(weights))
    return model


def _torchvision_builder(depth: int):
    def build(weights: str | None) -> nn.Module:
        net = getattr(torchvision.models, f"resnet{depth}")(weights=None)
        model = ResNetTrunk(net)
        if weights == "random":
            return model
        if weights is None:
            enum = getattr(torchvision.models, f"ResNet{depth}_Weights").DEFAULT
            try:
                state = enum.get_state_dict(progress=False, check_hash=True)
            except Exception as exc:
                raise RuntimeError(
                    f"could not download torchvision's resnet{depth} ImageNet weights ({exc}); "
                    "pass --weights FILE with a local state dict"
                ) from None
        else:
            state = load_state_dict(weights)
        assign_strict(model, state, str(weights or enum.url))
        return model

    return build


register(
    BackboneSpec(
        name="resnet101-caffe",
        color="BGR",
        mean=CAFFE_MEAN_BGR,
        std=(1.0, 1.0, 1.0),
        stride=32,
        channels=2048,
        build=_build_caffe,
        description="ResNet-101, Caffe variant of the authors' release (weights from --official)",
        offline=False,
        int8_first_conv=True,
    )
)
for _depth in (18, 34, 50, 101, 152):
    register(
        BackboneSpec(
            name=f"resnet{_depth}",
            color="RGB",
            mean=TORCH_MEAN_RGB,
            std=TORCH_STD_RGB,
            stride=32,
            channels=512 if _depth < 50 else 2048,
            build=_torchvision_builder(_depth),
            description=f"torchvision ResNet-{_depth}, ImageNet weights via torchvision download or --weights",
            offline=False,
            int8_first_conv=True,
        )
    )
