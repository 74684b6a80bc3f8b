"""Small real models for the export tests (fast to export; also usable as ``tests/tiny_models.py:build``)."""
import torch
import torch.nn.functional as F
from torch import nn


class TinyNet(nn.Module):
    """Stem, one residual block, a strided conv, global pooling and a classifier: the shapes of a CIFAR ResNet."""

    def __init__(self, num_classes: int = 10, width: int = 16):
        super().__init__()
        w = width
        self.stem = nn.Sequential(nn.Conv2d(3, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU())
        self.conv1 = nn.Sequential(nn.Conv2d(w, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU())
        self.conv2 = nn.Sequential(nn.Conv2d(w, w, 3, padding=1, bias=False), nn.BatchNorm2d(w))
        self.down = nn.Sequential(nn.Conv2d(w, 2 * w, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(2 * w), nn.ReLU())
        self.fc = nn.Linear(2 * w, num_classes)

    def forward(self, x):
        x = self.stem(x)
        x = F.relu(x + self.conv2(self.conv1(x)))
        x = self.down(x)
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class AuxNet(TinyNet):
    """An Inception-style auxiliary head: trained with, skipped in eval mode, so it is not in the graph."""

    def __init__(self):
        super().__init__()
        self.aux = nn.Conv2d(16, 5, 1)

    def forward(self, x):
        out = super().forward(x)
        return (out, self.aux(self.stem(x)).mean()) if self.training else out


def build(num_classes: int = 10, width: int = 16) -> nn.Module:
    return TinyNet(num_classes, width)


class HardswishNet(nn.Module):
    """MobileNetV3's activation: ONNX HardSwish from opset 14, decomposed below."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.act = nn.Hardswish()

    def forward(self, x):
        return self.act(self.conv(x))


class LayerNormNet(nn.Module):
    """A ConvNeXt-style channel LayerNorm: ONNX LayerNormalization from opset 17 (TensorRT 8.6+)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.norm = nn.LayerNorm(8)

    def forward(self, x):
        return self.norm(self.conv(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class BicubicNet(nn.Module):
    """Bicubic upsampling: ONNX Resize in cubic mode, which TensorRT does not implement."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        return F.interpolate(self.conv(x), scale_factor=2, mode="bicubic", align_corners=False)


class BranchNet(nn.Module):
    """Data-dependent control flow: a traced export freezes the branch the example input took.

    Exported with an all-ones example it keeps the first branch; random normal inputs (mean near 0)
    take the second in PyTorch, so the graph disagrees with the model on every parity trial."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        if x.mean() > 0.5:
            return y * 2.0
        return -y


def example(batch: int = 1, side: int = 32) -> torch.Tensor:
    return torch.randn(batch, 3, side, side)
