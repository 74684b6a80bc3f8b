"""Deep-LDA maths, neuron cleaning, M' selection and deconvnet tracing (specs/seed-tian.md section 1)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import Subset, TensorDataset

from edgeslim.compress.criteria.lda import (
    clean_neurons, deconv_utilities, find_decision_layer, fisher_ratios, lda_utilities, normalized_utilities,
    otsu_threshold, scatter_matrices, select_top_neurons, threshold_keep,
)
from edgeslim.models import build_model


@pytest.fixture(scope="module")
def digit_pixels():
    d = load_digits()
    return torch.tensor(d.data, dtype=torch.float32), torch.tensor(d.target)


def test_scatter_matrices_and_fisher_ratios_follow_the_definitions(digit_pixels):
    x, y = digit_pixels
    within, between, total = scatter_matrices(x.double(), y)
    xn, yn = x.double().numpy(), y.numpy()
    centred = xn - xn.mean(0)
    assert np.allclose(total.numpy(), centred.T @ centred)
    sw = sum(((xn[yn == c] - xn[yn == c].mean(0)).T @ (xn[yn == c] - xn[yn == c].mean(0))) for c in range(10))
    assert np.allclose(within.numpy(), sw)
    sb = sum((yn == c).sum() * np.outer(xn[yn == c].mean(0) - xn.mean(0), xn[yn == c].mean(0) - xn.mean(0))
             for c in range(10))
    assert np.allclose(between.numpy(), sb)            # eq. 3.3: Sa - Sw is the between-class scatter
    keep = clean_neurons(x)
    v = fisher_ratios(x[:, keep], y)                    # eq. 3.8
    expected = np.diag(sb)[keep.numpy()] / np.diag(sw)[keep.numpy()]
    assert np.allclose(v.numpy(), expected, rtol=1e-4)
    full = fisher_ratios(x[:, keep], y, mode="full")   # eq. 4.13: diag(Sw^-1 Sb)
    ref = np.diag(np.linalg.solve(sw[np.ix_(keep.numpy(), keep.numpy())], sb[np.ix_(keep.numpy(), keep.numpy())]))
    assert np.allclose(full.numpy(), ref, rtol=1e-3, atol=1e-6)


def test_dead_and_duplicate_neurons_are_set_aside(digit_pixels):
    x, _ = digit_pixels
    x = torch.cat([x[:, 10:15], x[:, :1], 3 * x[:, 12:13] + 1, x[:, 15:16]], 1)  # pixel 0 is always blank
    keep = clean_neurons(x)
    assert keep.tolist() == [True] * 5 + [False, False, True]  # dead column 5, column 6 = scaled column 2


def test_otsu_splits_a_bimodal_sample():
    gen = torch.Generator().manual_seed(0)
    v = torch.cat([torch.randn(200, generator=gen) * 0.1, 5 + torch.randn(20, generator=gen) * 0.1])
    t = otsu_threshold(v)
    assert 0.5 < t < 4.5 and int((v >= t).sum()) == 20


def test_sweep_keeps_fewest_neurons_with_comparable_accuracy(digit_pixels):
    # real data: the 64 pixels of the 8x8 digits stand in for a latent space
    x, y = digit_pixels
    sel = select_top_neurons(x, y, method="sweep", tolerance=1.0)
    assert sel.active.sum() < 64                      # the always-zero border pixels are cleaned out
    assert 5 <= len(sel.selected) < int(sel.active.sum())
    reference = sel.curve[-1]["accuracy"]
    chosen = next(c for c in sel.curve if c["k"] == len(sel.selected))
    assert reference > 90 and chosen["accuracy"] >= reference - 1.0
    assert all(c["accuracy"] < reference - 1.0 for c in sel.curve[:-2])  # every smaller k lost more
    ranked = sel.ratios[sel.selected]
    assert torch.all(ranked[:-1] >= ranked[1:])         # best first
    otsu = select_top_neurons(x, y, method="otsu")
    assert 1 <= len(otsu.selected) < int(otsu.active.sum())
    with pytest.raises(ValueError, match="m_prime"):
        select_top_neurons(x, y, method="fixed")


class SmallNet(nn.Module):
    """conv -> relu -> maxpool -> conv -> relu -> maxpool -> fc -> relu -> decision fc."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1)
        self.fc1 = nn.Linear(8 * 8 * 8, 12)
        self.fc = nn.Linear(12, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(torch.relu(self.conv2(x)), 2)
        return self.fc(nn.functional.relu(self.fc1(x.flatten(1)), inplace=True))


def _manual_zeiler_fergus(net, x, mask):
    """The deconvnet of Zeiler & Fergus written out layer by layer, for one batch."""
    a1 = net.conv1(x)
    p1, i1 = F.max_pool2d(F.relu(a1), 2, return_indices=True)
    a2 = net.conv2(p1)
    p2, i2 = F.max_pool2d(F.relu(a2), 2, return_indices=True)
    h = F.relu(net.fc1(p2.flatten(1)))
    z = h * mask                                             # the masked latent response (fc's input)
    r_fc1 = F.relu(z)                                        # rectify
    u_fc1 = (r_fc1 @ net.fc1.weight).view_as(p2)             # W^T: fc1's input reconstruction
    r_conv2 = F.relu(F.max_unpool2d(u_fc1, i2, 2, output_size=a2.shape[-2:]))  # unpool, rectify
    u_conv2 = F.conv_transpose2d(r_conv2, net.conv2.weight, padding=1)       # transposed conv
    r_conv1 = F.relu(F.max_unpool2d(u_conv2, i1, 2, output_size=a1.shape[-2:]))
    u_conv1 = F.conv_transpose2d(r_conv1, net.conv1.weight, padding=1)
    outputs = {"fc1": r_fc1, "conv2": r_conv2, "conv1": r_conv1}
    inputs = {"fc": z, "fc1": u_fc1.flatten(1)[:, :, None], "conv2": u_conv2, "conv1": u_conv1}
    return outputs, inputs


def _utility(r):
    """eq. 3.11 (mean over images of |r|) then eq. 3.12 (max over space)."""
    r = r.abs().mean(0)
    return r.flatten(1).amax(1) if r.ndim > 1 else r


def test_deconv_tracing_equals_a_hand_written_zeiler_fergus_deconvnet(digits):
    net = SmallNet().eval()
    images = torch.stack([digits.test[i][0] for i in range(16)])
    data = TensorDataset(images, torch.zeros(16, dtype=torch.long))
    selected = torch.tensor([0, 3, 4, 7])
    mask = torch.zeros(12)
    mask[selected] = 1
    u = deconv_utilities(net, data, selected, decision="fc", batch_size=5)
    u_in = deconv_utilities(net, data, selected, decision="fc", at="input", batch_size=5)
    with torch.no_grad():
        ref_out, ref_in = _manual_zeiler_fergus(net, images, mask)
    assert set(u) == {"conv1", "conv2", "fc1"} and set(u_in) == {"conv1", "conv2", "fc1", "fc"}
    for name, r in ref_out.items():           # feature-map reconstructions (at="output")
        assert torch.allclose(u[name], _utility(r), atol=1e-6), name
    for name, r in ref_in.items():            # the thesis's U_i at every layer's input (at="input")
        assert torch.allclose(u_in[name], _utility(r), atol=1e-6), name
    assert torch.all(u["fc1"][mask == 0] == 0) and float(u["fc1"][selected].sum()) > 0
    assert not any(p.grad is not None for p in net.parameters())  # the model is left untouched


def test_feature_map_utilities_do_not_depend_on_batchnorm_folding(digits):
    # conv -> BN -> ReLU is read after the BN: folding the BN into the conv changes nothing
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(4),
                        nn.Flatten(), nn.Linear(8 * 8 * 8, 6), nn.ReLU(), nn.Linear(6, 10)).eval()
    bn = net[1]
    bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.01, 4), bn.weight.data.uniform_(0.2, 3)
    folded = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), *list(net)[2:]).eval()
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    with torch.no_grad():
        folded[0].weight.copy_(net[0].weight * scale[:, None, None, None])
        folded[0].bias.copy_((net[0].bias - bn.running_mean) * scale + bn.bias)
    images = torch.stack([digits.test[i][0] for i in range(8)])
    data = TensorDataset(images, torch.zeros(8, dtype=torch.long))
    assert torch.allclose(net(images), folded(images), atol=1e-5)
    a = deconv_utilities(net, data, torch.arange(6), decision="7")
    b = deconv_utilities(folded, data, torch.arange(6), decision="6")
    assert torch.allclose(a["0"], b["0"], rtol=1e-4) and torch.allclose(a["5"], b["4"], rtol=1e-4)


