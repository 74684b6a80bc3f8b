"""CAPER (Ganesh ch. 6) on the real digits data."""
import pytest
import torch
from torch.utils.data import Subset

from edgeslim.models import build_model
from edgeslim.training import Callback, TrainConfig, fit
from edgeslim.training.caper import Caper, classifier_sensitivity, default_feature_layer, window_weights


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def small(digits):
    return Subset(digits.train, range(240)), Subset(digits.train_plain, range(240))


def tiny():
    torch.manual_seed(0)
    return build_model("zoo:mcifarnet", num_classes=10, width=0.125)


def test_removes_exactly_gamma_most_unstable_samples_at_tau_then_smooths(small):
    train, plain = small
    cb = Caper(remove=24, tau=1, smoothing=0.3, score_set=plain)
    seen = []

    class Probe(Callback):
        def on_epoch_end(self, state, record):
            seen.append(state.train_set)

    model = tiny()
    result = fit(model, train, None, TrainConfig(epochs=2, batch_size=48), [cb, Probe()], progress=False)
    assert [r["samples"] for r in result["history"]] == [240, 216]
    assert len(cb.removed) == 24 == len(set(cb.removed.tolist()))
    # the removed samples are the 24 highest instabilities of the model at epoch tau
    assert set(cb.removed.tolist()) == set(torch.topk(cb.instability, 24).indices.tolist())
    kept = set(seen[1].indices)
    assert kept.isdisjoint(cb.removed.tolist()) and len(kept) == 216
    assert cb.scored_samples == 480  # a clean and a noisy pass over all samples
    y = torch.tensor([3, 0])
    t = cb.targets(type("S", (), {"epoch": 1})(), None, y, torch.zeros(2, 10))
    assert torch.allclose(t.sum(1), torch.ones(2)) and t[0, 3] == pytest.approx(0.7 + 0.03) and t[0, 0] == pytest.approx(0.03)
    assert cb.targets(type("S", (), {"epoch": 0})(), None, y, torch.zeros(2, 10)) is None  # before tau: plain CE


def test_instability_is_normalised_and_independent_of_batching(small):
    _, plain = small
    model = tiny()
    a = Caper(remove=5, score_set=plain, batch_size=64).instability_of(model)
    b = Caper(remove=5, score_set=plain, batch_size=100).instability_of(model)
    assert torch.allclose(a, b, atol=1e-5)      # each sample's noise comes from its own seeded generator
    assert a.min() >= 0 and a.max() <= 1         # mean of per-channel min-max normalised distances
    c = Caper(remove=5, score_set=plain, noise_std=0.0).instability_of(model)
    assert torch.count_nonzero(c) == 0           # no noise, no instability


def test_feature_layer_sensitivity_and_windows(small):
    model = tiny()
    assert default_feature_layer(model, torch.randn(1, 3, 32, 32)) == "features.23"  # the last SiLU
    resnet = build_model("zoo:resnet20")
    assert default_feature_layer(resnet, torch.randn(1, 3, 32, 32)) == "layer3.2.relu"
    s = classifier_sensitivity(model, 24)
    assert s.shape == (24,) and s.sum() == pytest.approx(10.0, rel=1e-5)  # each output's row sums to 1
    with pytest.raises(ValueError):
        classifier_sensitivity(model, 7)
    assert window_weights("last", 4).tolist() == [0, 0, 0, 1]
    assert window_weights("first_half", 4).tolist() == [1, 1, 0, 0]
    assert window_weights("second_half", 4).tolist() == [0, 0, 1, 1]
    g = window_weights("gaussian", 5)
    assert g.argmax() == 2 and g[0] == pytest.approx(g[4])
    _, plain = small
    two = Caper(remove=3, score_set=plain, layers=["features.17", "features.23"], window="second_half")
    last = Caper(remove=3, score_set=plain)
    assert torch.allclose(two.instability_of(model), last.instability_of(model))  # window (0, 1) = the last layer
    top = Caper(remove=3, score_set=plain, sensitive_channels=8).instability_of(model)
    assert top.shape == (240,) and top.max() <= 1
    with pytest.raises(ValueError):
        Caper(remove=3, score_set=plain, sensitive_channels=8, layers=["features.17", "features.23"]).instability_of(model)


def test_flops_saved_and_bad_input():
    cb = Caper(remove=125, tau=50)
    assert cb.saved_forward_macs(300, 314_600_000) == 125 * 250 * 314_600_000  # thesis: VGG16 CIFAR-10, 9.83 T
    with pytest.raises(ValueError):
        Caper(remove=-1)
