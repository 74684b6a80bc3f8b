import numpy as np
import onnx
import pytest
import torch

from edgeslim.devices import get_device
from edgeslim.export import check_channels, choose_opset, export_onnx
from edgeslim.export.onnx import ort_session
from tiny_models import AuxNet, BranchNet, TinyNet, example


def _opset(path) -> int:
    return next(o.version for o in onnx.load(str(path), load_external_data=False).opset_import if o.domain == "")


def test_opset_comes_from_the_device():
    assert choose_opset(get_device("jetson-nano")) == 13          # JetPack 4.6 / TensorRT 8.2
    assert choose_opset(get_device("jetson-xavier-nx")) == 17     # JetPack 5 / TensorRT 8.5
    assert choose_opset(get_device("jetson-orin-nano-8gb")) == 20  # TensorRT 10
    assert choose_opset(get_device("h100")) == 20
    assert choose_opset(get_device("cpu")) == 20                  # newer ORT opsets: not above 20 unless asked
    assert choose_opset(get_device("jetson-orin-nano-8gb"), tensorrt="8.5") == 17  # the user's older TensorRT
    assert choose_opset(get_device("jetson-xavier-nx"), requested=11) == 11
    with pytest.raises(ValueError, match="opset 18 is above what jetson-xavier-nx"):
        choose_opset(get_device("jetson-xavier-nx"), requested=18)


def test_static_export_at_opset_13_matches_pytorch(tmp_path):
    model = TinyNet()
    model.train()  # the user's mode must survive the export
    result = export_onnx(model, example(), tmp_path / "tiny.onnx", opset=13)
    assert model.training
    assert result.exporter == "torchscript" and _opset(result.path) == 13
    assert result.max_rel_diff < 1e-5 and result.cosine > 0.99999 and result.trials == 5
    assert result.simplified and result.simplifier == "onnxslim" and result.nodes_after <= result.nodes_before
    graph = onnx.load(result.path)
    assert [i.name for i in graph.graph.input] == ["input"] and [o.name for o in graph.graph.output] == ["output"]
    dims = [d.dim_value for d in graph.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, 32, 32]  # static by default
    params = sum(p.numel() for p in model.parameters())
    # BN folded into the convolutions: about the parameter count in float32 (BN's four vectors become a bias)
    assert abs(result.initializer_bytes - 4 * params) < 0.1 * 4 * params
    assert sum(result.op_counts_after.values()) == result.nodes_after and result.op_counts_after["Conv"] == 4


def test_dynamic_batch_axis_runs_any_batch(tmp_path):
    model = TinyNet().eval()
    result = export_onnx(model, example(), tmp_path / "dyn.onnx", opset=17, dynamic_batch=True, simplify=False)
    sess = ort_session(result.path)
    assert isinstance(sess.get_inputs()[0].shape[0], str)
    for batch in (1, 5):
        x = example(batch)
        got = sess.run(None, {"input": x.numpy()})[0]
        with torch.no_grad():
            np.testing.assert_allclose(got, model(x).numpy(), rtol=1e-4, atol=1e-5)


def test_dynamo_exporter_writes_opsets_above_20(tmp_path):
    result = export_onnx(TinyNet(), example(), tmp_path / "new.onnx", opset=21, simplify=False)
    assert result.exporter == "dynamo" and _opset(result.path) == 21 and result.max_rel_diff < 1e-5
    with pytest.raises(ValueError, match="cannot write opset 13"):
        export_onnx(TinyNet(), example(), tmp_path / "x.onnx", opset=13, exporter="dynamo")


def test_parity_gate_refuses_a_graph_that_disagrees_with_pytorch(tmp_path):
    model = BranchNet()
    with pytest.raises(RuntimeError, match="differs from PyTorch: relative error"):
        export_onnx(model, torch.ones(1, 3, 32, 32), tmp_path / "branch.onnx", opset=17)
    assert not (tmp_path / "branch.onnx").exists()
    # A user who accepts the difference raises the tolerance; the numbers stay in the result.
    loose = export_onnx(model, torch.ones(1, 3, 32, 32), tmp_path / "branch.onnx", opset=17, tolerance=10.0)
    assert loose.max_rel_diff > 0.5


