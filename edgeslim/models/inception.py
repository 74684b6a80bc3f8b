"""Inception nets for compact architecture growth (Tian 2020, ch. 4.2 and appendix A).

* ``InceptionNet`` -- GoogLeNet (InceptionV1) with the thesis's two changes: every 5x5 conv is two
  3x3 convs, and every conv is bias-free and followed by BatchNorm (no scale, as the Keras code's
  ``scale=False``: the BN weight is frozen at 1) and ReLU. Branches are concatenated, so pruning may
  give every branch any width. The pool branch is a 3x3/1 average pool (padding excluded) + 1x1 conv.
* Stages are counted in modules, ``stages=(n3, n4, n5)`` (28x28, 14x14, 7x7 maps at 224x224 input).
  The module-copy growing rule appends a copy of a stage's last module; starting from InceptionV1's
  (2, 5, 2) the appended modules are 3b, 4e and 5b (``stage_modules``).
* ``Inception-N`` is N conv + FC layers deep: 3 stem convs + 3 per module (longest path) + 1 FC.
  ``TABLE_4_1`` lists the thesis's grown nets; Inception-88 = (10, 8, 10), 25.1 M params, 10.7 GFLOPs.
* ``stem="cifar"`` gives small-input versions (32x32: two 3x3 stem convs and one 2x2 max-pool, maps
  16/8/4) with a ``width`` multiplier, for experiments on digits / CIFAR.
* Auxiliary heads (thesis: after the first and before the last module of stage 4) run only in
  training mode; their logits are left in ``aux_outputs`` for ``AuxLoss``. ``drop_aux`` removes them
  (before pruning or export).

``grow`` / ``grow_search`` implement the greedy growing of Algorithm 3 with its stopping rule.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..training.loop import Callback
from . import register_zoo

__all__ = [
    "V1_MODULES", "TABLE_4_1", "ConvBN", "InceptionModule", "InceptionNet", "stage_modules", "inception_depth",
    "grow", "grow_search", "GrowthStep", "GrowthResult", "AuxLoss",
]

# InceptionV1 widths (name: 1x1, 3x3 reduce, 3x3, 5x5 reduce, 5x5 / double-3x3 output, pool proj).
V1_MODULES: dict[str, tuple[int, int, int, int, int, int]] = {
    "3a": (64, 96, 128, 16, 32, 32), "3b": (128, 128, 192, 32, 96, 64),
    "4a": (192, 96, 208, 16, 48, 64), "4b": (160, 112, 224, 24, 64, 64), "4c": (128, 128, 256, 24, 64, 64),
    "4d": (112, 144, 288, 32, 64, 64), "4e": (256, 160, 320, 32, 128, 128),
    "5a": (256, 160, 320, 32, 128, 128), "5b": (384, 192, 384, 48, 128, 128),
}
_STAGES = {3: ["3a", "3b"], 4: ["4a", "4b", "4c", "4d", "4e"], 5: ["5a", "5b"]}
V1_STAGES = (2, 5, 2)

# Table 4-1 of the thesis (ImageNet, 1000 classes): name -> (stages, params, FLOPs = 2 x MACs, top-1 %).
TABLE_4_1: dict[str, tuple[tuple[int, int, int], float, float, float]] = {
    "inception-v1-bn": ((2, 5, 2), 6.7e6, 3.0e9, 70.64), "inception-34": ((3, 5, 2), 7.1e6, 3.7e9, 71.12),
    "inception-37": ((3, 5, 3), 8.6e6, 3.8e9, 71.75), "inception-40": ((4, 5, 3), 9.0e6, 4.5e9, 71.97),
    "inception-43": ((4, 6, 3), 10.0e6, 4.9e9, 72.03), "inception-46": ((4, 7, 3), 11.0e6, 5.3e9, 73.45),
    "inception-49": ((4, 7, 4), 12.5e6, 5.4e9, 73.51), "inception-52": ((4, 7, 5), 14.0e6, 5.6e9, 73.69),
    "inception-55": ((4, 8, 5), 15.0e6, 6.0e9, 73.91), "inception-58": ((5, 8, 5), 15.5e6, 6.6e9, 74.27),
    "inception-61": ((6, 8, 5), 15.9e6, 7.3e9, 74.20), "inception-64": ((7, 8, 5), 16.3e6, 8.0e9, 74.42),
    "inception-67": ((7, 8, 6), 17.8e6, 8.1e9, 74.58), "inception-70": ((7, 8, 7), 19.3e6, 8.3e9, 74.54),
    "inception-73": ((8, 8, 7), 19.8e6, 8.9e9, 74.64), "inception-76": ((8, 8, 8), 21.3e6, 9.1e9, 74.60),
    "inception-79": ((8, 8, 9), 22.8e6, 9.2e9, 74.59), "inception-82": ((9, 8, 9), 23.2e6, 9.9e9, 74.77),
    "inception-85": ((9, 8, 10), 24.7e6, 10.1e9, 74.60), "inception-88": ((10, 8, 10), 25.1e6, 10.7e9, 75.01),
    "inception-91": ((10, 8, 11), 26.6e6, 10.9e9, 74.71),
}


def stage_modules(stages: Sequence[int]) -> list[list[str]]:
    """InceptionV1 module names per stage after growth: extra modules copy the stage's last V1 module."""
    if len(stages) != 3 or min(stages) < 1:
        raise ValueError(f"stages must be three positive module counts (n3, n4, n5), got {tuple(stages)}")
    out = []
    for n, names in zip(stages, _STAGES.values()):
        out.append(names[:n] + [names[-1]] * max(0, n - len(names)))
    return out


