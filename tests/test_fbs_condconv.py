"""FBS-pruned CondConv (issue 6): the layer, the converter, the counters, ONNX export, training, usage."""
import json
import math
import os
import subprocess
import sys

import pytest
import torch
import torchvision
from torch import nn

import edgeslim
from edgeslim.compress.fbs_condconv import (DIGITS_RECIPE, FBSCondConv, LayerUsage, SaliencyLasso, UsageReport,
                                            channel_usage, execution, fbs_cost, fbs_layers, gate_width, plot_usage,
                                            slim_by_usage, thesis_table_macs, to_fbs_condconv, to_static,
                                            train_fbs)
from edgeslim.export import export_onnx
from edgeslim.models import MCifarNet, build_model, load_model, save_checkpoint


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def block(c_in=6, c_out=10, experts=4, density=0.3, **kw):
    """A block with non-trivial BN statistics and shift, so that 'exactly zero' is a real claim."""
    m = FBSCondConv(c_in, c_out, 3, 1, 1, experts=experts, density=density, activation=nn.SiLU(), **kw)
    with torch.no_grad():
        m.bn.running_mean.uniform_(-1, 1)
        m.bn.running_var.uniform_(0.5, 2)
        m.bn.bias.uniform_(0.5, 1.5)  # beta > 0: the thesis's literal equation would leave swish(beta) != 0
    return m


def positive_saliencies(model):
    """Make every saliency positive (about 1 +- 0.5), so that exactly k channels per example are non-zero."""
    with torch.no_grad():
        for _, m in fbs_layers(model):
            if m.gated:
                m.predictor.bias.fill_(1.0)
                m.predictor.weight.mul_(0.2)
    return model


@pytest.mark.parametrize("density, channels, k", [
    (0.5, 64, 32), (0.3, 64, 20), (0.25, 64, 16), (0.7, 10, 7), (0.3, 10, 3), (0.9, 192, 173), (1.0, 5, 5),
    (0.01, 8, 1), (None, 12, 12),
])
def test_k_is_ceil_of_density_times_channels(density, channels, k):
    assert gate_width(density, channels) == k


@pytest.mark.parametrize("training", [True, False])
def test_suppressed_channels_are_exactly_zero_and_k_per_example(training):
    m = positive_saliencies(block()).train(training)
    x = torch.randn(5, 6, 8, 8) * torch.rand(5, 6, 1, 1) * 4  # examples differ in per-channel energy
    y = m(x)
    assert m.k == 3
    gate = m.gate
    assert ((gate != 0).sum(1) == 3).all()                      # k = ceil(0.3 * 10) kept per example
    suppressed = gate == 0
    assert (y.abs().sum((2, 3))[suppressed] == 0).all()        # exactly 0 after BN, shift and swish
    assert (y.abs().sum((2, 3))[~suppressed] > 0).all()
    # boosting: kept channels are scaled by their saliency value, not by 1
    assert torch.equal(gate[~suppressed], m.saliency[~suppressed])
    assert len({tuple(row.nonzero().flatten().tolist()) for row in gate}) > 1  # the choice depends on the input


def test_wta_gradient_flows_through_kept_entries_only():
    m = positive_saliencies(block()).train()
    x = torch.randn(4, 6, 8, 8)
    y = m(x)
    m.saliency.retain_grad()
    y.square().sum().backward()
    grad = m.saliency.grad
    assert (grad[m.gate == 0] == 0).all()
    assert (grad[m.gate != 0] != 0).any()
    assert m.bn.weight.grad is None  # gamma is frozen: the gate pi plays its role


