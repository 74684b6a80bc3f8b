"""Counting agrees with the published figures and never hides an op."""
import pytest
import torch
import torchvision
from torch import nn

import edgeslim
from edgeslim.models import build_model


# Published GMACs, compared at the precision they are published with (two decimals).
@pytest.mark.parametrize("name, low, high", [
    ("resnet50", 4.09, 4.12),
    ("resnet18", 1.81, 1.82),      # 1.82 G from ptflops, which adds BN/ReLU; conv + fc alone is 1.814 G
    ("mobilenet_v2", 0.30, 0.32),
    ("vgg16", 15.47, 15.50),
])
def test_torchvision_macs_match_published(name, low, high):
    cost = edgeslim.count(torchvision.models.get_model(name), torch.randn(1, 3, 224, 224))
    assert low <= round(cost.macs / 1e9, 2) <= high
    assert cost.flops == 2 * cost.macs


def test_vit_attention_is_counted():
    # torchvision lists ViT-B/16 at 17.56 GFLOPS (multiply-adds); the fused attention op must be counted.
    cost = edgeslim.count(torchvision.models.vit_b_16(), torch.randn(1, 3, 224, 224))
    assert cost.macs == pytest.approx(17.56e9, rel=0.01)
    assert "aten._native_multi_head_attention" in cost.counted_ops


def test_cifar_resnet56_and_mcifarnet():
    r56 = edgeslim.count(build_model("zoo:resnet56"), torch.randn(1, 3, 32, 32))
    assert r56.macs == pytest.approx(125.5e6, rel=0.002)
    assert r56.params == pytest.approx(0.85e6, rel=0.01)
    mcifar = edgeslim.count(build_model("zoo:mcifarnet"), torch.randn(1, 3, 32, 32))
    assert round(mcifar.macs / 1e6, 1) == 174.3  # Table 3.1 of the Raju thesis, d = 1.0


def test_uncounted_ops_are_listed_not_hidden():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
    cost = edgeslim.count(model, torch.randn(2, 3, 10, 10))
    assert cost.macs == 2 * 8 * 3 * 9 * 8 * 8
    ops = {u["op"] for u in cost.uncounted_ops}
    assert any("batch_norm" in op for op in ops)
    assert any("relu" in op for op in ops)
    relu = next(u for u in cost.uncounted_ops if "relu" in u["op"])
    assert relu["calls"] == 1 and relu["elements"] == 2 * 8 * 8 * 8


def test_peak_activation_is_measured():
    # conv output (4 x 16 x 30 x 30 floats) is the largest live tensor; the input is not counted.
    model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1))
    cost = edgeslim.count(model, torch.randn(4, 3, 32, 32))
    conv_out = 4 * 16 * 30 * 30 * 4
    assert conv_out <= cost.peak_activation_bytes < conv_out + 4096
    assert cost.param_bytes == 4 * (16 * 3 * 9 + 16)


def test_per_layer_table_sums_to_total():
    cost = edgeslim.count(build_model("zoo:resnet20"), torch.randn(1, 3, 32, 32))
    assert sum(layer["macs"] for layer in cost.layers) == cost.macs
    fc = next(layer for layer in cost.layers if layer["name"] == "fc")
    assert fc["macs"] == 64 * 10 and fc["output_shape"] == [1, 10]
