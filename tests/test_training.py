import pytest
import torch
from torch.utils.data import Subset

from edgeslim.models import build_model
from edgeslim.training import Callback, TrainConfig, evaluate, fit


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_fit_learns_digits(digits):
    model = build_model("zoo:resnet20")
    r = fit(model, Subset(digits.train, range(512)), None, TrainConfig(epochs=3, batch_size=32, lr=0.05),
            progress=False)
    assert r["history"][-1]["loss"] < r["history"][0]["loss"]
    assert evaluate(model, digits.test)["accuracy"] > 30.0  # well above the 10 % of guessing (seeds give 45-75)


def test_fit_is_seeded(digits):
    cfg = TrainConfig(epochs=2, batch_size=32, lr=0.05)
    small = Subset(digits.train, range(96))
    a = build_model("zoo:resnet20", width=4)
    torch.manual_seed(1)
    b = build_model("zoo:resnet20", width=4)
    b.load_state_dict(a.state_dict())
    ra = fit(a, small, None, cfg, progress=False)
    rb = fit(b, small, None, cfg, progress=False)
    assert ra["history"][-1]["loss"] == rb["history"][-1]["loss"]  # same seed -> same run
    assert torch.equal(a.fc.weight, b.fc.weight)


def test_callback_adds_loss_and_sees_epochs(digits):
    seen = []

    class Probe(Callback):
        def extra_loss(self, state, x, y, logits):
            return 0.0 * logits.sum()

        def on_epoch_end(self, state, record):
            seen.append(record["epoch"])

    fit(build_model("zoo:resnet20"), Subset(digits.train, range(64)), None, TrainConfig(epochs=2), [Probe()],
        progress=False)
    assert seen == [1, 2]
