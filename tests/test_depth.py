"""Depth pruning: residual blocks removed whole (edgeslim.compress.depth, prune(drop_blocks=...))."""
import copy

import numpy as np
import onnx
import pytest
import torch
import torchvision
from torch import nn

import edgeslim
from edgeslim.compress import apply_plan
from edgeslim.compress.depth import BlocksOvershoot, drop_blocks, residual_blocks
from edgeslim.export import export_onnx
from edgeslim.metrics import count
from edgeslim.models import load_checkpoint, save_checkpoint

MBV2_RESIDUAL = {f"features.{i}" for i in (3, 5, 6, 8, 9, 10, 12, 13, 15, 16)}


def _trained_like(model: nn.Module) -> nn.Module:
    """Batch norms with non-trivial statistics, so that branch means and folded biases are not zero."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1, generator=g)
            m.running_var.uniform_(0.5, 1.5, generator=g)
            m.weight.data.uniform_(0.5, 1.5, generator=g)
            m.bias.data.uniform_(-0.1, 0.1, generator=g)
    return model.eval()


@pytest.fixture(scope="module")
def mbv2():
    torch.manual_seed(0)
    return _trained_like(torchvision.models.mobilenet_v2(num_classes=10)), torch.randn(4, 3, 64, 64)


class _Constant(nn.Module):
    def __init__(self, value: torch.Tensor):
        super().__init__()
        self.value = value

    def forward(self, x):
        return self.value.expand_as(x)


def test_residual_blocks_are_the_inverted_residuals_with_a_skip(mbv2):
    model, x = mbv2
    found = residual_blocks(model, [(x,)])
    assert set(found) == MBV2_RESIDUAL
    assert list(found.values()) == sorted(found.values()) and all(v > 0 for v in found.values())
    assert residual_blocks(torchvision.models.resnet18().eval(), [(x,)]) == {}  # relu after the add: not ours


def test_dropping_equals_each_branch_replaced_by_its_mean(mbv2):
    model, x = mbv2
    paths = ["features.5", "features.6", "features.15", "features.16"]  # two pairs of neighbours: chained folds
    dropped = drop_blocks(model, paths, [(x,)])
    reference = copy.deepcopy(model)
    for path in paths:
        outputs = []
        hook = model.get_submodule(path).conv.register_forward_hook(lambda m, a, out: outputs.append(out))
        with torch.no_grad():
            model(x)
        hook.remove()
        reference.get_submodule(path).conv = _Constant(outputs[0].mean(dim=(0, 2, 3), keepdim=True))
    with torch.no_grad():
        expected, got = reference(x), dropped(x)
    assert (expected - got).abs().max() / expected.abs().max() < 1e-5
    assert all(isinstance(dropped.get_submodule(p), nn.Identity) for p in paths)
    assert not isinstance(model.get_submodule(paths[0]), nn.Identity)  # the input model is untouched
    with pytest.raises(ValueError, match="not removable"):
        drop_blocks(model, ["features.4"], [(x,)])  # stride 2: no skip


def test_prune_with_dropped_blocks_reaches_the_target_and_rebuilds(mbv2, tmp_path):
    model, x = mbv2
    example = x[:1]
    result = edgeslim.prune(model, example, target={"macs": 0.2}, round_to=8, drop_blocks="all", progress=False)
    assert set(result.dropped) == MBV2_RESIDUAL and result.plan.dropped == result.dropped
    dense_macs = count(model, example).macs
    assert 0.18 <= count(result.model, example).macs / dense_macs <= 0.2
    assert result.achieved["macs"] == pytest.approx(count(result.model, example).macs / dense_macs)
    assert result.equivalence_error < 1e-4 and any("dropped 10 residual block" in n for n in result.notes)
    assert result.to_dict()["dropped_blocks"] == result.dropped

    # a checkpoint rebuilds from the dense architecture: blocks dropped, channels cut, constants in the weights
    path = save_checkpoint(tmp_path / "slim.pt", result.model, "torchvision:mobilenet_v2", {"num_classes": 10},
                           tuple(example.shape), plan=result.plan.to_dict())
    loaded = load_checkpoint(path).model.eval()
    rebuilt = apply_plan(torchvision.models.mobilenet_v2(num_classes=10), result.plan)
    assert sum(isinstance(m, nn.Identity) for m in rebuilt.features) == len(MBV2_RESIDUAL)
    with torch.no_grad():
        assert torch.allclose(loaded(x), result.model(x), atol=1e-6)


def test_dropped_blocks_leave_fewer_nodes_in_onnx_runtime(mbv2, tmp_path):
    import onnxruntime as ort

    model, x = mbv2
    example = x[:1]
    channels_only = edgeslim.prune(model, example, target={"macs": 0.3}, round_to=8, progress=False).model
    with_depth = edgeslim.prune(model, example, target={"macs": 0.3}, round_to=8, drop_blocks=4,
                                progress=False).model
    convs = {}
    for name, slim in (("channels", channels_only), ("depth", with_depth)):
        path = export_onnx(slim, example, tmp_path / f"{name}.onnx").path
        convs[name] = sum(node.op_type == "Conv" for node in onnx.load(str(path)).graph.node)
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = session.run(None, {session.get_inputs()[0].name: example.numpy()})[0]
        with torch.no_grad():
            np.testing.assert_allclose(got, slim(example).numpy(), rtol=1e-4, atol=1e-4)
    assert convs["depth"] == convs["channels"] - 4 * 3  # three convolutions per inverted residual


def test_drop_blocks_refuses_what_it_cannot_do(mbv2, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGESLIM_CACHE", str(tmp_path))  # the latency probes below
    model, x = mbv2
    with pytest.raises(ValueError, match="no residual block"):
        edgeslim.prune(torchvision.models.resnet18().eval(), x[:1], drop_blocks=1, progress=False)
    with pytest.raises(ValueError, match="has 10 residual blocks"):
        edgeslim.prune(model, x[:1], drop_blocks=11, progress=False)
    with pytest.raises(BlocksOvershoot, match="already meets latency=1000"):  # the estimate reads the model's probes
        edgeslim.prune(model, x[:1], target={"latency": 1000.0}, device="cpu", drop_blocks=1, progress=False)
    with pytest.raises(ValueError, match="already cuts macs below the target"):
        edgeslim.prune(model, x[:1], target={"macs": 0.9}, drop_blocks="all", progress=False)