def inception_depth(stages: Sequence[int], stem_convs: int = 3) -> int:
    """Conv + FC layers on the longest path (thesis L872): stem + 3 per module + the classifier."""
    return stem_convs + 3 * sum(stages) + 1


class ConvBN(nn.Module):
    """Bias-free conv -> BatchNorm (weight frozen at 1 unless ``bn_scale``) -> ReLU (the Keras Conv2D_bn)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, padding: int | None = None,
                 bn_scale: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, kernel // 2 if padding is None else padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=1e-5, momentum=0.1)
        if not bn_scale:
            self.bn.weight.requires_grad_(False)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(x)))


class InceptionModule(nn.Module):
    """Four concatenated branches: 1x1 | 1x1 -> 3x3 | 1x1 -> 3x3 -> 3x3 (or 5x5) | avgpool -> 1x1."""

    def __init__(self, cin: int, widths: Sequence[int], double: bool = True, bn_scale: bool = False):
        super().__init__()
        c1, r3, c3, r5, c5, pp = widths
        self.branch1 = ConvBN(cin, c1, 1, bn_scale=bn_scale)
        self.branch3 = nn.Sequential(ConvBN(cin, r3, 1, bn_scale=bn_scale), ConvBN(r3, c3, 3, bn_scale=bn_scale))
        if double:  # the thesis's change: 5x5 -> 3x3 (as wide as its reduce) + 3x3
            self.branch5 = nn.Sequential(ConvBN(cin, r5, 1, bn_scale=bn_scale), ConvBN(r5, r5, 3, bn_scale=bn_scale),
                                         ConvBN(r5, c5, 3, bn_scale=bn_scale))
        else:
            self.branch5 = nn.Sequential(ConvBN(cin, r5, 1, bn_scale=bn_scale), ConvBN(r5, c5, 5, bn_scale=bn_scale))
        self.pool = nn.AvgPool2d(3, 1, 1, count_include_pad=False)  # Keras 'same' average excludes padding
        self.branch_pool = ConvBN(cin, pp, 1, bn_scale=bn_scale)
        self.out_channels = c1 + c3 + c5 + pp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1(x), self.branch3(x), self.branch5(x), self.branch_pool(self.pool(x))], 1)


class AuxHead(nn.Module):
    """GoogLeNet auxiliary classifier: avgpool -> 1x1 ConvBN 128 -> FC 1024 + ReLU -> FC classes."""

    def __init__(self, cin: int, num_classes: int, width: float = 1.0):
        super().__init__()
        hidden = _scaled(128, width)
        self.pool = nn.AdaptiveAvgPool2d(4)  # 14x14 -> 4x4 as the thesis's 5x5/3 pool; any size elsewhere
        self.conv = ConvBN(cin, hidden, 1)
        self.fc1 = nn.Linear(hidden * 16, _scaled(1024, width))
        self.fc2 = nn.Linear(_scaled(1024, width), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.conv(self.pool(x)), 1)
        return self.fc2(F.relu(self.fc1(x)))


def _scaled(c: int, width: float) -> int:
    return max(1, int(math.ceil(round(c * width, 6))))


class InceptionNet(nn.Module):
    def __init__(self, stages: Sequence[int] = V1_STAGES, num_classes: int = 1000, stem: str = "imagenet",
                 width: float = 1.0, double: bool = True, aux_logits: bool = False, bn_scale: bool = False,
                 in_channels: int = 3):
        super().__init__()
        if stem not in ("imagenet", "cifar"):
            raise ValueError(f"stem must be 'imagenet' (224x224 input) or 'cifar' (32x32 input), not {stem!r}")
        self.stages = tuple(int(s) for s in stages)
        names = stage_modules(self.stages)
        w = lambda c: _scaled(c, width)
        if stem == "imagenet":
            self.stem = nn.Sequential(OrderedDict(
                conv1=ConvBN(in_channels, w(64), 7, 2, 3, bn_scale), pool1=nn.MaxPool2d(3, 2, 1),
                conv2_reduce=ConvBN(w(64), w(64), 1, bn_scale=bn_scale), conv2=ConvBN(w(64), w(192), 3, bn_scale=bn_scale),
                pool2=nn.MaxPool2d(3, 2, 1)))
            self.stem_convs = 3
            down = lambda: nn.MaxPool2d(3, 2, 1)
        else:
            self.stem = nn.Sequential(OrderedDict(
                conv1=ConvBN(in_channels, w(64), 3, bn_scale=bn_scale), conv2=ConvBN(w(64), w(192), 3, bn_scale=bn_scale),
                pool2=nn.MaxPool2d(2, 2)))
            self.stem_convs = 2
            down = lambda: nn.MaxPool2d(2, 2)
        c = w(192)
        blocks: list[nn.Module] = []
        for s, stage_names in zip((3, 4, 5), names):
            modules = OrderedDict()
            for i, name in enumerate(stage_names):
                label = f"inception_{s}{chr(ord('a') + i)}"
                module = InceptionModule(c, [w(v) for v in V1_MODULES[name]], double, bn_scale)
                modules[label] = module
                c = module.out_channels
            blocks.append(nn.Sequential(modules))
        self.stage3, self.stage4, self.stage5 = blocks
        self.pool3, self.pool4 = down(), down()
        self.avgpool = nn.AdaptiveAvgPool2d(1)     # pool5: 7x7 -> the 1024-d latent space
        self.fc = nn.Linear(c, num_classes)        # loss3/classifier
        self.latent_size = c
        self.aux1 = self.aux2 = None
        if aux_logits:  # after the first and before the last stage-4 module
            self.aux1 = AuxHead(self.stage4[0].out_channels, num_classes, width)
            self.aux2 = AuxHead(self.stage4[-1].branch1.conv.in_channels, num_classes, width)
        self.aux_outputs: list[torch.Tensor] = []
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    @property
    def depth(self) -> int:
        return inception_depth(self.stages, self.stem_convs)

    def drop_aux(self) -> "InceptionNet":
        """Remove the auxiliary heads (in place); returns self."""
        self.aux1 = self.aux2 = None
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        aux = self.training and self.aux1 is not None
        self.aux_outputs = []
        x = self.pool3(self.stage3(self.stem(x)))
        last = len(self.stage4) - 1
        for i, module in enumerate(self.stage4):
            if aux and i == last:
                before_last = self.aux2(x)
            x = module(x)
            if aux and i == 0:
                self.aux_outputs.append(self.aux1(x))
        if aux:
            self.aux_outputs.append(before_last)
        x = self.stage5(self.pool4(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


# ----------------------------------------------------------------------------------------------
# Auxiliary loss
# ----------------------------------------------------------------------------------------------

class AuxLoss(Callback):
    """Adds ``weight`` x cross-entropy of each auxiliary head (GoogLeNet's 0.3; the thesis gives none)."""

    def __init__(self, model: InceptionNet, weight: float = 0.3):
        self.model, self.weight = model, weight

    def extra_loss(self, state, x, y, logits):
        outs = getattr(self.model, "aux_outputs", [])
        if not outs:
            return None
        return self.weight * sum(F.cross_entropy(o, y) for o in outs)


# ----------------------------------------------------------------------------------------------
# Greedy growing (Algorithm 3)
# ----------------------------------------------------------------------------------------------

def grow(stages: Sequence[int], stage: int) -> tuple[int, int, int]:
    """The mutation of Algorithm 3: one more module in ``stage`` (0, 1, 2 for stages 3, 4, 5)."""
    if stage not in (0, 1, 2):
        raise ValueError(f"stage must be 0, 1 or 2 (the 28x28, 14x14 and 7x7 stages), not {stage}")
    out = list(stages)
    out[stage] += 1
    return tuple(out)


@dataclass
class GrowthStep:
    step: int
    candidates: list[dict[str, Any]]   # [{stages, accuracy}]
    chosen: tuple[int, int, int]
    accuracy: float
    improved: bool                     # beat the best accuracy so far by more than min_gain


@dataclass
class GrowthResult:
    start: tuple[int, int, int]
    start_accuracy: float
    steps: list[GrowthStep] = field(default_factory=list)
    stopped: str = ""

    @property
    def final(self) -> tuple[int, int, int]:
        return self.steps[-1].chosen if self.steps else self.start

    @property
    def best(self) -> tuple[tuple[int, int, int], float]:
        pairs = [(self.start, self.start_accuracy)] + [(s.chosen, s.accuracy) for s in self.steps]
        return max(pairs, key=lambda p: p[1])

    def to_dict(self) -> dict[str, Any]:
        return {"start": list(self.start), "start_accuracy": self.start_accuracy, "stopped": self.stopped,
                "best": {"stages": list(self.best[0]), "accuracy": self.best[1]},
                "steps": [{"step": s.step, "chosen": list(s.chosen), "accuracy": s.accuracy, "improved": s.improved,
                           "candidates": [{"stages": list(c["stages"]), "accuracy": c["accuracy"]}
                                          for c in s.candidates]} for s in self.steps]}


def grow_search(evaluate: Callable[[tuple[int, int, int]], float], start: Sequence[int] = V1_STAGES,
                max_new: int = 20, patience: int = 2, min_gain: float = 0.0,
                within_budget: Callable[[tuple[int, int, int]], bool] | None = None,
                progress: bool = True) -> GrowthResult:
    """Algorithm 3: at each step try one more module in every stage, keep the most accurate candidate.

    ``evaluate(stages)`` quickly trains such a net and returns its validation accuracy. The best
    accuracy is reset every step (the thesis kept growing through non-monotone steps, Table 4-1).
    Growing stops after ``max_new`` modules, when no candidate fits ``within_budget`` (e.g. a memory
    or MACs bound), or after ``patience`` consecutive steps that do not beat the best accuracy so far
    by more than ``min_gain`` points ("no noticeable accuracy gain after two consecutive iterations").
    """
    from tqdm.auto import tqdm

    current = tuple(int(s) for s in start)
    result = GrowthResult(current, float(evaluate(current)))
    best = result.start_accuracy
    stale = 0
    bar = tqdm(total=max_new, desc="grow", unit="module", disable=not progress, leave=False)
    for step in range(1, max_new + 1):
        options = [grow(current, s) for s in range(3)]
        options = [o for o in options if within_budget is None or within_budget(o)]
        if not options:
            result.stopped = "budget"
            break
        candidates = [{"stages": o, "accuracy": float(evaluate(o))} for o in options]
        pick = max(candidates, key=lambda c: c["accuracy"])
        improved = pick["accuracy"] > best + min_gain
        result.steps.append(GrowthStep(step, candidates, pick["stages"], pick["accuracy"], improved))
        current = pick["stages"]
        bar.update()
        if improved:
            best, stale = pick["accuracy"], 0
        else:
            stale += 1
            if stale >= patience:
                result.stopped = f"no gain in {patience} consecutive steps"
                break
    else:
        result.stopped = "max_new"
    bar.close()
    return result


# ----------------------------------------------------------------------------------------------
# Zoo names
# ----------------------------------------------------------------------------------------------

register_zoo("inception", input_shape=(1, 3, 224, 224))(lambda num_classes=1000, **kw: InceptionNet(num_classes=num_classes, **kw))
for _name, (_stages, *_rest) in TABLE_4_1.items():
    register_zoo(_name, input_shape=(1, 3, 224, 224))(
        lambda num_classes=1000, _s=_stages, **kw: InceptionNet(_s, num_classes, **kw))
register_zoo("inception-cifar")(
    lambda num_classes=10, stages=V1_STAGES, width=0.25, **kw: InceptionNet(stages, num_classes, stem="cifar",
                                                                             width=width, **kw))
