"""A latency target on a device: prune until the MEASURED latency meets it.

``prune_to_latency`` searches the engine's channel keep ratio by bisection. Every step prunes with
``edgeslim.prune`` (runtime-aware rounding by default) and times the slim model on the target
runtime, interleaved with the dense model, so the answer is a measurement, not an estimate. It
returns the step with the most channels whose latency is at or under the target.
"""
from __future__ import annotations

import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

__all__ = ["prune_to_latency", "ort_latency"]


def ort_latency(model: nn.Module, example: torch.Tensor, runs: int = 30, warmup: int = 5, threads: int | None = None,
                reference: nn.Module | None = None) -> tuple[float, float | None]:
    """(p50 ms of ``model``, p50 ms of ``reference`` timed interleaved with it) in ONNX Runtime on this CPU."""
    from ..export import export_onnx
    from .latency import benchmark
    from .runners import OrtRunner

    with tempfile.TemporaryDirectory(prefix="edgeslim-latency-") as folder:
        runners = {}
        for key, m in (("model", model), ("reference", reference)):
            if m is None:
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                path = export_onnx(m.eval(), example, Path(folder) / f"{key}.onnx", simplify=False).path
            runners[key] = OrtRunner(path, inputs=[example], threads=threads)
        res = benchmark(runners, runs=runs, warmup=warmup, memory=False)
    return res["model"].latency_ms.p50, (res["reference"].latency_ms.p50 if "reference" in res else None)


def prune_to_latency(model: nn.Module, example_inputs: torch.Tensor | Sequence[torch.Tensor], latency_ms: float, *,
                     method: str = "l1", data: Any = None, round_to: Any = "measured", device: str = "cpu",
                     measure: Callable[[nn.Module], float] | None = None, min_channels: float = 0.05,
                     rel_tol: float = 0.02, max_steps: int = 10, runs: int = 30, threads: int | None = None,
                     progress: bool = True, **prune_kwargs: Any):
    """Prune ``model`` so that its measured latency is at most ``latency_ms``.

    ``round_to="measured"`` rounds every group to the width the runtime executes fastest
    (:class:`~edgeslim.runtime.channels.DeviceRounding` on ONNX Runtime, this CPU); any other value
    is handed to ``edgeslim.prune`` unchanged. ``measure(slim_model) -> ms`` replaces the default
    measurement (ONNX Runtime on this CPU), e.g. to time on a remote device.

    Returns the engine's PruneResult with ``achieved["latency_ms"]`` and ``achieved["dense_latency_ms"]``
    set. Raises ValueError naming the closest reachable latency when the target cannot be met.
    """
    import edgeslim

    if latency_ms <= 0:
        raise ValueError(f"latency target must be positive (got {latency_ms} ms)")
    example = example_inputs if isinstance(example_inputs, torch.Tensor) else example_inputs[0]
    if round_to == "measured":
        from .channels import DeviceRounding

        round_to = DeviceRounding(model, example_inputs, runtime="ort", device=device, threads=threads)

    dense_ms = None

    def timed(slim: nn.Module) -> float:
        nonlocal dense_ms
        if measure is not None:
            return float(measure(slim))
        ms, ref = ort_latency(slim, example, runs=runs, threads=threads, reference=model)
        # The dense model is re-timed beside every candidate: a busy machine slows both alike, so
        # the candidate's latency is taken relative to the dense model's first measurement.
        dense_ms = dense_ms or ref
        return ms * dense_ms / ref

    def log(msg: str) -> None:
        if progress:
            print(msg, file=sys.stderr)

    def attempt(keep: float):
        result = edgeslim.prune(model, example_inputs, method=method, target={"channels": keep}, data=data,
                                round_to=round_to, progress=False, **prune_kwargs)
        ms = timed(result.model)
        log(f"  channels {keep:.3f}: {ms:.3f} ms (target {latency_ms:.3f} ms)")
        return result, ms

    best = None
    lo_result, lo_ms = attempt(min_channels)
    if lo_ms > latency_ms * (1 + rel_tol):
        raise ValueError(f"latency target {latency_ms:.3f} ms is out of reach: keeping {min_channels:.0%} of the "
                         f"channels still takes {lo_ms:.3f} ms (dense {dense_ms or float('nan'):.3f} ms); "
                         f"the closest reachable latency is about {lo_ms:.3f} ms")
    best = (min_channels, lo_result, lo_ms)
    lo, hi = min_channels, 1.0
    for _ in range(max_steps):
        mid = (lo + hi) / 2
        result, ms = attempt(mid)
        if ms <= latency_ms:
            lo, best = mid, (mid, result, ms)
        else:
            hi = mid
        if hi - lo < 0.01:
            break
    keep, result, ms = best
    achieved = dict(getattr(result, "achieved", {}) or {})
    achieved.update({"latency_ms": ms, "dense_latency_ms": dense_ms, "channels_target": keep})
    result.achieved = achieved
    return result