def test_threshold_is_eta_times_std_of_nonzero_utilities():
    u = {"a": torch.tensor([0.0, 1.0, 2.0, 3.0, 10.0])}
    std = torch.tensor([1.0, 2.0, 3.0, 10.0]).std().item()      # zeros ignored, ddof = 1
    assert torch.allclose(normalized_utilities(u)["a"], u["a"] / std)
    keep = threshold_keep(u, eta=2.5 / std)
    assert keep["a"].tolist() == [False, False, False, True, True]
    assert threshold_keep(u, eta=100.0)["a"].tolist() == [False] * 4 + [True]  # a layer never vanishes


def test_residual_and_concat_networks_trace_every_conv(digits):
    resnet = build_model("zoo:resnet20").eval()
    data = Subset(digits.train_plain, range(20))
    r = lda_utilities(resnet, data, selection="fixed", m_prime=8, batch_size=10)
    assert r.decision == "fc" and len(r.selection.selected) <= 8
    convs = [n for n, m in resnet.named_modules() if isinstance(m, nn.Conv2d)]
    assert set(r.utilities) == set(convs)
    assert all(r.utilities[n].shape == (resnet.get_submodule(n).out_channels,) for n in convs)
    assert all(float(r.utilities[n].max()) > 0 for n in convs)   # the signal reaches every layer

    googlenet = torchvision.models.googlenet(weights=None, aux_logits=False, init_weights=True).eval()
    images = F.interpolate(torch.stack([digits.test[i][0] for i in range(4)]), size=96)
    assert find_decision_layer(googlenet, images[:1]) == "fc"
    u = deconv_utilities(googlenet, TensorDataset(images, torch.zeros(4)), torch.arange(0, 1024, 7), "fc",
                         batch_size=4)
    branches = [n for n in u if n.startswith("inception4c.")]
    assert len(branches) == 6 and all(float(u[n].max()) > 0 for n in branches)  # all four concat branches
