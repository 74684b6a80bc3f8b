"""Training and evaluation: one loop for one process or many (torchrun), resumable, with callbacks."""
from .loop import Callback, CrossEntropy, LRSchedule, TrainConfig, TrainState, evaluate, fit, seed_everything
from .distributed import DistContext, current_context, distributed_session, init_distributed
from .checkpoint import EpochCheckpoint, load_resume_payload, resolve_resume, state_dict_sha256
from .callbacks import Distillation, KeepMasks, distillation_loss

__all__ = [
    "Callback", "CrossEntropy", "LRSchedule", "TrainConfig", "TrainState", "evaluate", "fit", "seed_everything",
    "DistContext", "current_context", "distributed_session", "init_distributed",
    "EpochCheckpoint", "load_resume_payload", "resolve_resume", "state_dict_sha256",
    "Distillation", "KeepMasks", "distillation_loss",
]
