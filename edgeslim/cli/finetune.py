"""``edgeslim finetune CHECKPOINT --data D --epochs N -o DIR``: recovery training of a slim checkpoint.

Runs unchanged under ``torchrun --nproc_per_node=N -m edgeslim finetune ...`` (one process per
GPU, or gloo processes on a CPU). Distils from the dense teacher when one is known (``--teacher``
or the path a ``prune`` checkpoint records), ``--resume`` continues an interrupted run exactly.
The training flags are shared with ``prune --finetune-epochs`` (``add_training_args`` /
``training_config``).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Subset

from ..data import DataBundle, load_data
from ..models import LoadedModel, load_model
from ..training import TrainConfig
from ..training.recipes import RECIPES, get_recipe
from .common import add_command, add_model_args, resolve_model
from .efficiency import add_efficiency_args, efficiency_callbacks, render_robustness, robustness_summary, \
    training_summary


def add_parser(sub) -> None:
    p = add_command(sub, "finetune", "recovery training of a (slim) checkpoint; runs unchanged under torchrun",
                    run, render)
    add_model_args(p)
    p.add_argument("--data", required=True, help="digits | cifar10:ROOT | cifar100:ROOT | imagefolder:ROOT")
    p.add_argument("-o", "--output", required=True,
                   help="run folder: model.pt (result), last.pt (resumable, every epoch), run.json")
    add_training_args(p)
    add_recovery_args(p)
    add_efficiency_args(p)


def add_recovery_args(p: argparse.ArgumentParser, teacher_flag: bool = True) -> None:
    """Distillation and resume options (``finetune``, and ``prune --finetune-epochs``)."""
    kd = p.add_argument_group("distillation (on by default when the dense teacher is known)")
    if teacher_flag:
        kd.add_argument("--teacher", help="dense checkpoint to distil from (default: the one the checkpoint records)")
    kd.add_argument("--no-kd", action="store_true", help="plain fine-tuning, no distillation")
    kd.add_argument("--kd-temperature", type=float, default=4.0, help="softmax temperature T (default 4)")
    kd.add_argument("--kd-alpha", type=float, default=0.5, help="weight of the distillation term (default 0.5)")
    p.add_argument("--resume", nargs="?", const="auto", metavar="DIR_OR_FILE",
                   help="continue an interrupted run exactly; alone: the -o folder's last.pt if there is one")


def add_training_args(p: argparse.ArgumentParser, epochs_flag: str = "--epochs") -> None:
    """Training options; unset ones come from --recipe, else from TrainConfig's defaults."""
    g = p.add_argument_group("training (flags override --recipe)")
    g.add_argument("--recipe", help=f"named configuration: {', '.join(sorted(RECIPES))}")
    g.add_argument(epochs_flag, dest="epochs", type=int, help="training epochs")
    g.add_argument("--batch-size", type=int, help="global batch (split over torchrun processes)")
    g.add_argument("--lr", type=float)
    g.add_argument("--optimizer", choices=["sgd", "adamw", "rmsprop"])
    g.add_argument("--momentum", type=float)
    g.add_argument("--nesterov", action="store_true", default=None)
    g.add_argument("--weight-decay", type=float)
    g.add_argument("--schedule", choices=["cosine", "step", "constant"])
    g.add_argument("--milestones", type=_int_list, help="epochs of the step schedule, e.g. 90,180,260")
    g.add_argument("--gamma", type=float, help="step-schedule multiplier")
    g.add_argument("--warmup-epochs", type=float)
    g.add_argument("--label-smoothing", type=float)
    g.add_argument("--grad-clip", type=float, help="max global gradient norm")
    g.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"],
                   help="mixed precision on CUDA (auto: bf16 where supported, else fp16); CPUs train in fp32")
    g.add_argument("--seed", type=int)
    g.add_argument("--augment", choices=["standard", "cutout", "none"])
    g.add_argument("--workers", type=int, help="data-loading processes per training process")
    g.add_argument("--train-device", default="auto", help="auto | cpu | cuda (under torchrun: one GPU per process)")
    g.add_argument("--train-samples", type=int, help="train on a random subset of this many samples (smoke tests)")
    g.add_argument("--test-samples", type=int, help="evaluate on a random subset of this many samples")


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} must be comma-separated epochs, e.g. 90,180,260") from None


_FLAG_TO_OPTION = {"epochs": "epochs", "batch_size": "batch_size", "lr": "lr", "optimizer": "optimizer",
                   "momentum": "momentum", "nesterov": "nesterov", "weight_decay": "weight_decay",
                   "schedule": "schedule", "milestones": "milestones", "gamma": "gamma",
                   "warmup_epochs": "warmup_epochs", "label_smoothing": "label_smoothing", "grad_clip": "grad_clip",
                   "precision": "precision", "seed": "seed", "workers": "num_workers"}


