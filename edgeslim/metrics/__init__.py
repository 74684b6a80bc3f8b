"""Cost metrics: MACs/FLOPs, parameters and memory."""
from .count import CountResult, count

__all__ = ["CountResult", "count"]
