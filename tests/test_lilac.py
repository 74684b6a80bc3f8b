"""LILAC (Ganesh ch. 5) on the real digits data."""
import pytest
import torch
from torch.utils.data import Subset

from edgeslim.data import targets_of
from edgeslim.models import build_model
from edgeslim.training import TrainConfig, fit
from edgeslim.training.lilac import Lilac, compensated_targets


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_labels_are_revealed_on_schedule_with_balanced_pseudo_label_negatives(digits):
    lilac = Lilac(10, step=2, interval=3)
    assert lilac.il_epochs == 12                      # (10 - 2) / 2 intervals of 3 epochs
    assert [len(lilac.revealed(e)) for e in (0, 2, 3, 6, 9, 11, 12, 40)] == [2, 2, 4, 6, 8, 8, 10, 10]
    lilac.full, lilac.labels = digits.train, targets_of(digits.train)
    for epoch in (0, 6, 9):
        view = lilac.il_view(epoch)
        revealed = set(lilac.revealed(epoch).tolist())
        true = lilac.labels[view.indices]
        in_s = torch.tensor([int(c) in revealed for c in true])
        assert torch.equal(view.labels[in_s], true[in_s])           # S keeps its ground truth
        assert (view.labels[~in_s] == 9).all()                      # U carries the pseudo-label rho
        assert int(in_s.sum()) == int((~in_s).sum())                # U balanced to the size of S
        assert int(in_s.sum()) == sum(int((lilac.labels == c).sum()) for c in revealed)  # every S sample once
        per_hidden = torch.bincount(true[~in_s], minlength=10)[sorted(set(range(10)) - revealed)]
        assert per_hidden.max() - per_hidden.min() <= 1             # uniform prior over the hidden classes
    x, y, i = view[0]
    assert x.shape == (3, 32, 32) and int(i) == int(view.indices[0])


def test_compensation_smooths_exactly_the_previous_epochs_mistakes(digits):
    small = Subset(digits.train, range(200))
    torch.manual_seed(0)
    model = build_model("zoo:mcifarnet", num_classes=10, width=0.125)
    calls = []

    class Recording(Lilac):
        def targets(self, state, x, y, logits):
            before = self.previous.clone()
            out = super().targets(state, x, y, logits)
            calls.append((state.epoch, state.batch_indices.clone(), y.clone(), before, out))
            return out

    lilac = Recording(10, step=5, interval=1, epsilon=0.4)
    assert lilac.il_epochs == 1
    fit(model, small, None, TrainConfig(epochs=3, batch_size=50), [lilac], progress=False)
    smoothed = checked = 0
    for epoch, index, y, previous, out in calls:
        if epoch < 1:
            assert out is None
            continue
        wrong = (previous[index] >= 0) & (previous[index] != y)
        if out is None:
            assert not wrong.any()
            continue
        checked += 1
        expected = compensated_targets(y, 10, 0.4, wrong)
        assert torch.allclose(out, expected)
        assert torch.allclose(out[wrong].gather(1, y[wrong, None]), torch.full((int(wrong.sum()), 1), 0.4))
        assert torch.equal(out[~wrong], torch.nn.functional.one_hot(y[~wrong], 10).float())
        smoothed += int(wrong.sum())
    assert checked > 0 and smoothed == lilac.compensated > 0
    assert [s["samples"] for s in lilac.schedule][1:] == [200, 200]


def test_needs_enough_epochs_and_valid_settings(digits):
    with pytest.raises(ValueError, match="label introduction takes 12 epochs"):
        fit(build_model("zoo:mcifarnet", width=0.125), Subset(digits.train, range(20)), None,
            TrainConfig(epochs=12), [Lilac(10, step=2, interval=3)], progress=False)
    with pytest.raises(ValueError):
        Lilac(10, order=[0, 1, 2])
    assert Lilac(10, incremental=False).il_epochs == 0