@pytest.mark.parametrize("experts", [1, 4])
def test_skip_path_combines_only_surviving_slices_and_matches_the_dense_reference(experts):
    m = positive_saliencies(block(experts=experts)).eval()
    x = torch.randn(3, 6, 9, 9)
    x[:, [1, 4]] = 0  # input channels suppressed by a previous layer: the skip path must not read them
    with torch.no_grad():
        dense = m(x)
        gate = m.gate.clone()
        with execution(m, "skip"):
            sparse = m(x)
    assert torch.equal(m.gate != 0, gate != 0)
    assert torch.allclose(sparse, dense, atol=1e-5, rtol=1e-5)
    # An independent reference for example 0: mix the full expert kernels, convolve, BN, gate, swish.
    with torch.no_grad():
        alpha = torch.sigmoid(m.router(x[:1].mean((2, 3))))[0] if experts > 1 else torch.ones(1)
        kernel = torch.einsum("e,oiekl->oikl", alpha, m.weight)  # weight: (C_out, C_in, E, kh, kw)
        ref = nn.functional.conv2d(x[:1], kernel, padding=1)
        ref = nn.functional.silu(m.bn(ref) * gate[0][None, :, None, None])
    kept = gate[0] != 0
    assert torch.allclose(sparse[0, kept], ref[0, kept], atol=1e-5, rtol=1e-5)
    assert (sparse[0, ~kept] == 0).all()


def test_both_batched_condconv_formulations_agree(monkeypatch):
    m = block(experts=4).train()
    x = torch.randn(4, 6, 8, 8)
    alpha = torch.rand(4, 4)
    monkeypatch.setattr(FBSCondConv, "GROUPED_MIN_PIXELS", 0)
    grouped = m._condconv(x, alpha)  # one kernel per example, grouped convolution
    monkeypatch.setattr(FBSCondConv, "GROUPED_MIN_PIXELS", 10**9)
    mixed = m._condconv(x, alpha)    # all experts as one wide convolution, outputs mixed
    assert torch.allclose(grouped, mixed, atol=1e-5)


def test_converted_mcifarnet_skip_path_equals_mask_path():
    model = positive_saliencies(to_fbs_condconv(MCifarNet(width=0.25), density=0.3, experts=4)).eval()
    x = torch.randn(3, 3, 32, 32)
    x[2] = 0  # an all-black image: no active input channel at all in the first layer
    with torch.no_grad():
        dense = model(x)
        with execution(model, "skip"):
            sparse = model(x)
    assert torch.allclose(sparse, dense, atol=1e-4, rtol=1e-4)


def test_zoo_family_parameter_counts():
    # specs/seed-raju.md A.5: FBS ~1.44 M, CondConv x4 ~5.18 M, FBS-CondConv ~5.32 M, SCP-CondConv d=0.5 ~1.30 M
    for spec, kwargs, params in [("zoo:mcifarnet-fbs", {}, 1.44e6), ("zoo:mcifarnet-condconv", {}, 5.18e6),
                                 ("zoo:mcifarnet-fbs-condconv", {}, 5.32e6),
                                 ("zoo:mcifarnet-scp-condconv", {"width": 0.5}, 1.30e6),
                                 ("zoo:mcifarnet-scp", {"width": 0.3}, 0.12e6)]:
        model = build_model(spec, **kwargs)
        assert sum(p.numel() for p in model.parameters()) == pytest.approx(params, rel=0.01), spec


def test_thesis_counter_reproduces_table_3_1_exactly():
    table = {1.0: 174.3, 0.9: 145.5, 0.7: 88.3, 0.5: 45.3, 0.3: 16.5, 0.25: 11.5}
    for d, mmacs in table.items():
        assert round(thesis_table_macs(d) / 1e6, 1) == mmacs, d
    # plain FBS (no experts) in the same convention: the SCP budgets of spec A.8 / the 47.2 % headline (A.6)
    fbs = {0.9: 141.3, 0.7: 85.7, 0.5: 44.0, 0.3: 16.0, 0.25: 11.2}
    for d, mmacs in fbs.items():
        assert round(thesis_table_macs(d, experts=1) / 1e6, 1) == mmacs, d
    assert round(1 - thesis_table_macs(0.5) / thesis_table_macs(0.7, experts=1), 3) == 0.472


