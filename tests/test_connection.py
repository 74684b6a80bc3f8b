"""Connection-level pieces of MINT/SNACS: masks, sensitivity, SVM limits, activations, thesis metrics."""
import numpy as np
import pytest
import torch
from torch import nn

from edgeslim.compress.criteria.activations import collect_activations, execution_order, spatial_mean
from edgeslim.compress.criteria.connection import (
    layer_masks, prune_order, protected_filters, sensitivity, solve_limits, svm_operating_curves,
)
from edgeslim.compress.criteria.connectivity import (
    Connectivity, LayerPair, collect_pairs, consecutive_pairs, phi_from_weights, score_pairs,
)
from edgeslim.compress.criteria.mi_estimators import split_groups
from edgeslim.compress.masks import apply_masks, check_masks, csr_npz_bytes, mask_report
from edgeslim.data import calibration_subset
from edgeslim.models import build_model
from edgeslim.training import KeepMasks, TrainConfig, fit


def test_sensitivity_on_a_hand_computed_example():
    # next layer: 2 filters reading 3 filters, 3x3 kernels filled with constants (signs are ignored)
    w_avg = np.array([[1.0, 2.0, 1.0], [0.0, -3.0, 1.0]])
    w = torch.tensor(w_avg)[:, :, None, None].expand(2, 3, 3, 3)
    # C = [4, 4]; lambda = [1/4 + 0, 2/4 + 3/4, 1/4 + 1/4]
    assert sensitivity(w) == pytest.approx([0.25, 1.25, 0.5])
    assert protected_filters(sensitivity(w), 1 / 3).tolist() == [1]
    assert protected_filters(sensitivity(w), 2 / 3).tolist() == [1, 2]
    # depthwise next layer: every filter feeds only its own output -> lambda = 1 each
    assert sensitivity(torch.randn(4, 1, 3, 3), conv_groups=4) == pytest.approx([1.0] * 4)


def make_conn(scores: np.ndarray, child_groups=None, parent_groups=None) -> Connectivity:
    c, p = scores.shape
    return Connectivity(LayerPair("conv", "conv", "input"), scores,
                        child_groups or split_groups(c, None), parent_groups or split_groups(p, None))


def test_layer_masks_zero_the_lowest_kernels_under_the_cap():
    scores = np.array([[0.9, 0.1, 0.5, 0.3], [0.2, 0.8, 0.05, 0.7]])
    conn = make_conn(scores)
    shape = (2, 4, 3, 3)
    mask = layer_masks(conn, shape, fraction=0.5)
    assert mask.shape == shape and set(mask.unique().tolist()) <= {0.0, 1.0}
    kernel_zero = (mask.sum((2, 3)) == 0).numpy()
    # the four lowest scores: 0.05, 0.1, 0.2, 0.3 -- whole 3x3 kernels
    assert kernel_zero.tolist() == [[False, True, False, True], [True, False, True, False]]
    assert ((mask.sum((2, 3)) == 0) | (mask.sum((2, 3)) == 9)).all()
    # cap below the threshold's choice: at most 25 % of the weights
    capped = layer_masks(conn, shape, fraction=0.25, threshold=0.5)
    assert int((capped.sum((2, 3)) == 0).sum()) == 2
    # threshold only: every kernel scoring <= 0.3
    assert int((layer_masks(conn, shape, threshold=0.3).sum((2, 3)) == 0).sum()) == 4
    # protected child filter 1 keeps all its kernels
    prot = layer_masks(conn, shape, fraction=0.5, protected=np.array([1]))
    assert prot[1].eq(1).all() and int((prot[0].sum((1, 2)) == 0).sum()) == 4  # the cap is taken from row 0 only
    assert int((layer_masks(conn, shape, fraction=0.3, protected=np.array([1]))[0].sum((1, 2)) == 0).sum()) == 2


def test_grouped_blocks_and_order():
    scores = np.array([[0.3, 0.9], [0.1, 0.5]])
    conn = make_conn(scores, split_groups(4, 2), split_groups(6, 2))
    order, cum, total = prune_order(conn, (4, 6))
    assert order.tolist() == [2, 0, 3, 1] and cum.tolist() == [6, 12, 18, 24] and total == 24
    mask = layer_masks(conn, (4, 6), fraction=0.5)
    assert mask[2:, :3].eq(0).all() and mask[:2, :3].eq(0).all() and mask[:, 3:].eq(1).all()


