"""The iterative deep-LDA pruning loop of the Tian thesis (Algorithm 1, and Algorithm 2 with pushing).

Each step: latent LDA + M' selection + deconvnet tracing on the current model, the per-layer
threshold ``u >= eta * std(non-zero u)`` with ``eta`` raised every step (0.1, 0.2, ... by default,
L452), physical removal through the slimming engine, then re-training with the surviving weights
(with the push loss when ``push`` is given: push-and-prune). Every step's model is a member of the
**family**: its accuracy before and after re-training, MACs, parameters and measured latency ratio.

Each member is described against the *original* architecture: the kept channels of every step are
composed into one plan, so ``apply_plan(build_model(spec), member.plan)`` + the member's weights
rebuild it (checked exactly at every step).
"""
from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

__all__ = ["FamilyMember", "FamilyResult", "lda_family", "torch_latency_ratio"]


@dataclass
class FamilyMember:
    step: int
    eta: float
    m_prime: int
    channels: float                  # kept / dense channels of the prunable groups
    macs: int
    params: int
    accuracy_before_finetune: float
    accuracy: float
    latency_ratio: float             # slim / dense p50 latency, torch on this CPU, batch 1, interleaved
    plan: dict[str, Any] = field(repr=False, default_factory=dict)
    checkpoint: str | None = None
    timing: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("plan")
        return d


@dataclass
class FamilyResult:
    dense: dict[str, Any]
    members: list[FamilyMember]
    stopped: str

    def to_dict(self) -> dict[str, Any]:
        return {"dense": self.dense, "members": [m.to_dict() for m in self.members], "stopped": self.stopped}


def torch_latency_ratio(dense: nn.Module, slim: nn.Module, example: torch.Tensor, runs: int = 50,
                        warmup: int = 5) -> tuple[float, dict[str, Any]]:
    """Slim / dense median latency of eager torch inference, measured interleaved in this process."""
    from ..runtime import interleaved_latency

    dense.eval(), slim.eval()

    def runner(m):
        def run():
            with torch.no_grad():
                m(example)
        return run

    stats = interleaved_latency({"dense": runner(dense), "slim": runner(slim)}, runs=runs, warmup=warmup)
    return stats["slim"].p50 / stats["dense"].p50, {k: v.to_dict() for k, v in stats.items()}


def _keep_by_threshold(graph, scores: dict[str, torch.Tensor], eta: float, min_keep: float) -> dict[str, np.ndarray]:
    """Kept channel indices of every group that loses channels under eq. 3.13 (scores = u / std)."""
    keep = {}
    for group in graph.prunable_groups:
        z = scores[group.id]
        mask = (z >= eta) & (z > 0)
        floor = max(1, int(np.ceil(min_keep * group.size)))
        if int(mask.sum()) < floor:
            mask = torch.zeros_like(mask)
            mask[z.argsort(descending=True)[:floor]] = True
        if not mask.all():
            keep[group.id] = mask.nonzero().flatten().numpy()
    return keep


