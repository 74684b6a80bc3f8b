"""Command-line options of the training-efficiency and robustness methods, shared by every training command.

``add_efficiency_args(parser)`` adds ``--data-pruning METHOD:RATE``, ``--caper [GAMMA]``,
``--curriculum lilac``, ``--patchdrop MODE:LAMBDA`` and ``--eval-robustness`` (with their settings);
``efficiency_callbacks(args, data, model, epochs)`` turns them into ``fit`` callbacks and the number
of epochs to run; ``training_summary`` and ``robustness_summary`` produce the ``training`` and
``robustness`` JSON keys. ``edgeslim train``, ``finetune`` and ``prune --finetune-epochs`` use
them (the last two through ``cli.finetune.recover``).
"""
from __future__ import annotations

import argparse
from typing import Any

import torch
from torch import nn

from ..data import DataBundle
from ..training.caper import Caper
from ..training.data_pruning import METHODS, parse_data_pruning
from ..training.efficiency import forward_macs, training_cost
from ..training.lilac import Lilac
from ..training.patchdrop import MODES, PatchDrop, kept_tokens

__all__ = ["add_efficiency_args", "efficiency_callbacks", "training_summary", "robustness_summary"]


def add_efficiency_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("training efficiency (Raju ch. 4-5, Ganesh ch. 5-6)")
    g.add_argument("--data-pruning", metavar="METHOD:RATE",
                   help=f"dynamic data pruning: METHOD in {', '.join(METHODS)}; RATE = fraction of samples left "
                        "out of each epoch, e.g. ucb:0.5")
    g.add_argument("--pruning-period", type=int, default=10, help="data pruning: rescore every N epochs (T_p)")
    g.add_argument("--pruning-by-class", action="store_true",
                   help="data pruning: keep the same fraction of every class (not in the thesis; stops loss-based "
                        "criteria from dropping whole classes early in training)")
    g.add_argument("--caper", nargs="?", const="0.25%", metavar="GAMMA",
                   help="CAPER: remove GAMMA noise-unstable samples (a count, or a percentage like 1%%; default "
                        "0.25%%, the thesis's 125 of CIFAR-10's 50,000) at epoch --caper-tau")
    g.add_argument("--caper-tau", type=int, default=None, help="CAPER epoch tau (default: a sixth of the epochs)")
    g.add_argument("--caper-smoothing", type=float, default=0.1, help="CAPER label smoothing epsilon after tau")
    g.add_argument("--curriculum", choices=["lilac"], help="LILAC: incremental labels, then adaptive compensation "
                   "(adds the label-introduction epochs in front of --epochs)")
    g.add_argument("--lilac-step", type=int, default=2, help="LILAC: labels revealed per interval (m)")
    g.add_argument("--lilac-interval", type=int, default=1, help="LILAC: epochs per interval (E)")
    g.add_argument("--lilac-epsilon", type=float, default=0.4, help="LILAC: compensation epsilon")
    g.add_argument("--patchdrop", metavar="MODE:LAMBDA",
                   help=f"PatchDrop for ViTs: MODE in {', '.join(MODES)}, LAMBDA = fraction of patches dropped")
    g.add_argument("--saliency-model", metavar="CHECKPOINT", help="PatchDrop: the frozen ViT whose attention gives "
                   "the saliency (e.g. a full-token run of the same model)")
    g.add_argument("--eval-robustness", action="store_true",
                   help="add ECE and accuracy under Gaussian/Poisson/speckle noise and FGSM/PGD attacks")
    g.add_argument("--robustness-limit", type=int, default=None, help="robustness on the first N test images only")
    g.add_argument("--robustness-source", metavar="CHECKPOINT",
                   help="a separately trained model whose FGSM/PGD examples are transferred (black-box attacks)")


def _caper_count(text: str, n: int) -> int:
    try:
        return max(1, round(float(text[:-1]) / 100 * n)) if text.endswith("%") else int(text)
    except ValueError:
        raise ValueError(f"--caper {text!r} must be a count (e.g. 125) or a percentage (e.g. 0.25%)") from None


def _patchdrop(args, data: DataBundle, model: nn.Module, seed: int) -> PatchDrop:
    mode, _, value = args.patchdrop.partition(":")
    try:
        drop = float(value)
    except ValueError:
        raise ValueError(f"--patchdrop {args.patchdrop!r} must be MODE:LAMBDA, e.g. nonsalient:0.5") from None
    if not hasattr(model, "num_patches"):
        raise ValueError(f"--patchdrop needs a vision transformer that accepts kept patches (e.g. zoo:vit_tiny), "
                         f"not {type(model).__name__}")
    if mode == "random":
        return PatchDrop(drop, mode, num_patches=model.num_patches, seed=seed)
    if not args.saliency_model:
        raise ValueError(f"--patchdrop {mode} needs --saliency-model CHECKPOINT (a ViT trained on the same data)")
    from ..models import load_checkpoint

    return PatchDrop.from_teacher(load_checkpoint(args.saliency_model).model, data.train, drop, mode, seed)


