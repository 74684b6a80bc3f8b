"""Recovery fine-tuning of a (slim) checkpoint, the work behind ``edgeslim finetune`` and
``edgeslim prune --finetune-epochs``.

It runs unchanged in one process or under ``torchrun`` (every rank calls ``finetune`` with the
same arguments), distils from the dense teacher when one is given, keeps connection masks
fixed, writes a resumable checkpoint after every epoch (``DIR/last.pt``) and, at the end, the
fine-tuned model (``DIR/model.pt``) and the run's record (``DIR/run.json``): rank 0 writes.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data import DataBundle
from ..metrics import count
from ..models import LoadedModel, save_checkpoint
from .callbacks import Distillation, KeepMasks
from .checkpoint import LAST_CHECKPOINT, EpochCheckpoint, resolve_resume, state_dict_sha256
from .distributed import distributed_session
from .loop import Callback, TrainConfig, fit

__all__ = ["finetune", "FLOPS_CONVENTION"]

FLOPS_CONVENTION = ("training FLOPs = samples_seen x 3 x forward FLOPs of the student (backward ~ 2x forward) "
                    "+ samples_seen x forward FLOPs of the teacher when distilling; forward FLOPs = 2 x MACs "
                    "counted by edgeslim.count at the data's input size; evaluation passes are not included")


def finetune(loaded: LoadedModel, data: DataBundle, config: TrainConfig, out_dir: str | Path, *,
             teacher: nn.Module | None = None, teacher_source: str | None = None, temperature: float = 4.0,
             alpha: float = 0.5, resume: str | Path | None = None, callbacks: list[Callback] = (),
             progress: bool = True, device: str | None = None, meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """Fine-tune ``loaded.model`` (not modified: a copy is trained) on ``data``; returns the run's record.

    ``teacher``: the dense model to distil from (None: plain fine-tuning). ``resume``: a run folder
    or its ``last.pt`` to continue exactly, or ``"auto"`` to continue ``out_dir`` if it holds one.
    ``callbacks`` run after the built-in ones (masks, distillation), e.g. data pruning.
    """
    out = Path(out_dir)
    if resume == "auto":
        resume = out / LAST_CHECKPOINT if (out / LAST_CHECKPOINT).is_file() else None
    resume_path = resolve_resume(resume) if resume is not None else None
    with distributed_session(device) as dist:
        model = copy.deepcopy(loaded.model)
        builtin: list[Callback] = []
        if loaded.masks:
            builtin.append(KeepMasks(loaded.masks))
        kd = Distillation(teacher, temperature, alpha) if teacher is not None else None
        if kd is not None:
            builtin.append(kd)
        example = torch.zeros(1, *data.input_shape)
        _check_classes(model, example, data)
        macs = count(model, example).macs
        teacher_macs = count(teacher, example).macs if teacher is not None else 0
        run_meta = {**loaded.meta, **(meta or {}), "finetune": config.to_dict()}
        if teacher_source:
            run_meta["teacher"] = teacher_source
        shape = loaded.input_shape or (1, *data.input_shape)
        ckpt = EpochCheckpoint(out / LAST_CHECKPOINT, loaded.spec, loaded.kwargs, shape, loaded.plan, loaded.masks,
                               run_meta)
        result = fit(model, data.train, data.test, config, builtin + list(callbacks), progress=progress,
                     checkpoint=ckpt, resume=resume_path, dist=dist)
        hashes = dist.all_gather_object(state_dict_sha256(model))
        record = _record(result, loaded, out, kd, teacher_source, macs, teacher_macs, hashes, resume_path)
        if dist.is_main:
            save_checkpoint(out / "model.pt", model, loaded.spec, loaded.kwargs, shape, plan=loaded.plan,
                            meta={**run_meta, "accuracy": record.get("accuracy")}, masks=loaded.masks)
            (out / "run.json").write_text(json.dumps(record, indent=1))
        dist.barrier()  # nobody leaves before rank 0 has written
    return record


def _check_classes(model: nn.Module, example: torch.Tensor, data: DataBundle) -> None:
    with torch.no_grad():
        classes = model.eval()(example).shape[-1]
    model.train()
    if classes != data.num_classes:
        raise ValueError(f"the model predicts {classes} classes, the data {data.name} has {data.num_classes}: "
                         "fine-tune on the data set the model was trained for")


def _record(result: dict[str, Any], loaded: LoadedModel, out: Path, kd: Distillation | None,
            teacher_source: str | None, macs: int, teacher_macs: int, hashes: list[str],
            resume_path: Path | None) -> dict[str, Any]:
    seen = result["samples_seen"]
    record: dict[str, Any] = {
        key: result[key] for key in ("accuracy", "top5", "best_accuracy", "best_epoch", "last_epoch",
                                     "per_class_accuracy", "test_loss") if key in result}
    record.update({
        "epochs": result["epochs"],
        "world_size": result["world_size"],
        "checkpoint": str(out / "model.pt"),
        "last_checkpoint": str(out / LAST_CHECKPOINT),
        "run_json": str(out / "run.json"),
        "training": {"samples_seen": seen, "flops": seen * (3 * 2 * macs + 2 * teacher_macs),
                     "wall_s": result["wall_s"], "steps": result["steps"], "forward_macs": macs,
                     "teacher_forward_macs": teacher_macs, "flops_convention": FLOPS_CONVENTION},
        "distillation": {**kd.describe(), "teacher": teacher_source} if kd is not None else {"enabled": False},
        "masks": _mask_summary(loaded.masks),
        "resumed_from": str(resume_path) if resume_path else None,
        "precision": result["precision"],
        "config": result["config"],
        "history": result["history"],
        "notes": result["notes"],
        "rank_weight_sha256": hashes,
    })
    return record


def _mask_summary(masks: dict[str, torch.Tensor] | None) -> dict[str, Any] | None:
    if not masks:
        return None
    total = sum(m.numel() for m in masks.values())
    zeros = sum(int((m == 0).sum()) for m in masks.values())
    return {"params": len(masks), "weights": total, "masked": zeros}
