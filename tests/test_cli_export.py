"""`edgeslim export`, `edgeslim devices` and `inspect --device` as INTERFACE.md describes them."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from edgeslim.cli import export as export_cli
from edgeslim.cli import main
from edgeslim.models import save_checkpoint
from tiny_models import TinyNet

TINY = f"{Path(__file__).with_name('tiny_models.py')}:build"


def run_json(capsys, *args) -> tuple[int, dict]:
    code = main([*args, "--json"])
    return code, json.loads(capsys.readouterr().out)


def test_devices_json_has_the_interface_keys():
    proc = subprocess.run([sys.executable, "-m", "edgeslim", "devices", "--json"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    devices = json.loads(proc.stdout)["devices"]
    assert len(devices) >= 16 and devices[-1]["name"] == "cpu"
    for d in devices:
        assert {"name", "kind", "peak_tflops", "mem_bandwidth_gbs", "memory_gb", "tensorrt", "max_onnx_opset"} <= set(d)
        assert {"fp32", "fp16", "int8"} <= set(d["peak_tflops"])


def test_export_json_for_a_jetson(capsys, tmp_path):
    code, r = run_json(capsys, "export", TINY, "--input", "1x3x32x32", "--device", "jetson-orin-nano-8gb",
                       "-o", str(tmp_path / "m.onnx"), "--no-progress")
    assert code == 0
    assert {"path", "opset", "nodes_before", "nodes_after", "max_abs_diff"} <= set(r["onnx"])
    assert r["onnx"]["opset"] == 20 and r["onnx"]["max_abs_diff"] < 1e-3 and Path(r["onnx"]["path"]).exists()
    assert isinstance(r["trtexec"], str) and r["trtexec"].startswith("trtexec --onnx=m.onnx")
    assert r["tensorrt"]["built"] is False and r["tensorrt"]["reason"]
    assert r["tensorrt_ops"]["ok"] and r["channels"]["matches_model"] and r["input_shape"] == [1, 3, 32, 32]
    export_cli.render(r)  # the human summary of the same result
    text = capsys.readouterr().out
    assert "trtexec   trtexec --onnx=m.onnx" in text and "engine    not built:" in text


def test_export_a_checkpoint_for_jetpack_4(capsys, tmp_path):
    ckpt = save_checkpoint(tmp_path / "model.pt", TinyNet(width=8), TINY, {"width": 8}, (1, 3, 32, 32))
    code, r = run_json(capsys, "export", str(ckpt), "--device", "jetson-nano", "-o", str(tmp_path / "m.onnx"),
                       "--format", "onnx", "--simplifier", "onnxsim", "--no-progress")
    assert code == 0 and r["onnx"]["opset"] == 13 and r["onnx"]["exporter"] == "torchscript"
    assert r["channels"]["graph_out_channels"] == 8 + 8 + 8 + 16
    assert "--workspace=512" in r["trtexec"] and r["tensorrt"]["reason"] == "not requested (--format onnx)"


def test_export_a_slim_checkpoint_written_by_the_prune_command(capsys, tmp_path):
    code, pruned = run_json(capsys, "prune", TINY, "--input", "1x3x32x32", "--method", "l1", "--target", "macs=0.5",
                            "-o", str(tmp_path / "run"))
    assert code == 0 and pruned["plan"]
    code, r = run_json(capsys, "export", pruned["checkpoint"], "--device", "jetson-agx-orin-64gb",
                       "-o", str(tmp_path / "s.onnx"), "--no-progress")
    c = r["channels"]
    assert code == 0 and c["matches_model"] and c["differs_from_dense"] and c["model_differs_from_dense"]
    assert c["graph_out_channels"] < c["dense_out_channels"] == 16 * 3 + 32
    assert r["onnx"]["max_rel_diff"] < 1e-4 and r["onnx"]["opset"] == 20 and r["input_shape"] == [1, 3, 32, 32]


def test_export_int8_for_the_cpu(capsys, tmp_path):
    code, r = run_json(capsys, "export", TINY, "--device", "cpu", "--int8", "--data", "digits", "-o",
                       str(tmp_path / "m.onnx"), "--calib-samples", "40", "--eval-samples", "60", "--bench-runs", "10",
                       "--no-progress")
    assert code == 0 and r["precision"] == "int8" and r["trtexec"] is None
    q = r["int8"]
    assert q["samples"] == 60 and q["calibration_samples"] == 40 and 0 <= q["accuracy_int8"] <= 100
    assert "int8_speedup" in q and Path(q["path"]).exists()
    export_cli.render(r)
    assert "x faster than FP32 in ONNX Runtime here" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["--device", "jetson-orin-mega"], "unknown device 'jetson-orin-mega'; known devices: jetson-nano"),
    (["--device", "cpu", "--int8"], "INT8 needs calibration data"),
    (["--device", "cpu", "--format", "engine"], "--format must be onnx or onnx,trt"),
])
def test_export_errors_are_one_json_object(capsys, tmp_path, args, message):
    code, r = run_json(capsys, "export", TINY, "--input", "1x3x32x32", "-o", str(tmp_path / "m.onnx"),
                       "--no-progress", *args)
    assert code == 2 and message in r["error"]


def test_inspect_with_a_device_estimates_latency_and_memory(capsys):
    code, r = run_json(capsys, "inspect", TINY, "--input", "1x3x32x32", "--device", "jetson-orin-nano-4gb")
    e = r["estimate"]
    assert code == 0 and e["device"] == "jetson-orin-nano-4gb" and e["precision"] == "fp16"
    assert e["latency_ms"] > 0 and len(e["layers"]) == 5 and e["memory"]["fits"]
    assert e["memory"]["weights_bytes"] == 2 * r["params"]
