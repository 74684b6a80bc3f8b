"""Real torchvision models, slimmed by the engine, through export_for_device: parity in ONNX Runtime,
the slim channel counts in the graph, and a clean TensorRT operator check.

The default run covers MobileNetV3 and SqueezeNet at 64x64; ``-m slow`` a broad subset at their natural
resolution, dense and slim (benchmarks/export_all.py runs all of them)."""
import pytest
import torch

import edgeslim
from edgeslim.export import export_for_device
from edgeslim.models import build_model, default_input_shape


def _export(name, device, tmp_path, side=None, slim=True):
    torch.manual_seed(0)
    spec = f"torchvision:{name}"
    model = build_model(spec).eval()
    x = torch.randn(default_input_shape(spec) if side is None else (1, 3, side, side))
    dense = None
    if slim:
        dense, model = model, edgeslim.prune(model, x, method="l1", target={"macs": 0.5}, progress=False).model
    return export_for_device(model, x, device, tmp_path / f"{name}.onnx", build=False, dense_model=dense,
                             progress=False)


def test_slim_mobilenet_v3_exports_for_jetpack_5(tmp_path):
    # depthwise convolutions, squeeze-excitation and HardSwish: the channel coupling that breaks pruned exports
    r = _export("mobilenet_v3_small", "jetson-xavier-nx", tmp_path, side=64)
    assert r["onnx"]["opset"] == 17 and r["onnx"]["max_rel_diff"] < 1e-4 and r["onnx"]["simplified"]
    assert r["tensorrt_ops"]["ok"], r["tensorrt_ops"]
    c = r["channels"]
    assert c["matches_model"] and c["differs_from_dense"] and c["graph_out_channels"] < c["dense_out_channels"]


def test_slim_squeezenet_exports_for_jetpack_4(tmp_path):
    # Fire modules concatenate two expand branches: the slim widths must survive the concat at opset 13
    r = _export("squeezenet1_1", "jetson-nano", tmp_path, side=64)
    assert r["onnx"]["opset"] == 13 and r["onnx"]["exporter"] == "torchscript" and r["onnx"]["max_rel_diff"] < 1e-4
    assert r["tensorrt_ops"]["ok"] and "--workspace=" in r["trtexec"]
    c = r["channels"]
    assert c["matches_model"] and c["differs_from_dense"] and c["graph_out_channels"] < c["dense_out_channels"]


SUBSET = ["resnet18", "efficientnet_b0", "shufflenet_v2_x1_0", "convnext_tiny", "regnet_y_400mf", "densenet121", "googlenet",
          "inception_v3", "squeezenet1_1", "vit_b_16", "swin_t", "maxvit_t", "mnasnet1_0", "resnext50_32x4d", "vgg11_bn"]


@pytest.mark.slow
@pytest.mark.parametrize("name", SUBSET)
@pytest.mark.parametrize("device", ["jetson-nano", "jetson-orin-nano-8gb"])
def test_torchvision_models_export_with_parity(name, device, tmp_path):
    r = _export(name, device, tmp_path, slim=False)
    assert r["onnx"]["max_rel_diff"] < 1e-4 and r["channels"]["matches_model"]
    assert r["onnx"]["opset"] == (13 if device == "jetson-nano" else 20)


@pytest.mark.slow
@pytest.mark.parametrize("name", SUBSET)
def test_slim_torchvision_models_export_with_parity(name, tmp_path):
    try:
        r = _export(name, "jetson-orin-nano-8gb", tmp_path)
    except edgeslim.UnsupportedOpError as exc:
        pytest.skip(f"the engine does not slim {name}: {exc}")
    assert r["onnx"]["max_rel_diff"] < 1e-4 and r["channels"]["matches_model"] and r["channels"]["differs_from_dense"]
