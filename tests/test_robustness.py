"""Calibration, noise and adversarial robustness on a real trained digits model."""
import pytest
import torch
from torch.utils.data import Subset

import edgeslim
from edgeslim.metrics.robustness import (compare_robustness, evaluate_robustness, expected_calibration_error, fgsm,
                                         gaussian_noise, normalization_of, pgd, poisson_noise, speckle_noise)
from edgeslim.models import build_model
from edgeslim.training import TrainConfig, evaluate, fit


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def trained(digits):
    torch.manual_seed(0)
    model = build_model("zoo:mcifarnet", num_classes=10, width=0.125)
    cfg = TrainConfig(epochs=2, optimizer="adamw", lr=1e-2, weight_decay=0.0, batch_size=32)
    fit(model, Subset(digits.train_plain, range(800)), None, cfg, progress=False)
    return model


def test_ece_on_a_hand_computed_example():
    probs = torch.tensor([[0.93, 0.07], [0.62, 0.38], [0.84, 0.16], [0.43, 0.57]])
    labels = torch.tensor([0, 1, 0, 1])
    # one bin per sample: (|1 - .93| + |0 - .62| + |1 - .84| + |1 - .57|) / 4
    assert expected_calibration_error(probs, labels, bins=10)["ece"] == pytest.approx(0.32)
    # one bin for all: |mean confidence .74 - accuracy .75|
    one = expected_calibration_error(probs, labels, bins=1)
    assert one["ece"] == pytest.approx(0.01)
    assert one["bins"][0]["count"] == 4 and one["bins"][0]["accuracy"] == pytest.approx(0.75)
    perfect = expected_calibration_error(torch.eye(3), torch.arange(3))
    assert perfect["ece"] == 0.0


def test_noise_statistics():
    gen = torch.Generator().manual_seed(0)
    gray = torch.full((8, 3, 32, 32), 0.5)
    g = gaussian_noise(gray, 5 / 255, gen)
    assert g.mean() == pytest.approx(0.5, abs=1e-3) and g.std() == pytest.approx(5 / 255, rel=0.05)
    p = poisson_noise(gray, 255.0, gen)
    assert p.mean() == pytest.approx(0.5, abs=2e-3) and p.var() == pytest.approx(0.5 / 255, rel=0.1)
    s = speckle_noise(gray, 0.05, gen)
    assert s.mean() == pytest.approx(0.5, abs=1e-3) and s.std() == pytest.approx(0.025, rel=0.05)
    black = torch.zeros(2, 3, 8, 8)
    assert torch.equal(poisson_noise(black, generator=gen), black) and torch.equal(speckle_noise(black, generator=gen), black)
    assert gaussian_noise(torch.ones(2, 3, 8, 8), 0.5, gen).max() <= 1.0  # clipped to the pixel range


def test_normalization_is_found_and_round_trips(digits):
    norm = normalization_of(digits.test)
    assert norm.mean == pytest.approx(digits.test.mean.flatten().tolist())
    x = digits.test[0][0][None]
    assert torch.allclose(norm.from_pixels(norm.to_pixels(x)), x, atol=1e-6)
    assert norm.to_pixels(x).min() >= -1e-6 and norm.to_pixels(x).max() <= 1 + 1e-6
    with pytest.raises(ValueError, match="normalization"):
        normalization_of(torch.utils.data.TensorDataset(torch.zeros(1, 3, 2, 2), torch.zeros(1)))


def test_fgsm_and_pgd_stay_in_the_ball_and_hurt_a_trained_model(trained, digits):
    test = Subset(digits.test, range(128))
    assert evaluate(trained, test)["accuracy"] > 60
    norm = normalization_of(digits.test)
    x, y = next(iter(torch.utils.data.DataLoader(test, batch_size=128)))
    pixels = norm.to_pixels(x)
    eps = 8 / 255
    trained.eval()
    for adv in (fgsm(trained, norm, pixels, y, eps), pgd(trained, norm, pixels, y, eps, steps=5)):
        assert (adv - pixels).abs().max() <= eps + 1e-6 and adv.min() >= 0 and adv.max() <= 1
    r = evaluate_robustness(trained, test, source=build_model("zoo:resnet20", width=4), pgd_steps=5, progress=False)
    under = r["accuracy_under"]
    assert set(under) == {"gaussian", "poisson", "speckle", "fgsm", "pgd", "fgsm_transfer", "pgd_transfer"}
    assert r["accuracy"] > 60 and under["fgsm"] < r["accuracy"] - 20 and under["pgd"] <= under["fgsm"] + 1
    assert r["drop"]["pgd"] == pytest.approx(under["pgd"] - r["accuracy"])
    assert 0 <= r["ece"] <= 1 and r["samples"] == 128
    assert trained.training is False  # mode restored (it was eval)


def test_dense_vs_engine_slimmed_model_with_cross_transfer(trained, digits):
    slim = edgeslim.prune(trained, torch.randn(1, 3, 32, 32), method="l1", target={"macs": 0.5}, progress=False).model
    r = compare_robustness(trained, slim, Subset(digits.test, range(32)), pgd_steps=2, progress=False)
    assert r["dense"]["settings"]["transfer_source"] and r["slim"]["settings"]["transfer_source"]
    assert r["slim_minus_dense"]["pgd_transfer"] == pytest.approx(
        r["slim"]["accuracy_under"]["pgd_transfer"] - r["dense"]["accuracy_under"]["pgd_transfer"])
    assert r["dense"]["accuracy"] == pytest.approx(evaluate(trained, Subset(digits.test, range(32)))["accuracy"])