def test_a_simplified_graph_that_fails_parity_is_not_kept(tmp_path):
    def scale_first_weight(graph):  # a (wrong) user pass: perturbs the first convolution's weights
        w = graph.graph.initializer[0]
        arr = onnx.numpy_helper.to_array(w) * 1.5
        w.CopyFrom(onnx.numpy_helper.from_array(arr, w.name))
        return graph

    def crash(graph):
        raise ValueError("pass not applicable")

    result = export_onnx(TinyNet(), example(), tmp_path / "t.onnx", opset=17, simplify=scale_first_weight)
    assert not result.simplified and "failed the parity check" in result.note and result.max_rel_diff < 1e-5
    assert result.nodes_after == result.nodes_before
    result = export_onnx(TinyNet(), example(), tmp_path / "t.onnx", opset=17, simplify=crash)
    assert not result.simplified and "crash failed (ValueError: pass not applicable)" in result.note


def test_onnxsim_is_an_alternative_simplifier(tmp_path):
    pytest.importorskip("onnxsim", reason="onnxsim is the optional extra edgeslim[onnxsim]")
    result = export_onnx(TinyNet(), example(), tmp_path / "s.onnx", opset=17, simplify="onnxsim")
    assert result.simplified and result.simplifier == "onnxsim" and result.max_rel_diff < 1e-5


def test_external_data_keeps_weights_beside_the_graph(tmp_path):
    result = export_onnx(TinyNet(), example(), tmp_path / "ext.onnx", opset=17, external_data=True)
    data = tmp_path / "ext.onnx.data"
    assert result.external_data and data.exists() and data.stat().st_size > 0.9 * result.initializer_bytes
    assert (tmp_path / "ext.onnx").stat().st_size < 0.2 * data.stat().st_size
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ext.onnx", "ext.onnx.data"]  # no temporary leftovers
    assert result.max_rel_diff < 1e-5


def test_slim_channel_counts_are_checked_in_the_graph(tmp_path):
    dense, slim = TinyNet(width=16), TinyNet(width=8)
    export_onnx(slim, example(), tmp_path / "slim.onnx", opset=17, simplify=False)
    export_onnx(dense, example(), tmp_path / "dense.onnx", opset=17, simplify=False)
    ok = check_channels(tmp_path / "slim.onnx", slim, dense)
    assert ok["matches_model"] and ok["differs_from_dense"] and ok["model_differs_from_dense"]
    assert ok["graph_out_channels"] == 8 + 8 + 8 + 16 and ok["dense_out_channels"] == 2 * ok["graph_out_channels"]
    # The mistake the check exists for: the dense model's graph shipped as the slim one.
    wrong = check_channels(tmp_path / "dense.onnx", slim, dense)
    assert not wrong["matches_model"] and not wrong["differs_from_dense"]
    assert wrong["mismatches"]["in_graph_not_model"]


def test_external_data_is_chosen_by_weight_size(tmp_path, monkeypatch):
    # The size rule of the 2 GB case, without writing 2 GB: a protobuf limit smaller than TinyNet's weights.
    import edgeslim.export.onnx as onnx_export

    weight_bytes = 4 * sum(p.numel() for p in TinyNet().parameters())
    monkeypatch.setattr(onnx_export, "PROTOBUF_LIMIT", weight_bytes)
    big = export_onnx(TinyNet(), example(), tmp_path / "big" / "m.onnx", opset=17)
    assert big.external_data and (tmp_path / "big" / "m.onnx.data").exists() and big.max_rel_diff < 1e-5
    monkeypatch.setattr(onnx_export, "PROTOBUF_LIMIT", 100 * weight_bytes)
    small = export_onnx(TinyNet(), example(), tmp_path / "small" / "m.onnx", opset=17)
    assert not small.external_data and sorted(p.name for p in (tmp_path / "small").iterdir()) == ["m.onnx"]


@pytest.mark.slow
def test_models_over_2gb_are_saved_with_external_data(tmp_path):
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 180_000))  # 553 M params, 2.2 GB
    result = export_onnx(model, example(), tmp_path / "big.onnx", opset=17)
    assert result.external_data and (tmp_path / "big.onnx.data").stat().st_size > 2 * 1024**3
    assert (tmp_path / "big.onnx").stat().st_size < 1024**2 and result.max_rel_diff < 1e-4


def test_channel_check_ignores_convolutions_the_forward_pass_skips(tmp_path):
    model = AuxNet()
    export_onnx(model, example(), tmp_path / "aux.onnx", opset=17, simplify=False)
    assert check_channels(tmp_path / "aux.onnx", model, example=example())["matches_model"]
    assert not check_channels(tmp_path / "aux.onnx", model)["matches_model"]  # counting every module: the aux conv