def test_solve_limits_on_small_curves():
    levels = np.array([0.25, 0.5, 0.75])
    curves = {"a": np.array([0.9, 0.8, 0.3]), "b": np.array([0.95, 0.9, 0.85])}
    betas = {"a": 0.5, "b": 0.25}  # another 25 % of the parameters is not prunable
    gammas, t, total = solve_limits(curves, betas, tau=0.4, levels=levels)
    # t = 0.9: 0.5*0.25 + 0.25*0.5 = 0.25; t = 0.85: 0.125 + 0.1875 = 0.3125 (a's 0.8 < 0.85);
    # t = 0.8: a -> 0.5, b -> 0.75: 0.25 + 0.1875 = 0.4375 >= 0.4. Only a rose in that step (0.25 -> 0.5):
    # it goes the part of the way that lands on tau: 0.5 * g_a + 0.1875 = 0.4 -> g_a = 0.425
    assert t == pytest.approx(0.8) and total == pytest.approx(0.4)
    assert gammas["a"] == pytest.approx(0.425) and gammas["b"] == pytest.approx(0.75)
    # a flat curve does not jump to the top level: it rises just enough
    gammas, _, total = solve_limits({"a": np.array([0.5, 0.5, 0.5])}, {"a": 1.0}, tau=0.3, levels=levels)
    assert gammas["a"] == pytest.approx(0.3) and total == pytest.approx(0.3)
    # a noisy curve: the threshold meets it "latest", at the highest level still above t
    gammas, _, _ = solve_limits({"a": np.array([0.9, 0.5, 0.8])}, {"a": 1.0}, tau=0.75, levels=levels)
    assert gammas["a"] == pytest.approx(0.75)
    with pytest.raises(ValueError, match="cannot be reached"):
        solve_limits(curves, betas, tau=0.9, levels=levels)


def test_phi_from_weights():
    w = torch.zeros(2, 3, 3, 3)
    w[0, 0] = 1.0
    w[1, 2] = 0.5
    s = phi_from_weights(w, split_groups(2, None), split_groups(3, None), "w")
    assert s.max() == 1.0 and s.min() == 0.0 and s[1, 2] == pytest.approx(0.5)
    e = phi_from_weights(w, split_groups(2, None), split_groups(3, None), "exp_w2")
    assert e[0, 0] == pytest.approx(np.exp(-0.5)) and e[0, 1] == 1.0
    assert phi_from_weights(w, split_groups(2, None), split_groups(3, None), "one") is None
    with pytest.raises(ValueError, match="unknown phi"):
        phi_from_weights(w, split_groups(2, None), split_groups(3, None), "w3")


@pytest.fixture(scope="module")
def small_resnet():
    torch.manual_seed(0)
    return build_model("zoo:resnet20", num_classes=10).eval()


def test_activation_collection_shapes_streaming_and_no_side_effects(small_resnet, digits, tmp_path):
    model = small_resnet
    model.train()
    requests = {"conv1": {"output"}, "layer1.0.conv1": {"input", "output", "patch_means"}, "fc": {"input"}}
    acts = collect_activations(model, digits.train_plain, requests, per_class=5, batch_size=16, progress=False)
    assert len(acts) == 50 and np.bincount(acts.targets).tolist() == [5] * 10
    assert acts.output("conv1").shape == (50, 16) and acts.input("layer1.0.conv1").shape == (50, 16)
    assert acts.patch_means("layer1.0.conv1").shape == (50, 16 * 9) and acts.input("fc").shape == (50, 64)
    assert acts.order == ["conv1", "layer1.0.conv1", "fc"]
    assert model.training and not model.conv1._forward_hooks  # mode restored, hooks removed
    on_disk = collect_activations(model, digits.train_plain, requests, per_class=5, batch_size=7, store=tmp_path,
                                  progress=False)
    assert isinstance(on_disk.output("conv1"), np.memmap)
    np.testing.assert_allclose(on_disk.output("conv1"), acts.output("conv1"), rtol=1e-5, atol=1e-6)
    # one number per filter per sample: the spatial mean of the conv output
    x = torch.stack([calibration_subset(digits.train_plain, 5)[i][0] for i in range(3)])
    model.eval()
    with torch.no_grad():
        ref = spatial_mean(model.conv1(x))
    np.testing.assert_allclose(acts.output("conv1")[:3], ref.numpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="no module"):
        collect_activations(model, digits.train_plain, {"nope": {"output"}}, per_class=1, progress=False)


