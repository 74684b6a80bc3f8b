"""Training and evaluation."""
from .loop import Callback, TrainConfig, TrainState, evaluate, fit, seed_everything

__all__ = ["Callback", "TrainConfig", "TrainState", "evaluate", "fit", "seed_everything"]
