"""A latency target on a device: ``target={"latency": ms}``.

Two layers:

* ``latency_cost_model`` is the engine's cost hook (``register_cost_model("latency")``): it
  estimates a slim model's latency from the measured group probes of
  :mod:`edgeslim.runtime.channels` (dense latency measured once, minus what each group's narrower
  width saves), so the engine's solver can search channel counts without timing whole models.
* ``prune_to_latency`` runs the engine with that target, then MEASURES the slim model (ONNX
  Runtime, interleaved with the dense model) and, while the measurement misses the target,
  tightens the estimate's target by the ratio it missed by and solves again. The result carries
  the measured latency, never just the estimate.

Latency is measured here with ONNX Runtime on this host's CPU (device ``cpu``). For a Jetson or GPU
profile, time candidates on the device itself (``edgeslim bench --remote``) and pass ``measure``.
"""
from __future__ import annotations

import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

__all__ = ["prune_to_latency", "ort_latency", "latency_cost_model"]


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


def _check_device(device: str | None) -> str:
    device = device or "cpu"
    if device != "cpu":
        raise NotImplementedError(
            f"latency targets are measured with ONNX Runtime on this host's CPU (device 'cpu'), not {device!r}: "
            "prune for a channel/MACs target and time candidates on the device with `edgeslim bench --remote`, "
            "or call edgeslim.runtime.target.prune_to_latency with measure= timing on the device")
    return device


def latency_cost_model(graph: Any, cost_model: Any, context: Mapping[str, Any]) -> Callable[[np.ndarray, Mapping[str, int]], float]:
    """The engine's cost hook for ``target={"latency": ms}``: estimated ms of the slim model whose
    prunable groups keep ``counts[group.id]`` channels."""
    from .channels import DeviceRounding, LatencyModel

    device = _check_device(context.get("device"))
    model, inputs = context["model"], context["example_inputs"]
    example = inputs if isinstance(inputs, torch.Tensor) else inputs[0]
    rounding = context.get("rounding")
    if not isinstance(rounding, DeviceRounding):
        rounding = DeviceRounding(model, inputs, runtime="ort", device=device)
    dense_ms, _ = ort_latency(model, example)
    estimate = LatencyModel(rounding, dense_ms)
    groups = list(graph.prunable_groups)

    def cost(kept: np.ndarray, counts: Mapping[str, int]) -> float:
        return estimate.estimate(groups, counts)

    return cost


def prune_to_latency(model: nn.Module, example_inputs: torch.Tensor | Sequence[torch.Tensor], latency_ms: float, *,
                     method: str = "l1", data: Any = None, device: str = "cpu", rounding: Any = None,
                     measure: Callable[[nn.Module], float] | None = None, attempts: int = 4, rel_tol: float = 0.03,
                     runs: int = 30, threads: int | None = None, progress: bool = True, **prune_kwargs: Any):
    """Prune ``model`` so that its MEASURED latency is at most ``latency_ms`` (within ``rel_tol``).

    ``rounding``: the engine's ``round_to`` (default: a :class:`DeviceRounding` on ONNX Runtime, this
    CPU, sharing its measurements with the estimate). ``measure(slim) -> ms`` replaces the default
    measurement. Returns the engine's PruneResult; ``achieved`` gains ``latency_ms`` (measured),
    ``latency_estimate_ms`` and ``dense_latency_ms``; a note says so when the target was missed.
    """
    import edgeslim

    from .channels import DeviceRounding

    if latency_ms <= 0:
        raise ValueError(f"latency target must be positive (got {latency_ms} ms)")
    device = _check_device(device) if measure is None else device
    example = example_inputs if isinstance(example_inputs, torch.Tensor) else example_inputs[0]
    rounding = rounding or DeviceRounding(model, example_inputs, runtime="ort", device="cpu", threads=threads)

    first_dense: list[float] = []

    def timed(slim: nn.Module) -> tuple[float, float | None]:
        if measure is not None:
            return float(measure(slim)), None
        ms, dense = ort_latency(slim, example, runs=runs, threads=threads, reference=model)
        # The dense model is re-timed beside every candidate: a busy machine slows both alike, so
        # the candidate is scaled to the dense model's first measurement.
        first_dense.append(dense)
        return ms * first_dense[0] / dense, first_dense[0]

    goal, best = latency_ms, None
    for attempt in range(attempts):
        result = edgeslim.prune(model, example_inputs, method=method, target={"latency": goal}, data=data,
                                round_to=rounding, device=device, progress=False, **prune_kwargs)
        ms, dense = timed(result.model)
        if progress:
            print(f"latency target {latency_ms:.3f} ms: estimate <= {goal:.3f} ms gave {ms:.3f} ms measured",
                  file=sys.stderr)
        if best is None or (ms <= latency_ms * (1 + rel_tol)) or ms < best[1]:
            best = (result, ms, goal, dense)
        if ms <= latency_ms * (1 + rel_tol):
            break
        goal *= latency_ms / ms  # the estimate was optimistic by ms / goal: ask it for less
    result, ms, goal, dense = best
    result.achieved = {**result.achieved, "latency_ms": ms, "latency_estimate_ms": goal, "dense_latency_ms": dense}
    if ms > latency_ms * (1 + rel_tol):
        result.notes = [*getattr(result, "notes", []),
                        f"latency: measured {ms:.3f} ms for a target of {latency_ms:.3f} ms after {attempts} attempts"]
    return result
