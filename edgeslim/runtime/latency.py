"""The latency harness: warm-up, many timed runs, percentiles, throughput, peak memory; several
models interleaved in one process.

Interleaving (A B, B A, A B, ...) in one process exposes every model to the same machine noise, so
their ratio is trustworthy even on a shared, noisy host where absolute numbers drift. The harness
says so when the spread of the samples is too wide to trust small differences.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Callable

import numpy as np

if TYPE_CHECKING:
    from .runners import Runner

__all__ = ["LatencyStats", "BenchResult", "stats_from_samples", "interleaved_samples", "runner_quantiles",
           "interleaved_latency", "benchmark", "DEFAULT_MAX_SPREAD"]

# (p90 - p50) / p50 above this: the machine was too noisy to trust differences of a few per cent.
DEFAULT_MAX_SPREAD = 0.2


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
    if a.size == 0:
        raise ValueError("no latency samples: runs must be at least 1")
    return LatencyStats(float(np.percentile(a, 50)), float(np.percentile(a, 90)), float(np.percentile(a, 99)),
                        float(a.mean()), float(a.std()), int(a.size))


def interleaved_samples(timers: dict[str, Callable[[], float]], runs: int, warmup: int, progress: bool = False,
                        desc: str = "timing") -> dict[str, list[float]]:
    """Call each timer ``warmup`` times, then ``runs`` times round-robin; returns the samples (ms)."""
    if runs < 1:
        raise ValueError(f"runs must be at least 1 (got {runs})")
    for timer in timers.values():
        for _ in range(warmup):
            timer()
    samples: dict[str, list[float]] = {k: [] for k in timers}
    order = list(timers)
    rounds = range(runs)
    if progress:
        from tqdm import tqdm

        rounds = tqdm(rounds, desc=desc, unit="round", leave=False)
    for i in rounds:
        # Alternate the order every round (A B, B A, ...) so no model always runs right after another.
        for key in (order if i % 2 == 0 else order[::-1]):
            samples[key].append(timers[key]())
    return samples


def runner_quantiles(runners: dict, runs: int, warmup: int, quantile: float = 50) -> dict:
    """Prepare the runners, time them round-robin (:func:`interleaved_samples`), close them; the
    ``quantile`` of each one's samples (ms), under the same keys."""
    try:
        for r in runners.values():
            r.prepare()
        samples = interleaved_samples({k: r.time_once for k, r in runners.items()}, runs, warmup)
    finally:
        for r in runners.values():
            r.close()
    return {k: float(np.percentile(v, quantile)) for k, v in samples.items()}


def interleaved_latency(fns: dict[str, Callable[[], object]], runs: int = 100, warmup: int = 10) -> dict[str, LatencyStats]:
    """Time each zero-argument callable ``runs`` times, round-robin, after ``warmup`` calls each (ms)."""

    def wall_clock(fn):
        def timer() -> float:
            t0 = time.perf_counter()
            fn()
            return (time.perf_counter() - t0) * 1e3
        return timer

    samples = interleaved_samples({k: wall_clock(fn) for k, fn in fns.items()}, runs, warmup)
    return {k: stats_from_samples(v) for k, v in samples.items()}


@dataclass
class BenchResult:
    """One model on one runtime: the JSON of ``edgeslim bench`` (see INTERFACE.md)."""

    runtime: str
    device: str
    batch: int
    latency_ms: LatencyStats
    throughput: float                      # samples per second, from the mean latency
    peak_memory_bytes: int | None
    warmup: int
    memory_note: str = ""
    warnings: list[str] = field(default_factory=list)

    @property
    def runs(self) -> int:
        return self.latency_ms.runs

    def to_dict(self) -> dict:
        return {"runtime": self.runtime, "device": self.device, "batch": self.batch,
                "latency_ms": self.latency_ms.to_dict(), "throughput": self.throughput,
                "peak_memory_bytes": self.peak_memory_bytes, "memory_note": self.memory_note,
                "runs": self.runs, "warmup": self.warmup, "warnings": list(self.warnings)}


def benchmark(runners: "Runner | dict[str, Runner]", runs: int = 100, warmup: int = 10, memory: bool = True,
              max_spread: float = DEFAULT_MAX_SPREAD, progress: bool = False) -> "BenchResult | dict[str, BenchResult]":
    """Benchmark one runner, or several interleaved in this process (dense and slim side by side).

    Each runner is prepared first (model loaded, session or engine built); with ``memory`` its peak
    memory is measured in a short separate pass, so the sampling never perturbs the timed runs.
    Then all runners are warmed up and timed round-robin. A result whose (p90 - p50) / p50 exceeds
    ``max_spread`` carries a warning: the machine was too noisy for small differences.
    """
    single = not isinstance(runners, dict)
    named: dict[str, Runner] = {"model": runners} if single else dict(runners)
    if not named:
        raise ValueError("benchmark needs at least one runner")
    peaks: dict[str, int | None] = {}
    for key, runner in named.items():
        peaks[key] = runner.measure_memory() if memory else None
        if not memory:
            runner.prepare()
    samples = interleaved_samples({k: r.time_once for k, r in named.items()}, runs, warmup, progress=progress)
    results = {}
    for key, runner in named.items():
        stats = stats_from_samples(samples[key])
        warnings = []
        if stats.spread > max_spread:
            warnings.append(f"latency spread (p90-p50)/p50 = {stats.spread:.2f} exceeds {max_spread:.2f}: the machine "
                            "was too noisy to trust small differences; re-run on a quiet machine or with more runs")
        results[key] = BenchResult(runtime=runner.runtime, device=runner.device, batch=runner.batch, latency_ms=stats,
                                   throughput=runner.batch * 1e3 / stats.mean if stats.mean > 0 else float("inf"),
                                   peak_memory_bytes=peaks[key], warmup=warmup, memory_note=runner.memory_note,
                                   warnings=warnings)
    return results["model"] if single else results