def test_exact_counter_equals_a_brute_force_count_of_the_skip_path():
    model = positive_saliencies(build_model("zoo:mcifarnet-fbs-condconv", density=0.3))
    x = torch.randn(1, 3, 32, 32)
    cost = fbs_cost(model, x)
    with execution(model, "skip"):
        brute = edgeslim.count(model, x)  # torch's own formulas on what the gathering path really runs
    pooling = sum(layer["macs_breakdown"]["pooling"] for layer in cost.layers)
    assert cost.macs - pooling == brute.macs
    # the l1 pooling reads every input channel once (it finds the active ones): the |x| elements torch saw
    abs_elements = next(u["elements"] for u in brute.uncounted_ops if u["op"] == "aten.abs")
    assert abs_elements == sum(layer["in_channels"] * math.prod(layer["input_hw"]) for layer in cost.layers)
    # ceil(d C) kept outputs read by the next layer: 20, 20, 39, 39, 39, 58, 58 active inputs after layer 0
    assert [layer["active_inputs"] for layer in cost.layers] == [3, 20, 20, 39, 39, 39, 58, 58]
    assert cost.macs_thesis == pytest.approx(16.48e6, rel=1e-3)
    assert cost.macs_dense_path > 10 * cost.macs  # the batched mask path saves nothing


def test_inspect_reports_thesis_and_exact_macs():
    proc = subprocess.run([sys.executable, "-m", "edgeslim", "inspect", "zoo:mcifarnet", "--fbs-condconv", "0.5",
                           "--json"], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    assert round(r["macs_thesis"] / 1e6, 1) == 45.3
    assert r["macs"] == pytest.approx(45.87e6, rel=1e-3) and r["flops"] == 2 * r["macs"]
    assert r["params"] == pytest.approx(5.32e6, rel=0.01)


def test_onnx_export_matches_pytorch_for_mask_and_skip_paths(tmp_path):
    model = build_model("zoo:mcifarnet-fbs-condconv", density=0.5, width=0.25).eval()
    mask = export_onnx(model, torch.randn(2, 3, 32, 32), tmp_path / "mask.onnx", opset=17)
    assert mask.max_rel_diff < 1e-4
    with execution(model, "skip"):
        skip = export_onnx(model, torch.randn(1, 3, 32, 32), tmp_path / "skip.onnx", opset=17)
    assert skip.max_rel_diff < 1e-4
    import onnx

    ops = {n.op_type for n in onnx.load(skip.path).graph.node}
    assert {"TopK", "Gather", "NonZero", "Conv"} <= ops  # weight slices are gathered in the graph


def test_converter_on_torchvision_resnet18_keeps_shapes_and_trains():
    original = torchvision.models.resnet18(num_classes=10)
    before = {k: v.clone() for k, v in original.state_dict().items()}
    model = to_fbs_condconv(original, density=0.5, experts=2)
    assert len(fbs_layers(model)) == 20  # every conv, downsample 1x1 convs included
    assert all(torch.equal(v, before[k]) for k, v in original.state_dict().items())  # the input is untouched
    x, y = torch.randn(4, 3, 64, 64), torch.randint(0, 10, (4,))
    assert model(x).shape == (4, 10)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    loss = nn.functional.cross_entropy(model(x), y) + SaliencyLasso(model, 1e-4).extra_loss(None, x, y, None)
    loss.backward()
    opt.step()
    assert math.isfinite(loss.item())
    assert model.conv1.predictor.weight.grad.abs().sum() > 0 and model.conv1.router.weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad(), execution(model, "skip"):
        assert model(x[:1]).shape == (1, 10)


def test_pretrained_conversion_starts_at_the_original_function():
    original = MCifarNet(width=0.25).eval()
    with torch.no_grad():
        for m in original.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2), m.running_var.uniform_(0.5, 2), m.weight.uniform_(0.5, 1.5)
    model = to_fbs_condconv(original, density=None, experts=4, pretrained=True, expert_noise=0.0).eval()
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(model(x), original(x), atol=1e-5)
    assert torch.allclose(to_static(model)(x), original(x), atol=1e-5)  # and back


