"""Runners (torch / onnxruntime / tensorrt, local or over SSH), the latency harness, and
runtime-aware channel counts (measured per device and runtime)."""
from .channels import DeviceRounding, LatencyModel, LatencyTable
from .latency import BenchResult, LatencyStats, benchmark, interleaved_latency, stats_from_samples
from .runners import OrtRunner, Runner, TensorRTRunner, TorchRunner, resolve_device, runner_for
from .target import prune_to_latency

__all__ = ["BenchResult", "LatencyStats", "benchmark", "interleaved_latency", "stats_from_samples",
           "Runner", "TorchRunner", "OrtRunner", "TensorRTRunner", "resolve_device", "runner_for",
           "DeviceRounding", "LatencyModel", "LatencyTable", "prune_to_latency"]
