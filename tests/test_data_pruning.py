"""Dynamic data pruning (Raju ch. 4) on the real digits data."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import Subset

from edgeslim.models import build_model
from edgeslim.training import TrainConfig, fit
from edgeslim.training.data_pruning import DynamicDataPruning, categorize, parse_data_pruning
from edgeslim.training.per_sample import per_sample_pass


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def small(digits):
    return Subset(digits.train, range(300)), Subset(digits.train_plain, range(300))


def tiny():
    torch.manual_seed(0)
    return build_model("zoo:mcifarnet", num_classes=10, width=0.125)


def losses(model, data):
    return per_sample_pass(model, data, lambda m, x, y, _i: F.cross_entropy(m(x), y, reduction="none"))


def perturb(model, seed):
    with torch.no_grad():
        g = torch.Generator().manual_seed(seed)
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))


def test_ucb_follows_eqs_4_2_to_4_4_keeps_k_and_is_seeded(small):
    train, plain = small
    model = tiny()
    a = DynamicDataPruning("ucb", prune=0.7, c=2.0, seed=3, score_set=plain)
    b = DynamicDataPruning("ucb", prune=0.7, c=2.0, seed=3, score_set=plain)
    a.attach(train), b.attach(train)
    first = a.select(model, 0)
    assert torch.equal(first, b.select(model, 0))
    l0 = losses(model, plain)
    perturb(model, 1)  # the model moves between checkpoints
    second = a.select(model, 1)
    assert torch.equal(second, b.select(model, 1))
    l1 = losses(model, plain)
    var = 0.8 * (l1 - l0) ** 2                      # Eq. 4.3 with the previous EMA (= l0) and var0 = 0
    ema = 0.8 * l1 + 0.2 * l0                        # Eq. 4.2
    assert torch.allclose(a.var, var, atol=1e-5) and torch.allclose(a.ema, ema, atol=1e-5)
    k = round(0.3 * 300)
    assert len(second) == k == len(set(second.tolist()))
    expected = torch.topk(ema + 2.0 * var, k).indices   # Eq. 4.4: the k highest
    assert set(second.tolist()) == set(expected.tolist())


def test_egreedy_takes_the_greedy_part_then_explores_the_rest(small):
    train, plain = small
    model = tiny()
    cb = DynamicDataPruning("egreedy", prune=0.5, epsilon=0.2, score_set=plain)
    cb.attach(train)
    chosen = cb.select(model, 0)
    k = 150
    greedy = set(torch.topk(losses(model, plain), k - round(0.2 * k)).indices.tolist())
    assert len(chosen) == k and greedy <= set(chosen.tolist())


def test_random_needs_no_scoring_and_redraws(small):
    train, _ = small
    cb = DynamicDataPruning("random", prune=0.5)
    cb.attach(train)
    a, b = cb.select(None, 0), cb.select(None, 1)
    assert len(a) == len(b) == 150 and not torch.equal(a, b) and cb.scored_samples == 0


def test_fit_trains_each_epoch_on_the_subset_and_the_schedule_ends_on_time(small):
    train, plain = small
    cb = DynamicDataPruning("ema", prune=0.75, period=2, score_set=plain)
    result = fit(tiny(), train, None, TrainConfig(epochs=3, batch_size=32), [cb], progress=False)
    assert [r["samples"] for r in result["history"]] == [75, 75, 75]
    assert [c["epoch"] for c in cb.checkpoints] == [0, 2]
    assert cb.scored_samples == 600 and cb.scoring_s > 0
    assert int(cb.times_selected.sum()) == 150
    # the cosine runs over epochs: the last of the 3 steps of the short last epoch starts at 2 + 2/3 of 3 epochs
    assert result["history"][-1]["lr"] == pytest.approx(0.05 * 0.5 * (1 + math.cos(math.pi * (2 + 2 / 3) / 3)))


def test_parse_and_errors():
    cb = parse_data_pruning("ucb:0.7", period=5)
    assert (cb.method, cb.prune, cb.period) == ("ucb", 0.7, 5)
    for bad in ("ucb", "ucb:x", "nope:0.5", "ucb:1.0"):
        with pytest.raises(ValueError):
            parse_data_pruning(bad)


def test_categorize_never_sometimes_always():
    counts = torch.cat([torch.zeros(50), torch.full((40,), 10.0), torch.tensor([4.0, 5, 6, 5, 4, 6, 5, 5, 3, 7])])
    groups = categorize(counts.long(), checkpoints=10)
    assert groups["never"][:50].all() and groups["always"][50:90].all() and groups["sometimes"][90:].all()


def test_state_dict_lets_a_resumed_run_continue_on_the_same_subset(small, tmp_path):
    from types import SimpleNamespace

    train, _ = small
    a = DynamicDataPruning("random", prune=0.5, period=2)
    state = SimpleNamespace(epoch=0, train_set=train, model=None)
    a.on_epoch_start(state)
    torch.save(a.state_dict(), tmp_path / "cb.pt")
    b = DynamicDataPruning("random", prune=0.5, period=2)
    b.load_state_dict(torch.load(tmp_path / "cb.pt", weights_only=True))
    resumed = SimpleNamespace(epoch=1, train_set=train, model=None)   # a non-checkpoint epoch
    b.on_epoch_start(resumed)
    assert resumed.train_set.indices == state.train_set.indices and len(b.checkpoints) == 1


def test_by_class_keeps_the_same_fraction_of_every_class_by_the_criterion(small):
    from edgeslim.data import targets_of

    train, plain = small
    model = tiny()
    cb = DynamicDataPruning("loss", prune=0.5, score_set=plain, by_class=True)
    cb.attach(train)
    chosen = cb.select(model, 0)
    labels, loss = targets_of(plain), losses(model, plain)
    assert len(chosen) == 150
    for c in range(10):
        members = (labels == c).nonzero().flatten()
        picked = [i for i in chosen.tolist() if labels[i] == c]
        assert abs(len(picked) - len(members) / 2) <= 1                          # half of every class
        assert set(picked) == set(members[torch.topk(loss[members], len(picked)).indices].tolist())
