"""The loop hooks the training-efficiency methods rely on: indices, forward/targets overrides, epoch-based LR."""
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import Subset

from edgeslim.models import build_model
from edgeslim.training import Callback, TrainConfig, evaluate, fit
from edgeslim.training.efficiency import training_cost
from edgeslim.training.per_sample import IndexedDataset


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny():
    torch.manual_seed(0)
    return build_model("zoo:mcifarnet", num_classes=10, width=0.125)


def test_indices_forward_and_soft_targets_reach_the_loss(digits):
    data = IndexedDataset(Subset(digits.train_plain, range(64)))
    seen, losses = [], []

    class Uniform(Callback):
        def forward(self, state, x, y):
            seen.extend(state.batch_indices.tolist())
            return state.model(x)

        def targets(self, state, x, y, logits):
            return torch.full_like(logits, 1 / logits.shape[1])

        def on_epoch_end(self, state, record):
            losses.append(record["loss"])

    model = tiny()
    probe = model.fc.register_forward_hook(lambda m, i, out: losses.append(
        F.cross_entropy(out, torch.full_like(out, 0.1)).item()))
    fit(model, data, None, TrainConfig(epochs=1, batch_size=64, lr=0.0), [Uniform()], progress=False)
    probe.remove()
    assert sorted(seen) == list(range(64))
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)  # the epoch loss is the loss against the soft targets
    assert evaluate(model, data)["samples"] == 64         # evaluation accepts (x, y, index) too


def test_two_overrides_of_one_hook_are_refused(digits):
    class Smooth(Callback):
        def targets(self, state, x, y, logits):
            return F.one_hot(y, 10).float()

    with pytest.raises(RuntimeError, match="targets"):
        fit(tiny(), Subset(digits.train, range(16)), None, TrainConfig(epochs=1), [Smooth(), Smooth()], progress=False)


def test_lr_schedule_follows_epochs_when_a_callback_shrinks_or_grows_the_epoch(digits):
    full = Subset(digits.train_plain, range(128))

    class Resize(Callback):
        def on_epoch_start(self, state):
            state.train_set = Subset(full, list(range(32)) if state.epoch == 0 else list(range(128)) * 2)

    lrs = []

    class Probe(Callback):
        def on_step_end(self, state):
            lrs.append((state.epoch, state.optimizer.param_groups[0]["lr"]))

    cfg = TrainConfig(epochs=2, batch_size=16, lr=0.1, schedule="step", milestones=(1,), gamma=0.1)
    result = fit(tiny(), full, None, cfg, [Resize(), Probe()], progress=False)
    assert [r["samples"] for r in result["history"]] == [32, 256]
    # the step schedule's milestone falls after the first (short) epoch and not again in the long one
    assert [e for e, _ in lrs] == [0] * 2 + [1] * 16
    assert [lr for _, lr in lrs] == pytest.approx([0.1] * 2 + [0.01] * 16)
    cost = training_cost(result, [], train_macs_per_sample=1000)
    assert cost.samples_trained == 288 and cost.flops == 2 * 3 * 288 * 1000


def test_pruned_subsets_keep_the_augmentation_changing_per_epoch(digits):
    from edgeslim.training.per_sample import EpochSubset, with_indices

    view = EpochSubset(with_indices(digits.train), [5, 6])
    try:
        view.set_epoch(3)
        assert digits.train.epoch == 3
        a = view[0][0]
        view.set_epoch(4)
        assert not torch.equal(a, view[0][0]) and view[0][2] == 5   # a new crop; the index of the whole set
    finally:
        digits.train.set_epoch(0)