def lda_family(model: nn.Module, example: torch.Tensor, train_set: Dataset, eval_set: Dataset, calib_set: Dataset,
               etas: Sequence[float] = tuple(round(0.1 * i, 1) for i in range(1, 11)), finetune=None,
               push: dict[str, float] | None = None, t_acc: float | None = None, t_macs: float | None = None,
               min_keep: float = 0.0, combine: str = "sum", criterion_options: dict[str, Any] | None = None,
               spec: str | None = None, spec_kwargs: dict[str, Any] | None = None, out_dir: str | Path | None = None,
               latency_runs: int = 50, progress: bool = True) -> FamilyResult:
    """Derive a family of slim models from ``model`` (never modified) by iterative deep-LDA pruning.

    ``etas``: the threshold multiplier of each step. ``finetune``: a ``TrainConfig`` for the
    re-training after each step (``None``: no re-training). ``push``: ``PushLoss`` keyword arguments
    (``gamma``, ``lam``, ``beta``, ``ridge``) to re-train with the push objective. Stops when the
    accuracy after re-training falls below ``t_acc`` (percent) or the MACs ratio reaches ``t_macs``.
    ``calib_set``: labelled images for the LDA and the tracing. With ``spec`` and ``out_dir`` every
    member is saved as ``out_dir/step{k}.pt`` (loadable with ``edgeslim.models.load_model``).
    """
    from ..metrics import count
    from ..training import evaluate, fit
    from . import apply_plan, make_plan, trace
    from .criteria.lda import group_utilities, lda_utilities, normalized_utilities

    opts = dict(criterion_options or {})
    base = copy.deepcopy(model).eval()
    graph0 = trace(base, example)
    original = {g.id: np.arange(g.size) for g in graph0.prunable_groups}
    dense_cost = count(base, example)
    channels0 = sum(g.size for g in graph0.prunable_groups)
    dense = {"accuracy": evaluate(base, eval_set)["accuracy"], "macs": dense_cost.macs, "params": dense_cost.params}
    members: list[FamilyMember] = []
    current, kept = base, dict(original)
    stopped = "etas exhausted"
    for step, eta in enumerate(etas, 1):
        timing: dict[str, float] = {}
        t = time.perf_counter()
        lda = lda_utilities(current, calib_set, progress=progress, **opts)
        graph = trace(current, example)
        scores = normalized_utilities(group_utilities(graph, lda.utilities, combine))
        keep = _keep_by_threshold(graph, scores, eta, min_keep)
        timing["scoring_s"] = time.perf_counter() - t
        if not keep:
            continue  # nothing falls below this eta: try the next one
        t = time.perf_counter()
        slim = apply_plan(current, make_plan(graph, keep))
        for gid, k in keep.items():  # compose: indices into the current group -> original channels
            kept[gid] = kept[gid][k]
        plan = make_plan(graph0, {g: k for g, k in kept.items() if len(k) < len(original[g])})
        _check_composed_plan(base, plan, slim, example, apply_plan)
        timing["surgery_s"] = time.perf_counter() - t
        before = evaluate(slim, eval_set)["accuracy"]
        t = time.perf_counter()
        if finetune is not None and finetune.epochs > 0:
            callbacks = []
            if push:
                from ..training.push import PushLoss

                callbacks.append(PushLoss(slim, decision=lda.decision, **push))
            fit(slim, train_set, None, finetune, callbacks, progress=progress)
        timing["finetune_s"] = time.perf_counter() - t
        slim.eval()
        after = evaluate(slim, eval_set)["accuracy"]
        cost = count(slim, example)
        ratio, _ = torch_latency_ratio(base, slim, example, runs=latency_runs)
        member = FamilyMember(step, float(eta), len(lda.selection.selected),
                              sum(len(k) for k in kept.values()) / channels0, cost.macs, cost.params, before, after,
                              ratio, plan.to_dict(), timing=timing)
        if spec and out_dir:
            from ..models import save_checkpoint

            member.checkpoint = str(save_checkpoint(
                Path(out_dir) / f"step{step}.pt", slim, spec, spec_kwargs, tuple(example.shape), plan=plan.to_dict(),
                meta={"family_step": step, "eta": float(eta), "accuracy": after}))
        members.append(member)
        current = slim
        if t_acc is not None and after < t_acc:
            stopped = f"accuracy {after:.2f} % fell below t_acc={t_acc}"
            break
        if t_macs is not None and cost.macs <= t_macs * dense_cost.macs:
            stopped = f"MACs ratio {cost.macs / dense_cost.macs:.3f} reached t_macs={t_macs}"
            break
    return FamilyResult(dense, members, stopped)


def _check_composed_plan(base: nn.Module, plan, slim: nn.Module, example: torch.Tensor, apply_plan) -> None:
    """The composed plan must rebuild exactly the slim model: same shapes, same outputs."""
    rebuilt = apply_plan(base, plan)
    try:
        rebuilt.load_state_dict(slim.state_dict())
    except RuntimeError as exc:
        raise RuntimeError(f"the composed pruning plan does not rebuild the slim model's shapes: {exc}") from None
    rebuilt.eval(), slim.eval()
    with torch.no_grad():
        a, b = rebuilt(example), slim(example)
    if not torch.allclose(a, b, rtol=1e-4, atol=1e-5):
        raise RuntimeError("the composed pruning plan rebuilds a model that computes something else than the slim model")
