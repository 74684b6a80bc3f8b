"""PatchDrop (Raju ch. 5) with a real ViT on the digits data."""
import pytest
import torch
from torch.utils.data import Subset

import edgeslim
from edgeslim.models import build_model
from edgeslim.training import TrainConfig, evaluate, fit
from edgeslim.training.data_pruning import DynamicDataPruning
from edgeslim.training.patchdrop import PatchDrop, attention_saliency, kept_tokens


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def vit():
    torch.manual_seed(0)
    return build_model("zoo:vit_tiny", num_classes=10, dim=32, depth=2, heads=2)


@pytest.fixture(scope="module")
def small(digits):
    return Subset(digits.train, range(128)), Subset(digits.train_plain, range(128))


def test_saliency_is_the_teachers_cls_attention_over_patches(small):
    _, plain = small
    teacher = vit()
    sal = attention_saliency(teacher, plain)
    assert sal.shape == (128, 64)
    x = torch.stack([plain[i][0] for i in range(3)])
    assert torch.allclose(sal[:3], teacher.cls_attention(x), atol=1e-6)
    assert (sal > 0).all() and (sal.sum(1) < 1).all()  # softmax rows, minus the CLS token's own share


def test_keeps_the_requested_tokens_and_evaluates_on_full_images(small, digits):
    train, plain = small
    teacher = vit()
    pd = PatchDrop.from_teacher(teacher, train, drop=0.5, mode="nonsalient")
    assert pd.k == kept_tokens(64, 0.5) == 32 and pd.scored_samples == 128
    sal = attention_saliency(teacher, plain)
    top = torch.topk(sal[5], 32).indices.sort().values
    assert torch.equal(pd.keep_for(torch.tensor([5]))[0], top)             # the most salient patches stay
    kept_somewhere = set(pd.keep_table.flatten().tolist())
    assert set(pd.never_kept.tolist()) == set(range(64)) - kept_somewhere
    salient = PatchDrop(0.25, "salient", sal)
    low = torch.topk(sal[5], 48, largest=False).indices.sort().values
    assert torch.equal(salient.keep_for(torch.tensor([5]))[0], low)       # the most salient patches go
    rand = PatchDrop(0.5, "random", num_patches=64)
    a, b = rand.keep_for(torch.arange(4)), rand.keep_for(torch.arange(4))
    assert a.shape == (4, 32) and not torch.equal(a, b)                     # redrawn every iteration

    student = vit()
    tokens = []
    hook = student.blocks[0].register_forward_hook(lambda m, inp, out: tokens.append(inp[0].shape[1]))
    fit(student, train, None, TrainConfig(epochs=1, batch_size=64, optimizer="adamw", lr=1e-3), [pd], progress=False)
    assert tokens == [33, 33]                                               # K patches + CLS in training
    tokens.clear()
    evaluate(student, Subset(digits.test, range(10)))
    assert tokens == [65]                                                   # all 64 patches at evaluation
    hook.remove()
    full = edgeslim.count(student, torch.randn(1, 3, 32, 32)).macs
    half = edgeslim.count(student, (torch.randn(1, 3, 32, 32), torch.arange(32)[None])).macs
    assert 0.45 < half / full < 0.6   # linear layers scale with tokens, attention with tokens squared


def test_indices_stay_those_of_the_whole_set_under_data_pruning(small):
    train, plain = small
    seen = []

    class Recording(PatchDrop):
        def keep_for(self, index):
            seen.extend(index.tolist())
            return super().keep_for(index)

    pruning = DynamicDataPruning("random", prune=0.5, score_set=plain)
    pd = Recording(0.5, "nonsalient", torch.rand(128, 64))
    fit(vit(), train, None, TrainConfig(epochs=1, batch_size=64), [pruning, pd], progress=False)
    chosen = set(torch.nonzero(pruning.times_selected).flatten().tolist())
    assert len(seen) == 64 and set(seen) == chosen   # saliency looked up by the sample's place in the whole set


def test_bad_input():
    with pytest.raises(ValueError):
        PatchDrop(0.5, "nonsalient")          # needs saliency
    with pytest.raises(ValueError):
        PatchDrop(1.0, "random", num_patches=64)
    with pytest.raises(ValueError):
        attention_saliency(build_model("zoo:resnet20"), [])
