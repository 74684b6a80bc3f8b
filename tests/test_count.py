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


@pytest.mark.parametrize("name, shape", [("zoo:resnet20", (1, 3, 32, 32)), ("torchvision:mobilenet_v2", (1, 3, 64, 64)),
                                         ("torchvision:resnet18", (2, 3, 64, 64))])
def test_onnx_graph_macs_equal_the_pytorch_count(tmp_path, name, shape):
    """The ONNX counter (for models that exist only as ONNX files) agrees with count() to the MAC:
    grouped/depthwise convolutions, Gemm classifiers, batch 2."""
    from edgeslim.export import export_onnx
    from edgeslim.metrics.onnx_count import count_onnx

    model, x = build_model(name).eval(), torch.randn(shape)
    path = export_onnx(model, x, tmp_path / "m.onnx", simplify=False).path
    counted = count_onnx(path)
    assert counted.macs == edgeslim.count(model, x).macs and counted.unknown == [] and counted.counted_nodes > 0


def test_onnx_macs_of_transposed_conv_and_dynamic_batch(tmp_path):
    from edgeslim.export import export_onnx
    from edgeslim.metrics.onnx_count import count_onnx

    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ConvTranspose2d(8, 4, 2, stride=2, groups=2),
                          nn.Flatten(), nn.Linear(4 * 16 * 16, 10)).eval()
    path = export_onnx(model, torch.randn(1, 3, 8, 8), tmp_path / "m.onnx", simplify=False, dynamic_batch=True).path
    expected = edgeslim.count(model, torch.randn(3, 3, 8, 8)).macs
    assert expected == 3 * (8 * 8 * 8 * 27 + 8 * 8 * 8 * 2 * 2 * 2 + 1024 * 10)
    assert count_onnx(path, (3, 3, 8, 8)).macs == expected  # the dynamic batch axis taken from input_shape
    assert count_onnx(path).macs == expected // 3  # ... or 1