def training_config(args: argparse.Namespace, data_spec: str, **defaults: Any) -> tuple[TrainConfig, str]:
    """TrainConfig and augmentation from ``--recipe`` + flags; ``defaults`` apply where neither says."""
    recipe = get_recipe(args.recipe) if args.recipe else None
    options = {**defaults, **(recipe.options if recipe else {})}
    options.update({opt: getattr(args, flag) for flag, opt in _FLAG_TO_OPTION.items()
                    if getattr(args, flag, None) is not None})
    if "epochs" not in options:
        raise ValueError("how long to train? pass --epochs N or a --recipe")
    if "num_workers" not in options:
        in_memory = data_spec.split(":")[0] in ("digits", "cifar10", "cifar100")
        local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        options["num_workers"] = 0 if in_memory else max(1, min(8, (os.cpu_count() or 1) // local - 1))
    config = TrainConfig.from_dict(options)
    config.validate()
    augment = args.augment or (recipe.augment if recipe else "standard")
    return config, augment


def subsample(data: DataBundle, train: int | None, test: int | None, seed: int = 0) -> DataBundle:
    """A seeded random subset of the training and/or test split (every rank draws the same one)."""
    def pick(dataset, n):
        if n is None or n >= len(dataset):
            return dataset
        if n < 1:
            raise ValueError(f"a subset needs at least one sample, got {n}")
        idx = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:n]
        return Subset(dataset, idx.sort().values.tolist())

    data.train = pick(data.train, train)
    data.train_plain = pick(data.train_plain, train)  # the same samples (same draw), for scoring without augmentation
    data.test = pick(data.test, test)
    return data


def resolve_teacher(args: argparse.Namespace, loaded: LoadedModel, num_classes: int):
    """(teacher model or None, where it came from, why there is none)."""
    if args.no_kd:
        return None, None, "disabled with --no-kd"
    if getattr(args, "teacher", None):
        return load_model(args.teacher, num_classes=num_classes).model, args.teacher, None
    recorded = loaded.meta.get("teacher")
    if not recorded:
        return None, None, ("no dense teacher known: pass --teacher DENSE_CHECKPOINT (checkpoints written by "
                            "`edgeslim prune` record theirs)")
    path = Path(recorded)
    if not path.is_absolute() and not path.exists():
        path = Path(args.model).parent / path  # recorded relative to the checkpoint's folder
    if not path.exists():
        return None, None, f"the teacher this checkpoint records ({recorded}) does not exist any more"
    return load_model(str(path), num_classes=num_classes).model, str(path), None


def run(args) -> dict:
    config, augment = training_config(args, args.data, lr=0.01)
    data = load_data(args.data, image_size=args.input[-1] if args.input else None, augment=augment)
    data = subsample(data, args.train_samples, args.test_samples, seed=config.seed)
    loaded = resolve_model(args, num_classes=data.num_classes)
    teacher, source, reason = resolve_teacher(args, loaded, data.num_classes)
    record = recover(args, loaded, data, config, teacher, source, reason,
                     meta={"data": args.data, "recipe": args.recipe, "augment": augment})
    record.update(model=args.model, data=args.data, recipe=args.recipe, augment=augment)
    if args.eval_robustness and int(os.environ.get("RANK", "0")) == 0:  # once, not on every torchrun process
        tuned = load_model(record["checkpoint"], num_classes=data.num_classes).model.eval()
        # with the dense teacher known: what compression + fine-tuning did (dense vs slim, attacks crossed)
        record["robustness"] = robustness_summary(args, teacher, data, compare_with=tuned) if teacher is not None \
            else robustness_summary(args, tuned, data)
    return record


def recover(args: argparse.Namespace, loaded: LoadedModel, data: DataBundle, config: TrainConfig, teacher,
            teacher_source: str | None, no_teacher_reason: str | None, meta: dict[str, Any]) -> dict[str, Any]:
    """Fine-tune ``loaded`` into ``args.output`` with the recovery options of ``add_recovery_args``
    and the training-efficiency options of ``add_efficiency_args`` (data pruning, CAPER, LILAC, PatchDrop)."""
    from ..training.recovery import finetune

    if args.no_kd:
        teacher, teacher_source, no_teacher_reason = None, None, "disabled with --no-kd"
    callbacks, epochs = efficiency_callbacks(args, data, loaded.model, config.epochs, config.seed)
    config = dataclasses.replace(config, epochs=epochs)  # LILAC puts its label-introduction epochs in front
    record = finetune(loaded, data, config, args.output, teacher=teacher, teacher_source=teacher_source,
                      temperature=args.kd_temperature, alpha=args.kd_alpha, resume=args.resume, callbacks=callbacks,
                      progress=not args.json, device=args.train_device, meta=meta)
    if teacher is None and no_teacher_reason:
        record["distillation"]["reason"] = no_teacher_reason
    if callbacks:  # the same record, with scoring passes counted and each method's own summary
        run = {"history": record["history"], "wall_s": record["training"]["wall_s"], "epochs": record["epochs"]}
        record["training"].update(training_summary(run, callbacks, loaded.model, data,
                                                   record["training"]["teacher_forward_macs"]))
    return record


def render(r: dict) -> None:
    kd = r["distillation"]
    kd_text = f"distilled from {kd['teacher']} (T={kd['temperature']}, alpha={kd['alpha']})" if kd["enabled"] \
        else f"no distillation ({kd.get('reason', 'off')})"
    print(f"fine-tuned {r['epochs']} epochs on {r['world_size']} process(es), {kd_text}")
    if "accuracy" in r:
        print(f"test accuracy {r['accuracy']:.2f} % (top-5 {r['top5']:.2f} %), best {r['best_accuracy']:.2f} % "
              f"at epoch {r['best_epoch']}")
    t = r["training"]
    print(f"{t['samples_seen']} samples seen, {t['flops'] / 1e12:.3f} TFLOPs (estimate), {t['wall_s']:.0f} s")
    if t.get("samples_scored"):
        print(f"{t['samples_scored']} samples scored in {t['scoring_s']:.1f} s (counted in the FLOPs)")
    if "robustness" in r:
        render_robustness(r["robustness"])
    for note in r["notes"]:
        print(f"note: {note}")
    print(f"checkpoint: {r['checkpoint']}  (resumable: {r['last_checkpoint']})")
