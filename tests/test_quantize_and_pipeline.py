"""INT8 (ONNX Runtime on CPUs, explicit Q/DQ for TensorRT) on a model trained on the real digits, and
export_for_device end to end."""
import json

import onnx
import pytest
import torch

from edgeslim.data import load_data
from edgeslim.export import export_for_device, export_onnx
from edgeslim.export.quantize import calibration_arrays, compare_onnx, quantize_int8
from edgeslim.export.tensorrt import check_ops
from edgeslim.training import TrainConfig, evaluate, fit
from tiny_models import TinyNet, example


@pytest.fixture(scope="module")
def trained():
    """TinyNet trained on digits at 16x16 (about 3 s on a quiet 2-core machine; ~97 % test accuracy)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small batches: one thread is faster and fair to a shared machine
    try:
        torch.manual_seed(0)
        data = load_data("digits", image_size=16)
        model = TinyNet()
        fit(model, data.train, data.test, TrainConfig(epochs=4, lr=0.1, batch_size=32), progress=False)
    finally:
        torch.set_num_threads(threads)
    model.eval()
    return model, data, evaluate(model, data.test)["accuracy"]


@pytest.fixture(scope="module")
def fp32_graph(trained, tmp_path_factory):
    path = tmp_path_factory.mktemp("q") / "tiny.onnx"
    export_onnx(trained[0], example(side=16), path, opset=17)
    return path


def test_cpu_int8_keeps_the_accuracy(trained, fp32_graph):
    model, data, accuracy = trained
    assert accuracy > 90
    q = quantize_int8(fp32_graph, fp32_graph.with_name("cpu.int8.onnx"), calibration_arrays(data.train_plain, 128))
    assert q.target == "cpu" and q.activation_type == "QUInt8" and q.quantize_nodes > 10 and q.calibration_samples == 128
    cmp = compare_onnx(fp32_graph, q.path, data.test, latency_runs=30)
    assert cmp["samples"] == 360 and cmp["accuracy_fp32"] == pytest.approx(accuracy, abs=0.5)
    assert abs(cmp["accuracy_change"]) <= 3 and cmp["top1_agreement"] >= 95
    assert cmp["int8_speedup"] > 0 and cmp["latency_ms"]["int8"]["runs"] == 30


def test_tensorrt_int8_graph_is_symmetric_and_checks_clean(trained, fp32_graph):
    _, data, _ = trained
    calib = calibration_arrays(data.train_plain, 64)
    trt_q = quantize_int8(fp32_graph, fp32_graph.with_name("trt.int8.onnx"), calib, target="tensorrt")
    cpu_q = quantize_int8(fp32_graph, fp32_graph.with_name("cpu2.int8.onnx"), calib, target="cpu")
    assert trt_q.activation_type == "QInt8"
    assert check_ops(onnx.load(trt_q.path), "10.3")["ok"] and check_ops(onnx.load(trt_q.path), "8.5")["ok"]
    flagged = check_ops(onnx.load(cpu_q.path), "10.3")["restricted"]
    assert flagged and all("zero point" in r["reason"] for r in flagged)  # uint8 asymmetric: not for TensorRT
    assert abs(compare_onnx(fp32_graph, trt_q.path, data.test)["accuracy_change"]) <= 3


def test_export_for_cpu_with_int8(trained, tmp_path):
    model, data, _ = trained
    r = export_for_device(model, example(side=16), "cpu", tmp_path / "m.onnx", precision="int8",
                          calibration=data.train_plain, eval_data=data.test, calibration_samples=64,
                          latency_runs=10, progress=False)
    assert r["onnx"]["opset"] == 20 and r["onnx"]["max_rel_diff"] < 1e-4 and r["channels"]["matches_model"]
    assert r["trtexec"] is None and r["tensorrt"] == {"built": False, "reason": "cpu runs ONNX Runtime, not TensorRT"}
    q = r["int8"]
    assert q["target"] == "cpu" and abs(q["accuracy_change"]) <= 3 and q["agreement"]["cosine_mean"] > 0.99
    assert r["estimate"]["precision"] == "int8" and r["estimate"]["memory"]["fits"]
    saved = json.loads((tmp_path / "m.export.json").read_text())
    assert saved["int8"]["accuracy_int8"] == q["accuracy_int8"]


def test_export_for_jetson_with_int8_uses_explicit_quantization(trained, tmp_path):
    model, data, _ = trained
    r = export_for_device(model, example(side=16), "jetson-orin-nx-16gb", tmp_path / "m.onnx", precision="int8",
                          calibration=data.train_plain, calibration_samples=32, dla_core=1, progress=False)
    assert r["int8"]["target"] == "tensorrt" and r["tensorrt_ops"]["ok"]
    cmd = r["trtexec"]
    assert "--onnx=m.int8.onnx" in cmd and "--int8" in cmd and "--fp16" in cmd and "--useDLACore=1" in cmd
    assert "--memPoolSize=workspace:1024" in cmd and not r["tensorrt"]["built"]
    assert "accuracy change was not measured" in " ".join(r["notes"])


def test_tensorrt_11_reads_an_fp16_graph(trained, tmp_path):
    r = export_for_device(trained[0], example(side=16), "rtx-4090", tmp_path / "m.onnx", tensorrt="11.1",
                          build=False, progress=False)
    assert r["precision"] == "fp16" and r["fp16_onnx"].endswith("m.fp16.onnx")
    assert "--onnx=m.fp16.onnx" in r["trtexec"] and "--fp16" not in r["trtexec"]
    assert r["tensorrt_ops"]["ok"] and r["tensorrt"]["reason"] == "not requested (--format onnx)"
    fp16 = onnx.load(r["fp16_onnx"])
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in fp16.graph.initializer)


@pytest.mark.parametrize("device, kwargs, message", [
    ("jetson-nano", {"precision": "int8", "calibration": [torch.zeros(3, 16, 16)]}, "no fast int8"),
    ("cpu", {"precision": "fp16"}, "runs ONNX Runtime in fp32 or int8"),
    ("jetson-orin-nano-8gb", {"precision": "int8"}, "INT8 needs calibration data"),
    ("jetson-orin-nano-8gb", {"dla_core": 0}, "has no DLA"),
    ("jetson-agx-orin-64gb", {"dla_core": 2}, r"--dla-core must be in 0\.\.1"),
    ("jetson-xavier-nx", {"dla_core": 0, "precision": "fp32"}, "DLA runs FP16 or INT8"),
    ("jetson-xavier-nx", {"opset": 18}, "above what jetson-xavier-nx"),
])
def test_impossible_requests_are_refused_before_any_work(tmp_path, device, kwargs, message):
    with pytest.raises(ValueError, match=message):
        export_for_device(TinyNet(), example(), device, tmp_path / "m.onnx", progress=False, **kwargs)
    assert not list(tmp_path.iterdir())