def test_zoo_checkpoint_roundtrip(tmp_path):
    model = build_model("zoo:mcifarnet-fbs", density=0.3, width=0.25).eval()
    path = save_checkpoint(tmp_path / "fbs.pt", model, "zoo:mcifarnet-fbs", {"density": 0.3, "width": 0.25},
                           (1, 3, 32, 32))
    loaded = load_model(str(path)).model.eval()
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(model(x), loaded(x))


def test_short_digits_training_reaches_sane_accuracy_and_usage_is_counted(tmp_path):
    from edgeslim.data import load_data

    data = load_data("digits", image_size=16)
    model = build_model("zoo:mcifarnet-fbs-condconv", density=0.5, width=0.25)
    result = train_fbs(model, data, DIGITS_RECIPE.with_epochs(3), progress=False)
    assert result["accuracy"] > 80.0  # 10 classes: chance is 10 %
    model.eval()
    x = torch.stack([data.test[i][0] for i in range(48)])
    with torch.no_grad():
        dense = model(x)
        with execution(model, "skip"):
            sparse = model(x)
    assert torch.allclose(dense, sparse, atol=1e-4, rtol=1e-4)  # the trained model: both paths agree
    usage = channel_usage(model, data.test, progress=False)
    assert usage.samples == 360 and len(usage.layers) == 8
    for layer in usage.layers:
        assert int(layer.counts.sum()) <= layer.k * usage.samples
        assert layer.effective_width <= layer.channels
    assert plot_usage(usage, tmp_path / "usage.png").stat().st_size > 10_000
    # usage-based slimming through the engine: channels no training image used are removed exactly
    calibration = channel_usage(model, data.train_plain, progress=False)
    result = slim_by_usage(model, calibration, x[:1])
    assert not fbs_layers(result.model)  # a plain conv-BN-act model
    assert result.removal_error < 1e-4 and result.equivalence_error < 1e-4
    for layer in calibration.layers:
        assert result.channels[layer.name]["kept"] == max(1, layer.effective_width)
    with torch.no_grad():
        assert torch.equal(result.model(x).argmax(1), result.static(x).argmax(1))
    assert sum(p.numel() for p in result.model.parameters()) < sum(p.numel() for p in result.static.parameters())


def test_usage_slimming_keeps_a_residual_channel_that_any_producer_uses():
    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
            self.branch = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4))
            self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))

        def forward(self, x):
            x = self.stem(x)
            return self.head(torch.relu(x + self.branch(x)))

    model = to_fbs_condconv(Residual(), density=0.5, experts=1).eval()
    # stem and branch output channels are summed: one channel group with two gated producers
    counts = {"stem.0": torch.tensor([5, 0, 0, 3]), "branch.0": torch.tensor([0, 2, 0, 4])}
    layers = [LayerUsage(name, 0.5, 2, c, c.float() / 10, None, 10) for name, c in counts.items()]
    result = slim_by_usage(model, UsageReport(10, layers), torch.randn(1, 3, 8, 8))
    assert result.channels == {"stem.0": {"channels": 4, "kept": 3}, "branch.0": {"channels": 4, "kept": 3}}
    assert result.removal_error < 1e-5  # channel 2 fired for no example: its mean gate is 0 in both producers
    with pytest.raises(ValueError, match="threshold"):
        slim_by_usage(model, UsageReport(10, layers), torch.randn(1, 3, 8, 8), threshold=1.5)


def test_bad_density_and_untraceable_models_are_clear_errors():
    with pytest.raises(ValueError, match="gate density"):
        build_model("zoo:mcifarnet-fbs", density=1.5)

    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            return self.conv(x) if x.sum() > 0 else x

    with pytest.raises(ValueError, match="torch.fx"):
        to_fbs_condconv(Branchy())
    with pytest.raises(ValueError, match="no convolution"):
        to_fbs_condconv(nn.Sequential(nn.Flatten(), nn.Linear(3, 2)))
