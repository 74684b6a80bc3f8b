"""Deep-LDA pushing (Tian ch. 4): the loss terms, class-balanced batches, training with the callback."""
import numpy as np
import pytest
import scipy.linalg
import torch
from sklearn.datasets import load_digits
from torch.utils.data import Subset

from edgeslim.compress.criteria.lda import clean_neurons, scatter_matrices
from edgeslim.data import targets_of
from edgeslim.models import build_model
from edgeslim.training import TrainConfig, fit
from edgeslim.training.push import ClassBalancedBatchSampler, PushLoss, push_terms


@pytest.fixture(scope="module")
def pixels():
    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float64)[:400]
    y = torch.tensor(d.target)[:400]
    return x[:, clean_neurons(x)], y


def test_push_terms_match_their_definitions(pixels):
    x, y = pixels
    ridge = 1e-3
    terms = push_terms(x, y, ridge=ridge)
    sw, sb, sa = (m.numpy() for m in scatter_matrices(x, y))
    d = sw.shape[0]
    swr = sw + ridge * np.trace(sw) / d * np.eye(d)
    eig = scipy.linalg.eigh(sb, swr, eigvals_only=True)          # generalised eigenvalues, eq. 4.5
    assert (eig > 1e-8 * eig.max()).sum() == 9                   # rank(Sb) = C - 1
    assert float(terms["lda"]) == pytest.approx(9 / np.sort(eig)[-9:].sum(), rel=1e-6)   # eq. 4.6
    off_entries = d * (d - 1)                                    # L1 norms taken as means over the entries
    cov = sa / len(x)
    assert float(terms["cov"]) == pytest.approx(np.abs(cov - np.diag(np.diag(cov))).sum() / off_entries, rel=1e-9)
    a = np.linalg.solve(swr, sb)                                 # eq. 4.7 above, eq. 4.9 below
    assert float(terms["align"]) == pytest.approx(np.abs(a - np.diag(np.diag(a))).sum() / off_entries, rel=1e-6)


def test_push_terms_are_differentiable(pixels):
    x, y = pixels
    h = x.clone().requires_grad_(True)
    total = sum(push_terms(h, y).values())
    total.backward()
    assert torch.isfinite(h.grad).all() and h.grad.abs().sum() > 0


def test_class_balanced_batches(digits):
    targets = targets_of(digits.train)
    sampler = ClassBalancedBatchSampler(targets, batch_size=64, per_class=8, seed=1)
    batches = list(sampler)
    assert len(batches) == len(sampler) == -(-len(targets) // 64)
    for b in batches:
        counts = torch.bincount(targets[b], minlength=10)
        assert len(b) == 64 and sorted(counts[counts > 0].tolist()) == [8] * 8   # 8 classes x 8 samples
    seen = {i for b in batches for i in b}
    assert len(seen) > 0.9 * len(targets)           # about one pass over the data per epoch
    with pytest.raises(ValueError, match="batch_size"):
        ClassBalancedBatchSampler(targets, batch_size=12, per_class=8)


def test_push_callback_trains_with_balanced_batches(digits):
    model = build_model("zoo:resnet20")
    push = PushLoss(model, gamma=1.0, lam=0.01, beta=0.01, example=torch.randn(1, 3, 32, 32))
    assert push.decision == "fc"
    seen_batches = []
    original = push.extra_loss

    def spy(state, x, y, logits):
        seen_batches.append(torch.bincount(y, minlength=10))
        return original(state, x, y, logits)

    push.extra_loss = spy
    r = fit(model, Subset(digits.train, range(320)), None, TrainConfig(epochs=1, batch_size=40), [push],
            progress=False)
    record = r["history"][0]
    assert {"push_lda", "push_cov", "push_align"} <= set(record)
    assert all(np.isfinite(record[k]) for k in ("loss", "push_lda", "push_cov", "push_align"))
    assert all(sorted(c[c > 0].tolist()) == [8] * 5 for c in seen_batches)
    assert push.handle is None                      # the hook is gone after the last epoch
