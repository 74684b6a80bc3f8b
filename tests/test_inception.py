"""Inception-N family of the Tian thesis (Table 4-1), the module-copy growing rule and its search."""
import pytest
import torch
from torch import nn
from torch.utils.data import Subset

import edgeslim
from edgeslim.models import build_model, default_input_shape
from edgeslim.models.inception import TABLE_4_1, AuxLoss, InceptionNet, grow, grow_search, stage_modules
from edgeslim.training import TrainConfig, fit


def thesis_counts(model: nn.Module):
    """Params and FLOPs as the thesis counts them: conv + FC weights and biases (BN and auxiliary heads
    excluded), FLOPs = 2 x MACs of one 224x224 image, MACs from edgeslim.count on the real module."""
    params = sum(p.numel() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))
                 for p in m.parameters(recurse=False))
    macs = edgeslim.count(model, torch.empty(1, 3, 224, 224, device="meta")).macs
    return params, 2 * macs


@pytest.mark.parametrize("name", ["inception-v1-bn", "inception-64", "inception-91"])
def test_table_4_1_rows_are_reproduced(name):
    stages, params, flops, _top1 = TABLE_4_1[name]
    with torch.device("meta"):  # shapes only: 25 M parameters need no memory
        model = build_model(f"zoo:{name}")
    p, f = thesis_counts(model)
    assert round(p / 1e6, 1) == pytest.approx(params / 1e6)   # published with one decimal
    assert round(f / 1e9, 1) == pytest.approx(flops / 1e9)
    assert model.stages == stages
    if name != "inception-v1-bn":
        assert model.depth == int(name.split("-")[1])         # Inception-N is N conv + FC layers deep


def test_inception_88_exact_counts_and_input_shape():
    with torch.device("meta"):
        model = build_model("zoo:inception-88")
    p, f = thesis_counts(model)
    assert p == 25_134_376 and f == 10_729_551_360           # 25.1 M, 10.7 GFLOPs (spec Appendix Z)
    assert model.latent_size == 1024
    assert default_input_shape("zoo:inception-88") == (1, 3, 224, 224)
    assert default_input_shape("zoo:inception-cifar") == (1, 3, 32, 32)


def test_growing_rule_copies_the_stage_s_last_v1_module():
    assert stage_modules((10, 8, 10)) == [["3a"] + ["3b"] * 9, ["4a", "4b", "4c", "4d"] + ["4e"] * 4,
                                          ["5a"] + ["5b"] * 9]
    assert grow((2, 5, 2), 1) == (2, 6, 2)
    # Table 4-1's search path adds one module per step, each row one grow() away from the previous
    rows = [stages for stages, *_ in TABLE_4_1.values()]
    assert all(any(grow(a, s) == b for s in range(3)) for a, b in zip(rows, rows[1:]))
    with pytest.raises(ValueError, match="stage"):
        grow((2, 5, 2), 3)


def test_grow_search_keeps_the_best_candidate_and_stops_after_two_flat_steps():
    # a made-up accuracy surface: stage 4 helps up to 7 modules, nothing helps after that
    def accuracy(stages):
        return 70 + min(stages[1], 7) - 0.1 * (stages[0] + stages[2])

    result = grow_search(accuracy, start=(2, 5, 2), max_new=10, progress=False)
    assert [s.chosen for s in result.steps[:2]] == [(2, 6, 2), (2, 7, 2)]
    assert result.best == ((2, 7, 2), accuracy((2, 7, 2)))
    assert len(result.steps) == 4 and result.stopped.startswith("no gain")
    budget = grow_search(accuracy, max_new=10, within_budget=lambda s: sum(s) <= 10, progress=False)
    assert budget.final == (2, 6, 2) and budget.stopped == "budget"


def test_small_inception_trains_on_digits_with_auxiliary_heads(digits):
    model = build_model("zoo:inception-cifar", stages=(1, 2, 1), width=0.125, aux_logits=True)
    model.train()
    model(torch.randn(2, 3, 32, 32))
    assert len(model.aux_outputs) == 2 and model.aux_outputs[0].shape == (2, 10)
    model.eval()
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10) and model.aux_outputs == []
    r = fit(model, Subset(digits.train, range(256)), None, TrainConfig(epochs=2, batch_size=32, lr=0.05),
            [AuxLoss(model)], progress=False)
    assert r["history"][-1]["loss"] < r["history"][0]["loss"]
    slim = model.drop_aux()
    assert slim.aux1 is None and not any("aux" in n for n, _ in slim.named_modules())


def test_bn_has_no_scale_as_in_the_keras_code():
    model = InceptionNet((1, 1, 1), num_classes=10, stem="cifar", width=0.125)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(not m.weight.requires_grad for m in bns)
