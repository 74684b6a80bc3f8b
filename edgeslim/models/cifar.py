"""CIFAR-style networks used by the seed theses (32x32 inputs).

* ``CifarResNet`` -- He et al. (2016) ResNet-20/32/56/110 with parameter-free option-A shortcuts,
  as in the MINT/SNACS ResNet-56 (specs/seed-ganesh.md section 1.5): conv (no bias) -> BN -> ReLU,
  three stages of 16/32/64 channels, global average pooling, one linear classifier.
* ``CifarVGG16`` -- the BN VGG-16 of the MINT/SNACS CIFAR experiments: 13 conv-BN-ReLU layers with
  five 2x2 max-pools, then linear1 (512->512) + BN1d + ReLU and a 512->classes classifier.
* ``MCifarNet`` -- the 8-conv "M-CifarNet" of the FBS/CondConv experiments
  (specs/seed-raju.md A.5): 174.30 M MACs at 32x32, swish activations.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class PadShortcut(nn.Module):
    """Option-A shortcut: subsample spatially and zero-pad channels (no parameters).

    The channel layout of the output is ``[pad_front zeros, input channels, pad_back zeros]``;
    the pad sizes are attributes so that the slimming engine can rewrite them after surgery.
    """

    def __init__(self, stride: int, pad_front: int, pad_back: int):
        super().__init__()
        self.stride = stride
        self.pad_front = pad_front
        self.pad_back = pad_back

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride != 1:
            x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad_front, self.pad_back))

    def extra_repr(self) -> str:
        return f"stride={self.stride}, pad_front={self.pad_front}, pad_back={self.pad_back}"


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        if stride != 1 or in_planes != planes:
            extra = planes - in_planes
            self.shortcut: nn.Module = PadShortcut(stride, extra // 2, extra - extra // 2)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, depth: int = 56, num_classes: int = 10, in_channels: int = 3, width: int = 16):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 (20, 32, 44, 56, 110), got {depth}")
        n = (depth - 2) // 6
        self.depth = depth
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        planes = [width, 2 * width, 4 * width]
        in_planes = width
        stages = []
        for i, p in enumerate(planes):
            blocks = []
            for b in range(n):
                stride = 2 if (i > 0 and b == 0) else 1
                blocks.append(BasicBlock(in_planes, p, stride))
                in_planes = p
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


VGG16_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


class CifarVGG16(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for v in VGG16_CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(c, v, 3, 1, 1), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
                c = v
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(inplace=True), nn.Linear(512, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


# (out_channels, stride, padding) of the eight 3x3 convolutions; see specs/seed-raju.md A.5.
MCIFARNET_CFG = [(64, 1, 0), (64, 1, 1), (128, 2, 1), (128, 1, 1), (128, 1, 1), (192, 2, 1), (192, 1, 1), (192, 1, 1)]


class MCifarNet(nn.Module):
    """M-CifarNet; ``width`` scales every conv (ceil), which gives the SCP baselines of the thesis."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: float = 1.0):
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for out, stride, pad in MCIFARNET_CFG:
            out = max(1, math.ceil(round(out * width, 6)))  # ceil, robust to float noise
            layers += [nn.Conv2d(c, out, 3, stride, pad, bias=False), nn.BatchNorm2d(out), nn.SiLU(inplace=True)]
            c = out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))
