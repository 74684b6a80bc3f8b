"""Per-epoch checkpoints that let a run continue exactly where it stopped.

A resumable checkpoint is an ordinary edgeslim checkpoint (spelling + state_dict + plan + masks,
loadable by ``load_checkpoint`` and by every command that takes a MODEL) with one more key,
``"training"``: optimiser state, the epoch and step reached, the history, the config, the
GradScaler state, each callback's state and the random-number states (python, numpy, torch,
CUDA) **of every rank**. The data order needs no state: the sampler and the augmentations are
seeded by (seed, epoch). Rank 0 writes; the write is atomic (temporary file + rename), so an
interrupted run loses at most the epoch in progress.
"""
from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from ..models import save_checkpoint

if TYPE_CHECKING:
    from .loop import Callback, TrainState

__all__ = ["EpochCheckpoint", "load_resume_payload", "resolve_resume", "rng_state", "set_rng_state",
           "LAST_CHECKPOINT", "state_dict_sha256"]

LAST_CHECKPOINT = "last.pt"
_IGNORED_ON_RESUME = ("num_workers",)  # options that do not change the result


def rng_state() -> dict[str, Any]:
    """This process's random-number states, in types that load with weights_only=True."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else [],
    }


def set_rng_state(s: dict[str, Any]) -> None:
    version, internal, gauss = s["python"]
    random.setstate((version, tuple(internal), gauss))
    n = s["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(s["torch"])
    if s["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


@dataclass
class EpochCheckpoint:
    """Where and what to write after every epoch: the model's description plus the training state."""

    path: Path
    spec: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    input_shape: tuple[int, ...] | None = None
    plan: dict[str, Any] | None = None
    masks: dict[str, torch.Tensor] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def save(self, state: "TrainState", callbacks: list["Callback"]) -> None:
        rngs = state.dist.all_gather_object(rng_state())  # every rank takes part; rank 0 writes
        if state.dist.is_main:
            save_checkpoint(self.path, state.model, self.spec, self.kwargs, self.input_shape, plan=self.plan,
                            meta=self.meta, masks=self.masks, training=training_state(state, callbacks, rngs))


def training_state(state: "TrainState", callbacks: list["Callback"], rngs: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "epoch": state.epoch,
        "step": state.step,
        "samples_seen": state.samples_seen,
        "wall_s": state.wall_s,
        "history": state.history,
        "config": state.config.to_dict(),
        "world_size": state.dist.world_size,
        "optimizer": state.optimizer.state_dict(),
        "scaler": state.scaler.state_dict(),
        "rng": rngs,
        "callbacks": [{"name": type(cb).__name__, "state": cb.state_dict()} for cb in callbacks],
    }


def resolve_resume(resume: str | os.PathLike) -> Path:
    """A run folder (its last.pt) or a checkpoint file."""
    path = Path(resume)
    if path.is_dir():
        path = path / LAST_CHECKPOINT
    if not path.is_file():
        raise FileNotFoundError(f"nothing to resume at {resume!r}: expected a run folder holding {LAST_CHECKPOINT} "
                                "or a checkpoint file written by a previous run")
    return path


def load_resume_payload(resume: str | os.PathLike | dict[str, Any]) -> dict[str, Any]:
    payload = resume if isinstance(resume, dict) else \
        torch.load(resolve_resume(resume), map_location="cpu", weights_only=True)
    if "training" not in payload:
        raise ValueError(f"{resume} holds a model but no training state (only the per-epoch {LAST_CHECKPOINT} of "
                         "a run can be resumed); to fine-tune it further, start a new run from it")
    return payload


def restore_training_state(state: "TrainState", payload: dict[str, Any], callbacks: list["Callback"]) -> None:
    """Put ``state`` (whose model already holds the saved weights) back where the saved run stopped."""
    saved = payload["training"]
    now = state.config.to_dict()
    differ = [f"{k}: saved {saved['config'].get(k)!r}, now {now[k]!r}" for k in now
              if k not in _IGNORED_ON_RESUME and saved["config"].get(k) != now[k]]
    if differ:
        raise ValueError("resuming continues the saved run exactly, but its training options differ (" +
                         "; ".join(differ) + "). Use the saved options, or start a new run from the checkpoint.")
    names = [c["name"] for c in saved["callbacks"]]
    if names != [type(cb).__name__ for cb in callbacks]:
        raise ValueError(f"the saved run used callbacks {names}, this one {[type(cb).__name__ for cb in callbacks]}; "
                         "resume with the same options (distillation, masks, data pruning ...)")
    for cb, entry in zip(callbacks, saved["callbacks"]):
        cb.load_state_dict(entry["state"])
    state.optimizer.load_state_dict(saved["optimizer"])
    state.scaler.load_state_dict(saved["scaler"])
    state.epoch, state.step = saved["epoch"], saved["step"]
    state.samples_seen, state.wall_s = saved["samples_seen"], saved["wall_s"]
    state.history = list(saved["history"])
    rngs = saved["rng"]
    if saved["world_size"] != state.dist.world_size:
        state.notes.append(f"resumed a run of {saved['world_size']} processes with {state.dist.world_size}: the "
                           "data is sharded differently, so the continuation is not bit-identical")
    set_rng_state(rngs[state.dist.rank % len(rngs)])


def state_dict_sha256(model: nn.Module) -> str:
    """A fingerprint of every parameter and buffer (to check that ranks hold identical models)."""
    import hashlib

    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
