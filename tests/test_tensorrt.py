"""TensorRT: version tables, the operator check on real exported graphs, trtexec commands per version,
and the builder where TensorRT imports (skipped with the reason elsewhere; never faked)."""
import shlex

import onnx
import pytest
import torch

from edgeslim.export import export_onnx
from edgeslim.export.tensorrt import (build_engine, check_ops, max_onnx_opset, parse_version, supported_ops,
                                      tensorrt_status, trtexec_command)
from tiny_models import BicubicNet, HardswishNet, LayerNormNet, TinyNet, example

# Flags NVIDIA's migration guides list as gone (8.x -> 10.x and 10.x -> 11.x), and flags TensorRT 11 made no-ops.
REMOVED_IN_10 = {"--workspace", "--explicitBatch", "--batch", "--maxBatch", "--minTiming", "--deploy", "--uff",
                 "--uffInput", "--model", "--output"}
REMOVED_IN_11 = {"--fp16", "--int8", "--best", "--bf16", "--fp8", "--int4", "--calib"}
NOOP_IN_11 = {"--useCudaGraph", "--noDataTransfers", "--useSpinWait", "--separateProfileRun"}
ADDED_IN_8_4 = {"--memPoolSize"}


def _flags(command: str) -> set[str]:
    return {a.split("=")[0] for a in shlex.split(command)[1:]}


def test_versions_and_opsets():
    assert parse_version("10.3.0.30") == (10, 3) and parse_version("8.5") == (8, 5) and parse_version((11, 1)) == (11, 1)
    for bad in ("ten", "6.0", ""):
        with pytest.raises(ValueError):
            parse_version(bad)
    # onnx-tensorrt docs/operators.md: 8.2 -> 13, 8.5 -> 17, 10.0 -> 9..20, 10.15 -> 9..24
    assert [max_onnx_opset(v) for v in ("7.1", "8.2", "8.4", "8.5", "8.6", "10.0", "10.3", "10.15", "11.1")] == \
        [11, 13, 13, 17, 17, 20, 20, 24, 24]


def test_operator_tables_follow_the_release_history():
    assert "HardSwish" not in supported_ops("8.2") and "HardSwish" in supported_ops("8.5")
    assert "LayerNormalization" not in supported_ops("8.5") and "LayerNormalization" in supported_ops("8.6")
    assert "Einsum" not in supported_ops("8.0") and "Einsum" in supported_ops("8.2")
    assert "Attention" not in supported_ops("10.13") and "Attention" in supported_ops("10.14")
    assert {"Conv", "Relu", "Add", "GlobalAveragePool", "Gemm", "QuantizeLinear"} <= supported_ops("8.2")
    assert supported_ops("8.2") < supported_ops("8.5") < supported_ops("10.3") < supported_ops("11.1")


def _graph(model, tmp_path, opset, name):
    export_onnx(model, example(side=16), tmp_path / f"{name}.onnx", opset=opset, simplify=False)
    return onnx.load(str(tmp_path / f"{name}.onnx"))


def test_check_ops_on_real_graphs(tmp_path):
    tiny = _graph(TinyNet(), tmp_path, 13, "tiny")
    report = check_ops(tiny, "8.2")
    assert report["ok"] and report["opset"] == 13 and not report["unsupported"]
    assert not check_ops(_graph(TinyNet(), tmp_path, 17, "tiny17"), "8.2")["opset_ok"]  # JetPack 4.6 needs <= 13

    hswish = _graph(HardswishNet(), tmp_path, 14, "hswish")  # ONNX HardSwish appears at opset 14
    assert "HardSwish" in {n.op_type for n in hswish.graph.node}
    assert check_ops(hswish, "8.5")["ok"]
    assert check_ops(hswish, "8.2")["unsupported"][0]["op"] == "HardSwish"

    norm = _graph(LayerNormNet(), tmp_path, 17, "norm")
    assert [u["op"] for u in check_ops(norm, "8.5")["unsupported"]] == ["LayerNormalization"]
    assert check_ops(norm, "8.6")["ok"]

    cubic = check_ops(_graph(BicubicNet(), tmp_path, 17, "cubic"), "10.3")
    assert not cubic["ok"] and cubic["restricted"][0]["op"] == "Resize" and "'cubic'" in cubic["restricted"][0]["reason"]


