"""The registered ResNets: MONAI's 2D / 3D ResNet-18 and -50, and factorised 3D ResNet-18s.

``resnet18_2p1d`` factorises every 3x3x3 conv into in-plane (3,3,1) then through-plane
(1,1,3) (Tran et al. 2018); ``resnet18_mc`` has a 3D stem and layer1, then in-plane
layers 2-4 that keep Z. Hand-written: MONAI has no factorised ResNet, and torchvision's
video ResNets assume 3-channel video stems and would pin a torchvision version to torch.
Every builder takes ``in_channels``, ``spatial_dims``, ``stem_stride`` and returns
``(backbone, F)``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from monai.networks import nets
from torch import nn

from medres.models.registry import STEMS, register_model

Stride = tuple[int, int, int]
ConvFactory = Callable[[int, int, Stride], nn.Module]  # (in, out, stride) -> conv
Stage = tuple[ConvFactory, Stride]  # the conv of a stage and its first block's stride


def _monai_resnet(factory, in_channels: int, spatial_dims: int, stem_stride: int) -> nn.Module:
    kernel, stride, max_pool = STEMS[stem_stride]
    net = factory(
        spatial_dims=spatial_dims,
        n_input_channels=in_channels,
        conv1_t_size=kernel,
        conv1_t_stride=stride,
        no_max_pool=not max_pool,
        shortcut_type="B",  # 1x1 conv + BN shortcut, as torchvision (downsample.0/.1)
        bias_downsample=False,  # torchvision's shortcut conv has no bias
        feed_forward=False,
    )
    net.fc = nn.Identity()
    return net


@register_model
def resnet18(*, in_channels: int, spatial_dims: int, stem_stride: int) -> tuple[nn.Module, int]:
    """MONAI ResNet-18 (BasicBlock, [2, 2, 2, 2]); F = 512."""
    return _monai_resnet(nets.resnet18, in_channels, spatial_dims, stem_stride), 512


@register_model
def resnet50(*, in_channels: int, spatial_dims: int, stem_stride: int) -> tuple[nn.Module, int]:
    """MONAI ResNet-50 (Bottleneck, [3, 4, 6, 3]); F = 2048."""
    return _monai_resnet(nets.resnet50, in_channels, spatial_dims, stem_stride), 2048


def _conv3x3x3(cin: int, cout: int, stride: Stride, z: int = 3) -> nn.Module:
    """Conv with kernel (3, 3, z): full 3D, or in-plane only (mixes X and Y) when z = 1."""
    return nn.Conv3d(cin, cout, (3, 3, z), stride=stride, padding=(1, 1, z // 2), bias=False)


def _conv3x3x1(cin: int, cout: int, stride: Stride) -> nn.Module:
    return _conv3x3x3(cin, cout, stride, z=1)


def _conv2plus1d(cin: int, cout: int, stride: Stride) -> nn.Module:
    """(2+1)D conv: in-plane (3,3,1) -> BN -> ReLU -> through-plane (1,1,3).

    Mid channels M = 27·cin·cout // (9·cin + 3·cout) give the 3x3x3 conv's parameters.
    """
    mid = (27 * cin * cout) // (9 * cin + 3 * cout)
    sx, sy, sz = stride
    return nn.Sequential(
        nn.Conv3d(cin, mid, (3, 3, 1), stride=(sx, sy, 1), padding=(1, 1, 0), bias=False),
        nn.BatchNorm3d(mid),
        nn.ReLU(inplace=True),
        nn.Conv3d(mid, cout, (1, 1, 3), stride=(1, 1, sz), padding=(0, 0, 1), bias=False),
    )


class _BasicBlock3d(nn.Module):
    """ResNet basic block on (N, C, X, Y, Z); ``conv`` builds its two convolutions."""

    def __init__(self, cin: int, cout: int, conv: ConvFactory, stride: Stride):
        super().__init__()
        self.conv1 = conv(cin, cout, stride)
        self.bn1 = nn.BatchNorm3d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv(cout, cout, (1, 1, 1))
        self.bn2 = nn.BatchNorm3d(cout)
        self.downsample = None
        if stride != (1, 1, 1) or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv3d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm3d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)


class _ResNet18_3d(nn.Module):
    """ResNet-18 layout on (N, C, X, Y, Z) -> (N, 512), one conv factory per stage.

    Module names follow torchvision (conv1, bn1, layer1.0.conv1, ..., downsample.0).
    """

    def __init__(self, in_channels: int, stem_stride: int, stages: list[Stage]):
        super().__init__()
        kernel, stride, max_pool = STEMS[stem_stride]
        self.conv1 = nn.Conv3d(in_channels, 64, kernel, stride, padding=kernel // 2, bias=False)
        self.bn1 = nn.BatchNorm3d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool3d(3, stride=2, padding=1) if max_pool else nn.Identity()
        layers, cin = [], 64
        for (conv, s), width in zip(stages, (64, 128, 256, 512), strict=True):
            blocks = [
                _BasicBlock3d(cin, width, conv, s),
                _BasicBlock3d(width, width, conv, (1, 1, 1)),
            ]
            layers.append(nn.Sequential(*blocks))
            cin = width
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.avgpool = nn.AdaptiveAvgPool3d(1)
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm3d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)


@register_model(spatial_dims=(3,))
def resnet18_2p1d(*, in_channels: int, spatial_dims: int, stem_stride: int):
    """ResNet-18 with (2+1)D convs (R(2+1)D-18, full 3D stem); F = 512."""
    first, down = (_conv2plus1d, (1, 1, 1)), (_conv2plus1d, (2, 2, 2))
    return _ResNet18_3d(in_channels, stem_stride, [first, down, down, down]), 512


@register_model(spatial_dims=(3,))
def resnet18_mc(*, in_channels: int, spatial_dims: int, stem_stride: int):
    """Mixed-convolution ResNet-18 (MC3-18): 3D stem + layer1, in-plane layers 2-4; F = 512."""
    first, down = (_conv3x3x3, (1, 1, 1)), (_conv3x3x1, (2, 2, 1))
    return _ResNet18_3d(in_channels, stem_stride, [first, down, down, down]), 512