def test_patch_means_make_masked_outputs_exact(small_resnet, digits):
    """The spatial mean of a conv output is linear in the patch means: masked outputs need no forward pass."""
    model = small_resnet
    name = "layer2.0.conv1"  # a stride-2 convolution
    conv = dict(model.named_modules())[name]
    acts = collect_activations(model, digits.train_plain, {name: {"patch_means", "output"}}, per_class=3,
                               progress=False)
    w = conv.weight.detach().double().reshape(conv.out_channels, -1).numpy()
    np.testing.assert_allclose(acts.patch_means(name) @ w.T, acts.output(name), rtol=1e-4, atol=1e-5)


def test_pairings(small_resnet, digits):
    model = small_resnet
    order = execution_order(model, torch.randn(1, 3, 32, 32))
    pairs = consecutive_pairs(model, order)
    assert pairs[0].child == "layer1.0.conv1" and pairs[0].parent == "conv1" and pairs[0].parent_kind == "output"
    assert pairs[-1].child == "fc" and len(pairs) == len(order) - 1
    with pytest.raises(ValueError, match="first layer"):
        consecutive_pairs(model, order, layers=["conv1"])
    pairs, acts = collect_pairs(model, digits.train_plain, pairing="input", per_class=4, progress=False)
    assert [p.child for p in pairs] == order[1:] and all(p.parent == p.child for p in pairs)
    conn = score_pairs(model, acts, pairs[:2], groups={"layer1.0.conv2": (4, 8)}, progress=False)
    assert conn["layer1.0.conv1"].scores.shape == (16, 16)
    assert conn["layer1.0.conv2"].scores.shape == (8, 4)


def test_svm_curves_fall_with_compression(small_resnet, digits):
    model = small_resnet
    layer = "layer3.2.conv2"
    conv = dict(model.named_modules())[layer]
    acts = collect_activations(model, digits.train_plain, {layer: {"patch_means"}}, per_class=10, progress=False)
    rng = np.random.default_rng(0)
    conn = {layer: make_conn(rng.random((64, 64)))}
    curves, seconds = svm_operating_curves(model, conn, {layer: acts.patch_means(layer)}, acts.targets,
                                           levels=np.array([0.01, 0.5, 0.99]), n_jobs=1)
    acc = curves[layer][0]
    assert acc.shape == (3,) and acc[0] >= acc[2] and seconds[layer] > 0
    assert conv.weight.shape == (64, 64, 3, 3)


def test_masks_stay_fixed_while_fine_tuning(digits):
    torch.manual_seed(0)
    model = build_model("zoo:resnet20", num_classes=10)
    gen = torch.Generator().manual_seed(0)
    masks = {name: (torch.rand(p.shape, generator=gen) > 0.5).float()
             for name, p in model.named_parameters() if name.endswith("conv1.weight")}
    small = calibration_subset(digits.train, 6)
    fit(model, small, None, TrainConfig(epochs=2, batch_size=32, lr=0.05, weight_decay=5e-4),
        callbacks=[KeepMasks(masks)], progress=False)
    assert check_masks(model, masks) == 0
    p = dict(model.named_parameters())["layer1.0.conv1.weight"]
    assert (p[masks["layer1.0.conv1.weight"] == 1] != 0).all()  # the others trained
    with pytest.raises(ValueError, match="shape"):
        apply_masks(model, {"conv1.weight": torch.ones(3)})


def test_mask_report_counts_like_the_thesis():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 10))
    mask = torch.ones(4, 3, 3, 3)
    mask[0, :2] = 0  # two kernels = 18 weights
    report = mask_report(model, {"0.weight": mask}, torch.randn(1, 3, 8, 8))
    total = 4 * 27 + 4 + 256 * 10 + 10
    assert report["params_total"] == total and report["params_pruned"] == 18
    assert report["params_pruned_pct"] == pytest.approx(100 * 18 / total)
    # conv weights are used at 8 x 8 output positions, linear weights once
    assert report["macs_total"] == 4 * 27 * 64 + 2560 and report["macs_pruned"] == 18 * 64
    assert report["memory_mb"] < report["memory_mb_dense"]
    sparse_model = nn.Sequential(nn.Linear(100, 100, bias=False))
    with torch.no_grad():
        sparse_model[0].weight[:, 50:] = 0
    assert csr_npz_bytes(sparse_model) < csr_npz_bytes(nn.Sequential(nn.Linear(100, 100, bias=False)))
