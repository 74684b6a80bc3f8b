"""The latency harness: warm-up, many timed runs, percentiles, throughput, peak memory; several
models interleaved in one process.

Interleaving in one process (a few runs of A, of B, of B, of A, ...) exposes every model to the same
machine noise, so their ratio is trustworthy even on a shared, noisy host where absolute numbers
drift. Each model runs a short block of runs in a row and the first run of a block is dropped: it
pays for the caches the other models emptied, which a deployed model running back to back never
pays. The harness says so when the spread of the samples is too wide to trust small differences.
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

# Runs of one model in a row when several are timed interleaved; the first of each block is dropped.
# Timing single runs round-robin charged small models for the caches the other models had emptied
# (slim MobileNetV2s 10-40 % slower than in blocks, dense within 2 %); blocks of 10 agree with each
# model timed alone within about 3 % (benchmarks/timing_blocks.py).
BLOCK = 10


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
                        desc: str = "timing", block: int = BLOCK) -> dict[str, list[float]]:
    """Call each timer ``warmup`` times, then round-robin in blocks of ``block`` calls in a row, the
    first of each block dropped (``block=1``: single calls, none dropped), until each has ``runs``
    samples; returns the samples (ms)."""
    if runs < 1:
        raise ValueError(f"runs must be at least 1 (got {runs})")
    if block < 1:
        raise ValueError(f"block must be at least 1 (got {block})")
    for timer in timers.values():
        for _ in range(warmup):
            timer()
    samples: dict[str, list[float]] = {k: [] for k in timers}
    order = list(timers)
    kept = max(1, block - 1)
    rounds = range(-(-runs // kept))
    if progress:
        from tqdm import tqdm

        rounds = tqdm(rounds, desc=desc, unit="round", leave=False)
    for i in rounds:
        # Alternate the order every round (A B, B A, ...) so no model always runs right after another.
        for key in (order if i % 2 == 0 else order[::-1]):
            timed = [timers[key]() for _ in range(block)]
            samples[key] += timed[block - kept:]
    return {k: v[:runs] for k, v in samples.items()}


def runner_quantiles(runners: dict, runs: int, warmup: int, quantile: float = 50) -> dict:
    """Prepare the runners, time them interleaved in blocks (:func:`interleaved_samples`), close them; the
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
    """Time each zero-argument callable ``runs`` times, interleaved in blocks (:func:`interleaved_samples`),
    after ``warmup`` calls each (ms)."""

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
    Then all runners are warmed up and timed interleaved, a block of runs in a row each
    (:data:`BLOCK`, the first of each block dropped). A result whose (p90 - p50) / p50 exceeds
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
