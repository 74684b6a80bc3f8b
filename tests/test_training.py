import torch
from torch.utils.data import Subset

from edgeslim.models import build_model
from edgeslim.training import Callback, TrainConfig, evaluate, fit


def test_fit_learns_digits_and_is_seeded(digits):
    cfg = TrainConfig(epochs=2, batch_size=64, lr=0.05)
    small = Subset(digits.train, range(512))
    a = build_model("zoo:resnet20")
    torch.manual_seed(1)
    b = build_model("zoo:resnet20")
    b.load_state_dict(a.state_dict())
    ra = fit(a, small, digits.test, cfg, progress=False)
    rb = fit(b, small, digits.test, cfg, progress=False)
    assert ra["history"][-1]["loss"] == rb["history"][-1]["loss"]  # same seed -> same run
    assert ra["history"][-1]["loss"] < ra["history"][0]["loss"]
    assert evaluate(a, digits.test)["accuracy"] > 20.0  # well above the 10 % of guessing


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
