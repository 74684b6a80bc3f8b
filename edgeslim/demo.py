"""The whole pipeline on the embedded default: digits + a CIFAR-style ResNet-20.

train -> prune (physically) -> fine-tune -> export ONNX (parity-checked) -> benchmark dense and slim
interleaved in ONNX Runtime -> report.json + report.md + a self-contained report.html with plots.
"""
from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import torch

from .data import load_data
from .export import export_onnx
from .metrics import count
from .models import build_model, save_checkpoint
from .runtime import OrtRunner, benchmark
from .training import TrainConfig, evaluate, fit

__all__ = ["run_demo"]


def run_demo(out_dir: str | Path = "edgeslim-demo", model: str = "zoo:resnet20", epochs: int = 8,
             finetune_epochs: int = 4, target: dict[str, float] | None = None, method: str = "l1",
             runs: int = 200, seed: int = 0, progress: bool = True, round_to: str | None = "device",
             allocate: str | None = None) -> dict[str, Any]:
    """``round_to="device"`` (the default) chooses channel counts that ONNX Runtime on this CPU runs
    fast, from timed probes, and ``allocate`` defaults to "latency" with it ("importance" without);
    without them the slim model has half the MACs but widths that break ORT's blocked kernels, and
    is no faster than dense here."""
    allocate = allocate or ("latency" if round_to else "importance")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    target = target or {"macs": 0.5}
    timings: dict[str, float] = {}
    notes: list[str] = []
    data = load_data("digits")
    example = torch.randn(1, *data.input_shape)

    t = time.perf_counter()
    dense = build_model(model, num_classes=data.num_classes)
    fit(dense, data.train, data.test, TrainConfig(epochs=epochs, lr=0.05, seed=seed), progress=progress)
    dense.eval()
    dense_acc = evaluate(dense, data.test)["accuracy"]
    timings["train_s"] = time.perf_counter() - t

    t = time.perf_counter()
    try:
        from .compress import prune
    except ImportError:
        prune = None
    if prune is None:
        slim, plan, allocation = copy.deepcopy(dense), None, None
        notes.append("channel pruning is not available in this build: the `slim` entry is the dense model")
    else:
        measured = {"round_to": round_to, "device": "cpu"} if round_to else {}
        result = prune(dense, example, method=method, target=target, data=data.train_plain, progress=progress,
                       allocate=allocate, **measured)
        slim, plan, allocation = result.model, result.plan, result.allocation
    timings["prune_s"] = time.perf_counter() - t
    slim_acc_before = evaluate(slim, data.test)["accuracy"]

    t = time.perf_counter()
    if plan is not None and finetune_epochs:
        fit(slim, data.train, data.test, TrainConfig(epochs=finetune_epochs, lr=0.01, seed=seed), progress=progress)
    slim.eval()
    slim_acc = evaluate(slim, data.test)["accuracy"]
    timings["finetune_s"] = time.perf_counter() - t
    save_checkpoint(out / "dense.pt", dense, model, {"num_classes": data.num_classes}, tuple(example.shape))
    ckpt = save_checkpoint(out / "slim.pt", slim, model, {"num_classes": data.num_classes}, tuple(example.shape),
                           plan=plan.to_dict() if hasattr(plan, "to_dict") else plan)

    t = time.perf_counter()
    dense_onnx = export_onnx(dense, example, out / "dense.onnx")
    slim_onnx = export_onnx(slim, example, out / "slim.onnx")
    timings["export_s"] = time.perf_counter() - t

    t = time.perf_counter()
    # Same input for both, timed interleaved; workers spin only while a run is in progress (OrtRunner).
    bench = benchmark({"dense": OrtRunner(dense_onnx.path, inputs=[example]),
                       "slim": OrtRunner(slim_onnx.path, inputs=[example])}, runs=runs, warmup=20)
    lat = {k: b.latency_ms for k, b in bench.items()}
    timings["bench_s"] = time.perf_counter() - t

    dense_cost, slim_cost = count(dense, example), count(slim, example)

    def entry(acc, cost, stats):
        return {"accuracy": acc, "macs": cost.macs, "flops": cost.flops, "params": cost.params,
                "param_bytes": cost.param_bytes, "peak_activation_bytes": cost.peak_activation_bytes,
                "latency_ms": {k: getattr(stats.latency_ms, k) for k in ("p50", "p90", "p99", "mean")},
                "peak_memory_bytes": stats.peak_memory_bytes}

    result_dict: dict[str, Any] = {
        "model": model, "data": "digits", "method": method if plan is not None else None, "target": target,
        "round_to": round_to if plan is not None else None, "allocate": allocate if plan is not None else None,
        "allocation": allocation,  # the way kept (allocate="measured" chooses one, e.g. "latency/8")
        "dense": entry(dense_acc, dense_cost, bench["dense"]),
        "slim": entry(slim_acc, slim_cost, bench["slim"]),
        "accuracy_before_finetune": slim_acc_before,
        "onnx": {"path": slim_onnx.path, "max_abs_diff": slim_onnx.max_abs_diff, "opset": slim_onnx.opset,
                 "dense_path": dense_onnx.path},
        "runtime": "onnxruntime-cpu", "batch": 1, "runs": runs,
        "speedup": lat["dense"].p50 / lat["slim"].p50,
        "checkpoint": str(ckpt), "timing": timings, "notes": notes,
    }
    for key, b in bench.items():
        notes += [f"{key}: {w}" for w in b.warnings]
    paths = write_report_for(out, result_dict, dense_cost, slim_cost)
    result_dict["report"] = paths["markdown"]
    result_dict["report_html"] = paths["html"]
    return result_dict


def write_report_for(out: Path, result: dict, dense_cost, slim_cost) -> dict:
    from .report import write_report

    return write_report(out, result, dense_cost.layers, slim_cost.layers, title="edgeslim demo: digits, ResNet-20")
