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

__all__ = ["prune_to_latency", "ort_latency", "time_interleaved", "latency_cost_model"]


def time_interleaved(models: Mapping[str, nn.Module], example_inputs: torch.Tensor | Sequence[torch.Tensor],
                     runtime: str = "ort", device: str = "cpu", threads: int | None = None, runs: int = 30,
                     warmup: int = 5, quantile: float = 50) -> dict[str, float]:
    """Latency (ms, the ``quantile`` of the samples; 50: the median) of each model, all timed
    interleaved in one process: exported to ONNX Runtime (``runtime="ort"``, single-input models,
    ``threads`` intra-op threads) or run by PyTorch eager (``"torch"``) on ``device``."""
    from ..export import export_onnx
    from .latency import runner_quantiles
    from .runners import OrtRunner, TorchRunner

    inputs = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
    if runtime == "ort" and len(inputs) != 1:
        raise ValueError("timing whole models in ONNX Runtime needs a single-input model (edgeslim.export_onnx)")
    with tempfile.TemporaryDirectory(prefix="edgeslim-latency-") as folder:
        runners = {}
        for key, model in models.items():
            if runtime == "torch":
                runners[key] = TorchRunner(model, inputs, device=device)  # times an eval-mode copy
                continue
            with warnings.catch_warnings():  # export_onnx exports in eval mode, then restores the mode
                warnings.simplefilter("ignore")
                path = export_onnx(model, inputs[0], Path(folder) / f"model{len(runners)}.onnx",
                                   simplify=False).path
            runners[key] = OrtRunner(path, inputs=inputs, device=device, threads=threads)
        return runner_quantiles(runners, runs, warmup, quantile)


def ort_latency(model: nn.Module, example: torch.Tensor, runs: int = 30, warmup: int = 5, threads: int | None = None,
                reference: nn.Module | None = None, quantile: float = 50) -> tuple[float, float | None]:
    """(latency of ``model``, latency of ``reference`` timed interleaved with it) in ms, ONNX Runtime
    on this CPU; ``quantile`` of the samples (50: the median)."""
    models = {"model": model, **({"reference": reference} if reference is not None else {})}
    ms = time_interleaved(models, example, threads=threads, runs=runs, warmup=warmup, quantile=quantile)
    return ms["model"], ms.get("reference")


def _check_device(device: str | None) -> str:
    if device is None:
        raise ValueError("a latency target needs the device it is measured on: device='cpu' (CLI --device cpu) "
                         "times ONNX Runtime on this host's CPU")
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
    # prune_to_latency hands over the dense latency it measured, so that estimate and measurement
    # share one reference; otherwise the same statistic as the probes' (robust on a busy machine).
    dense_ms = getattr(rounding, "dense_ms", None) or ort_latency(model, example, runs=40, quantile=10)[0]
    estimate = LatencyModel(rounding, dense_ms)
    groups = list(graph.prunable_groups)

    def cost(kept: np.ndarray, counts: Mapping[str, int]) -> float:
        return estimate.estimate(groups, counts)

    return cost


def prune_to_latency(model: nn.Module, example_inputs: torch.Tensor | Sequence[torch.Tensor], latency_ms: float, *,
                     method: str = "l1", data: Any = None, device: str = "cpu", rounding: Any = None,
                     measure: Callable[[nn.Module], float] | None = None, attempts: int = 4, rel_tol: float = 0.03,
                     runs: int = 30, quantile: float = 50, threads: int | None = None, progress: bool = True,
                     **prune_kwargs: Any):
    """Prune ``model`` so that its MEASURED latency is at most ``latency_ms`` (within ``rel_tol``).

    Latency is the ``quantile`` of interleaved runs (50: the median; 10 is steadier on a busy
    machine). ``rounding``: the engine's ``round_to`` (default: a :class:`DeviceRounding` on ONNX
    Runtime, this CPU, which also carries the estimate's measurements). ``measure(slim) -> ms``
    replaces the default measurement. Returns the engine's PruneResult; ``achieved`` gains
    ``latency_ms`` (measured), ``latency_estimate_ms`` and ``dense_latency_ms``; a note says so
    when the target was missed. ``prune_kwargs`` go to :func:`edgeslim.prune` (e.g.
    ``drop_blocks="all"``: the channels are then cut from the model without those blocks, and the
    estimate starts from that model's latency).
    """
    import edgeslim

    from ..compress.depth import BlocksOvershoot, least_influential_dropped
    from ..compress.prune import as_loader
    from .channels import DeviceRounding

    if latency_ms <= 0:
        raise ValueError(f"latency target must be positive (got {latency_ms} ms)")
    device = _check_device(device) if measure is None else device
    example = example_inputs if isinstance(example_inputs, torch.Tensor) else example_inputs[0]

    def dense_latency(dense: nn.Module) -> float:
        return float(measure(dense)) if measure is not None else \
            ort_latency(dense, example, runs=runs, threads=threads, quantile=quantile)[0]

    # The engine cuts channels of the model without the blocks it drops (prune(drop_blocks=...)
    # drops the same ones each attempt): the estimate's probes and dense latency describe that model.
    inputs = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
    drop = prune_kwargs.get("drop_blocks")
    cut, dropped = least_influential_dropped(model, inputs, as_loader(data), drop) if drop else (model, [])
    rounding = rounding or DeviceRounding(cut, example_inputs, runtime="ort", device="cpu", threads=threads)
    dense_ms = dense_latency(model)  # what the result is compared with: the model as given
    rounding.dense_ms = dense_ms if cut is model else dense_latency(cut)  # where the estimate starts
    if dropped and rounding.dense_ms <= latency_ms:
        raise BlocksOvershoot(f"without the {len(dropped)} blocks it drops, the model already runs in "
                              f"{rounding.dense_ms:.3f} ms (measured), within the target of {latency_ms:.3f} ms; "
                              "drop fewer")

    def timed(slim: nn.Module) -> float:
        if measure is not None:
            return float(measure(slim))
        ms, dense_now = ort_latency(slim, example, runs=runs, threads=threads, reference=model, quantile=quantile)
        # The dense model is re-timed beside every candidate: a busy machine slows both alike.
        return ms * dense_ms / dense_now

    goal, best = latency_ms, None
    for _ in range(attempts):
        result = edgeslim.prune(model, example_inputs, method=method, target={"latency": goal}, data=data,
                                round_to=rounding, device=device, progress=False, **prune_kwargs)
        ms = timed(result.model)
        if progress:
            print(f"latency target {latency_ms:.3f} ms: estimate <= {goal:.3f} ms gave {ms:.3f} ms measured "
                  f"(dense {dense_ms:.3f} ms)", file=sys.stderr)
        met = ms <= latency_ms * (1 + rel_tol)
        if best is None or met or ms < best[1]:
            best = (result, ms, goal)
        if met:
            break
        goal *= latency_ms / ms  # the estimate was optimistic by ms / goal: ask it for less
    result, ms, goal = best
    result.achieved = {**result.achieved, "latency_ms": ms, "latency_estimate_ms": goal, "dense_latency_ms": dense_ms}
    if ms > latency_ms * (1 + rel_tol):
        result.notes = [*getattr(result, "notes", []),
                        f"latency: measured {ms:.3f} ms for a target of {latency_ms:.3f} ms after {attempts} attempts"]
    return result