def test_trtexec_flags_are_valid_for_each_version():
    for version in ("7.1", "8.2", "8.5", "8.6", "10.0", "10.3", "10.13", "11.0", "11.1"):
        v = parse_version(version)
        for precision in ("fp32", "fp16", "int8"):
            cmd = trtexec_command("m.onnx", version, precision=precision, workspace_mb=512, timing_cache="m.cache")
            flags = _flags(cmd)
            assert cmd.startswith("trtexec --onnx=m.onnx --saveEngine=m.engine")
            if v >= (10, 0):
                assert not flags & REMOVED_IN_10, (version, flags & REMOVED_IN_10)
            if v >= (11, 0):
                assert not flags & (REMOVED_IN_11 | NOOP_IN_11), (version, flags & (REMOVED_IN_11 | NOOP_IN_11))
            else:
                assert ("--fp16" in flags) == (precision != "fp32") and ("--int8" in flags) == (precision == "int8")
                assert {"--useCudaGraph", "--noDataTransfers", "--useSpinWait"} <= flags  # same semantics as 11's defaults
            if v < (8, 4):
                assert "--workspace=512" in cmd and not flags & ADDED_IN_8_4
            else:
                assert "--memPoolSize=workspace:512" in cmd
            # TensorRT 7: ONNX needs explicit batch spelled out; timing caches arrived in 8.0
            assert ("--explicitBatch" in flags) == (v < (8, 0))
            assert ("--timingCacheFile=m.cache" in cmd) == (v >= (8, 0))


def test_trtexec_dla_dynamic_batch_and_refusals():
    cmd = trtexec_command("m.onnx", "10.3", precision="fp16", dla_core=1, input_shape=(1, 3, 224, 224),
                          dynamic_batch=(1, 8, 32))
    assert "--useDLACore=1" in cmd and "--allowGPUFallback" in cmd and "--useCudaGraph" not in cmd
    assert "--minShapes=input:1x3x224x224" in cmd and "--optShapes=input:8x3x224x224" in cmd
    assert "--maxShapes=input:32x3x224x224" in cmd and "--shapes=input:8x3x224x224" in cmd
    assert "--calib=c.cache" in trtexec_command("m.onnx", "8.5", precision="int8", calibration_cache="c.cache")
    with pytest.raises(ValueError, match="DLA runs FP16 or INT8"):
        trtexec_command("m.onnx", "10.3", precision="fp32", dla_core=0)
    with pytest.raises(ValueError, match="TensorRT 11 removed calibration caches"):
        trtexec_command("m.onnx", "11.1", precision="int8", calibration_cache="c.cache")
    assert "--skipInference" in trtexec_command("m.onnx", "10.3", timing=False)


def test_builder_says_why_it_did_not_build(tmp_path):
    ok, reason, _ = tensorrt_status()
    if ok:
        pytest.skip("TensorRT and a GPU are present: test_engine_builds_where_tensorrt_runs covers the builder")
    export_onnx(TinyNet(), example(), tmp_path / "t.onnx", opset=17, simplify=False)
    result = build_engine(str(tmp_path / "t.onnx"), str(tmp_path / "t.engine"))
    assert not result.built and result.reason == reason and "tensorrt" in reason.lower()
    assert not (tmp_path / "t.engine").exists()


@pytest.mark.gpu
def test_engine_builds_where_tensorrt_runs(tmp_path):
    ok, reason, trt = tensorrt_status()
    if not ok:
        pytest.skip(reason)
    export_onnx(TinyNet(), example(), tmp_path / "t.onnx", opset=min(17, max_onnx_opset(trt.__version__)))
    calib = [example().numpy() for _ in range(8)]
    for precision in ("fp32", "fp16", "int8"):
        engine = tmp_path / f"t.{precision}.engine"
        result = build_engine(str(tmp_path / "t.onnx"), str(engine), precision=precision, workspace_mb=256,
                              timing_cache=str(tmp_path / "t.cache"), calibration_batches=calib if
                              precision == "int8" and parse_version(trt.__version__) < (11, 0) else None)
        assert result.built, result.reason
        assert engine.stat().st_size > 0 and (tmp_path / "t.cache").exists()
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    assert runtime.deserialize_cuda_engine((tmp_path / "t.fp16.engine").read_bytes()) is not None
    assert torch.cuda.is_available()
