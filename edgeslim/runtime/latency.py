"""Latency measurement: warm-up, many timed runs, percentiles; several models interleaved.

Interleaving (A, B, A, B, ...) in one process exposes every model to the same machine noise, so
their ratio is trustworthy even on a shared, noisy host where absolute numbers drift.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np

__all__ = ["LatencyStats", "stats_from_samples", "interleaved_latency"]


@dataclass
class LatencyStats:
    p50: float
    p90: float
    p99: float
    mean: float
    std: float
    runs: int

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def spread(self) -> float:
        """(p90 - p50) / p50: above ~0.2 the machine was too noisy to trust small differences."""
        return (self.p90 - self.p50) / self.p50 if self.p50 else float("inf")


def stats_from_samples(ms: list[float] | np.ndarray) -> LatencyStats:
    a = np.asarray(ms, dtype=float)
    return LatencyStats(float(np.percentile(a, 50)), float(np.percentile(a, 90)), float(np.percentile(a, 99)),
                        float(a.mean()), float(a.std()), int(a.size))


def interleaved_latency(fns: dict[str, Callable[[], object]], runs: int = 100, warmup: int = 10) -> dict[str, LatencyStats]:
    """Time each zero-argument callable ``runs`` times, round-robin, after ``warmup`` calls each (ms)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {k: [] for k in fns}
    order = list(fns)
    for i in range(runs):
        # Alternate the order every round (A B, B A, ...) so no model always runs right after another.
        for key in (order if i % 2 == 0 else order[::-1]):
            fn = fns[key]
            t0 = time.perf_counter()
            fn()
            samples[key].append((time.perf_counter() - t0) * 1e3)
    return {k: stats_from_samples(v) for k, v in samples.items()}
