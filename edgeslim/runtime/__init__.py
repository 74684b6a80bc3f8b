"""Runners and latency statistics."""
from .latency import LatencyStats, interleaved_latency, stats_from_samples

__all__ = ["LatencyStats", "interleaved_latency", "stats_from_samples"]
