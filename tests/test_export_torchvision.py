"""Real torchvision models through export_for_device: parity in ONNX Runtime and a clean TensorRT check.

The default run covers two small architectures at 64x64; ``-m slow`` covers a broad subset at their
natural resolution (benchmarks/export_all.py runs all of them)."""
import pytest
import torch

from edgeslim.export import export_for_device
from edgeslim.models import build_model, default_input_shape


def _export(name, device, tmp_path, side=None):
    torch.manual_seed(0)
    spec = f"torchvision:{name}"
    model = build_model(spec).eval()
    shape = default_input_shape(spec) if side is None else (1, 3, side, side)
    return export_for_device(model, torch.randn(shape), device, tmp_path / f"{name}.onnx", build=False, progress=False)


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small"])
def test_small_torchvision_models_export_for_jetpack_5(name, tmp_path):
    r = _export(name, "jetson-xavier-nx", tmp_path, side=64)
    assert r["onnx"]["opset"] == 17 and r["onnx"]["max_rel_diff"] < 1e-4 and r["onnx"]["simplified"]
    assert r["tensorrt_ops"]["ok"], r["tensorrt_ops"]
    assert r["channels"]["matches_model"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["efficientnet_b0", "shufflenet_v2_x1_0", "convnext_tiny", "regnet_y_400mf",
                                  "densenet121", "googlenet", "inception_v3", "squeezenet1_1", "vit_b_16", "swin_t",
                                  "maxvit_t", "mnasnet1_0", "resnext50_32x4d", "vgg11_bn"])
@pytest.mark.parametrize("device", ["jetson-nano", "jetson-orin-nano-8gb"])
def test_torchvision_models_export_with_parity(name, device, tmp_path):
    r = _export(name, device, tmp_path)
    assert r["onnx"]["max_rel_diff"] < 1e-4 and r["channels"]["matches_model"]
    assert r["onnx"]["opset"] == (13 if device == "jetson-nano" else 20)