def efficiency_callbacks(args, data: DataBundle, model: nn.Module, epochs: int, seed: int = 0) -> tuple[list, int]:
    """The callbacks the options ask for, and the number of epochs to train (LILAC adds its IL phase)."""
    callbacks: list = []
    chosen = [name for name, on in (("--data-pruning", args.data_pruning), ("--caper", args.caper),
                                    ("--curriculum", args.curriculum)) if on]
    if len(chosen) > 1:
        raise ValueError(f"{' and '.join(chosen)} each choose the training samples; use one of them")
    if args.data_pruning:
        callbacks.append(parse_data_pruning(args.data_pruning, period=args.pruning_period, seed=seed,
                                            score_set=data.train_plain, by_class=args.pruning_by_class))
    if args.caper:
        tau = args.caper_tau if args.caper_tau is not None else max(1, epochs // 6)
        callbacks.append(Caper(_caper_count(args.caper, len(data.train)), tau, args.caper_smoothing, seed=seed,
                               score_set=data.train_plain))
    if args.curriculum == "lilac":
        lilac = Lilac(data.num_classes, step=args.lilac_step, interval=args.lilac_interval, epsilon=args.lilac_epsilon,
                      seed=seed)
        callbacks.append(lilac)
        epochs += lilac.il_epochs
    if args.patchdrop:
        callbacks.append(_patchdrop(args, data, model, seed))
    return callbacks, epochs


def training_summary(fit_result: dict[str, Any], callbacks: list, model: nn.Module, data: DataBundle,
                     teacher_macs: int = 0) -> dict[str, Any]:
    """The ``training`` JSON key: samples seen, FLOPs (one convention, printed with it), wall-clock.

    ``teacher_macs``: forward MACs of a distillation teacher, which sees every trained sample once.
    """
    example = torch.randn(1, *data.input_shape)
    macs = forward_macs(model, example)
    train_macs = macs
    for cb in callbacks:
        if isinstance(cb, PatchDrop):  # trained on K tokens; the saliency pass ran the teacher on all of them
            train_macs = forward_macs(model, (example, torch.arange(kept_tokens(cb.num_patches, cb.drop))[None]))
    cost = training_cost(fit_result, callbacks, train_macs, score_macs_per_sample=macs).to_dict()
    summary = {"samples_seen": cost["samples_trained"], **cost}
    summary["flops_convention"] = summary.pop("convention")
    if teacher_macs:
        summary["flops"] += 2 * teacher_macs * cost["samples_trained"]
        summary["flops_convention"] += "; a distillation teacher adds 1 forward pass per trained sample"
    for cb in callbacks:
        if isinstance(cb, Caper):
            summary["caper"] = {k: v for k, v in cb.summary().items() if k != "removed"} | {
                "removed_count": 0 if cb.removed is None else len(cb.removed),
                "thesis_saved_forward_macs": cb.saved_forward_macs(fit_result["epochs"], macs)}
        if isinstance(cb, PatchDrop):
            summary["patchdrop"] = {"mode": cb.mode, "drop": cb.drop, "kept_patches": cb.k,
                                    "positions_never_kept": len(cb.never_kept)}
        if isinstance(cb, Lilac):
            summary["lilac"] = {"il_epochs": cb.il_epochs, "compensated_targets": cb.compensated}
        if hasattr(cb, "checkpoints"):
            summary["data_pruning"] = {"method": cb.method, "rate": cb.prune, "period": cb.period,
                                       "by_class": cb.by_class, "checkpoints": len(cb.checkpoints)}
    return summary


def robustness_summary(args, model: nn.Module, data: DataBundle, source: nn.Module | None = None,
                       compare_with: nn.Module | None = None) -> dict[str, Any]:
    """The ``robustness`` JSON key (``--eval-robustness``), without the per-bin reliability tables.

    Transferred attacks come from ``source``, or from ``--robustness-source``. With ``compare_with``
    (the slim model of ``model``) it is ``compare_robustness``: {dense, slim, slim_minus_dense}, each
    model also attacked with the other's examples.
    """
    from ..metrics.robustness import compare_robustness, evaluate_robustness
    from ..models import load_model

    progress = not getattr(args, "json", False)

    if compare_with is not None:
        result = compare_robustness(model, compare_with, data.test, limit=args.robustness_limit, progress=progress)
        for side in ("dense", "slim"):
            result[side].pop("reliability")
        return result
    if source is None and args.robustness_source:
        source = load_model(args.robustness_source, num_classes=data.num_classes).model
    result = evaluate_robustness(model, data.test, source=source, limit=args.robustness_limit, progress=progress)
    result.pop("reliability")
    return result


def render_robustness(rob: dict[str, Any]) -> None:
    """Print a ``robustness`` key: one column per model (dense / slim when compared)."""
    sides = [s for s in ("dense", "slim") if s in rob] or [None]
    cols = [rob[s] if s else rob for s in sides]
    print(f"\n{'robustness':<18}" + "".join(f"{s or 'model':>12}" for s in sides))
    print(f"{'ECE %':<18}" + "".join(f"{100 * c['ece']:>12.2f}" for c in cols))
    for k in cols[0]["accuracy_under"]:
        print(f"{k + ' acc %':<18}" + "".join(f"{c['accuracy_under'][k]:>12.2f}" for c in cols))
