"""Export for a named device: the opset from its profile, ONNX + parity gate + channel check, the
TensorRT operator check, an engine where TensorRT and a GPU are present, the trtexec recipe for the
device itself, and INT8 (ONNX Runtime on CPUs, explicit Q/DQ for TensorRT) with its accuracy change."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import nn
from torch.utils.data import Dataset

from ..devices import DeviceProfile, default_precision, default_workspace_mb, estimate_model, get_device
from . import tensorrt as trt_tools
from .onnx import TORCHSCRIPT_MAX_OPSET, check_channels, export_onnx
from .quantize import calibration_arrays, compare_onnx, output_agreement, quantize_int8

__all__ = ["export_for_device", "choose_opset", "DEFAULT_OPSET_CEILING"]

# Without an explicit --opset, export at the device's highest opset but not above 20: every operator a
# vision model needs exists by 20 (GELU arrived in 20), and up to 20 the fast TorchScript exporter works.
DEFAULT_OPSET_CEILING = TORCHSCRIPT_MAX_OPSET


def choose_opset(device: DeviceProfile, requested: int | None = None, tensorrt: str | None = None) -> int:
    """The ONNX opset to export for ``device`` (running TensorRT ``tensorrt`` if given)."""
    limit = trt_tools.max_onnx_opset(tensorrt) if tensorrt else device.max_onnx_opset
    runtime = f"TensorRT {tensorrt}" if tensorrt else ("ONNX Runtime" if device.kind == "cpu" else "its runtime")
    if requested is not None:
        if requested > limit:
            raise ValueError(f"opset {requested} is above what {device.name} ({runtime}) accepts: use --opset {limit} "
                             "or lower")
        if requested < 7:
            raise ValueError(f"opset {requested} is too old; use 7 or newer")
        return requested
    return min(limit, DEFAULT_OPSET_CEILING)


def _check_precision(device: DeviceProfile, precision: str, dla_core: int | None, has_data: bool) -> None:
    if precision not in ("fp32", "fp16", "int8"):
        raise ValueError(f"precision must be fp32, fp16 or int8, not {precision!r}")
    if device.kind == "cpu" and precision == "fp16":
        raise ValueError("the cpu profile runs ONNX Runtime in fp32 or int8; use --precision fp32 or --int8")
    if precision != "fp32" and not device.supports(precision):
        raise ValueError(f"{device.name} has no fast {precision} ({device.gpu or device.display_name}); "
                         "use --precision fp16 or fp32")
    if precision == "int8" and not has_data:
        raise ValueError("INT8 needs calibration data from your domain: pass --data (e.g. --data digits)")
    if dla_core is not None:
        if not 0 <= dla_core < device.dla_cores:
            raise ValueError(f"{device.name} has {device.dla_cores} DLA core(s); --dla-core must be in "
                             f"0..{device.dla_cores - 1}" if device.dla_cores else f"{device.name} has no DLA")
        if precision == "fp32":
            raise ValueError("the DLA runs FP16 or INT8 only: use --precision fp16 or --int8")


def _fp16_graph(src: Path, dst: Path) -> None:
    """An FP16 copy of the graph with FP32 inputs/outputs (TensorRT 11 takes precision from the graph)."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    onnx.save(convert_float_to_float16(onnx.load(str(src)), keep_io_types=True), str(dst))


def _channel_notes(channels: dict[str, Any], has_dense: bool) -> list[str]:
    """Refuse an unpruned graph for a slim model; note anything else odd about the channel check."""
    notes = []
    if has_dense and not channels["differs_from_dense"]:
        if channels["model_differs_from_dense"]:
            raise RuntimeError(f"the exported graph has the dense model's convolution shapes although the slim model's "
                               f"differ ({channels['graph_out_channels']} vs {channels['model_out_channels']} conv "
                               "output channels): refusing to export an unpruned model")
        notes.append("the slim model has the dense model's channel counts (nothing was removed)")
    if not channels["matches_model"]:
        notes.append("the graph's convolution shapes differ from the model's nn.Conv modules (functional convs or "
                     f"rewritten weights?): {channels.get('mismatches')}")
    return notes


def _int8(out: Path, device: DeviceProfile, calib: list, eval_data: Dataset | None, method: str,
          latency_runs: int) -> dict[str, Any]:
    """Calibrate once on the user's data: ONNX Runtime's layout for CPUs, symmetric Q/DQ for TensorRT."""
    target = "cpu" if device.kind == "cpu" else "tensorrt"
    int8_path = out.with_name(out.stem + ".int8.onnx")
    int8 = quantize_int8(out, int8_path, calib, target=target, method=method).to_dict()
    if eval_data is not None:
        int8.update(compare_onnx(out, int8_path, eval_data, latency_runs=latency_runs if target == "cpu" else 0))
    held_out = calibration_arrays(eval_data, 64) if eval_data is not None else calib[:64]
    int8["agreement"] = output_agreement(out, int8_path, held_out)  # INT8 vs FP32 graph on real inputs
    return int8


def _tensorrt(out: Path, engine_onnx: Path, device: DeviceProfile, trt_version: str, precision: str, build: bool,
              calib: list | None, onnx_result, example: torch.Tensor, batch_range, dla_core: int | None,
              workspace_mb: int) -> dict[str, Any]:
    """Operator check, trtexec recipe for the device, and an engine where TensorRT runs here."""
    v = trt_tools.parse_version(trt_version)
    result: dict[str, Any] = {}
    if precision == "fp16" and v >= (11, 0):
        engine_onnx = out.with_name(out.stem + ".fp16.onnx")
        _fp16_graph(out, engine_onnx)
        result["fp16_onnx"] = str(engine_onnx)
    result["tensorrt_ops"] = trt_tools.check_ops(onnx.load(str(engine_onnx), load_external_data=False), v)
    engine, cache, calib_cache = (out.with_suffix(s) for s in (".engine", ".timing.cache", ".calib.cache"))
    shape = list(example.shape)
    result["trtexec"] = trt_tools.trtexec_command(
        engine_onnx.name, v, engine_path=engine.name, precision=precision, workspace_mb=workspace_mb,
        timing_cache=cache.name, dla_core=dla_core, input_name=onnx_result.input_names[0], input_shape=shape,
        dynamic_batch=batch_range)
    result["trtexec_note"] = (f"run on the {device.display_name} (TensorRT {trt_version}) in a folder holding "
                              f"{engine_onnx.name}" + (" and its .data file" if onnx_result.external_data else ""))
    if not build:
        result["tensorrt"] = {"built": False, "reason": "not requested (--format onnx)"}
        return result
    # Below TensorRT 11 the engine built here calibrates the FP32 graph with TensorRT's entropy calibrator.
    calib_batches = [x[None] for x in calib] if calib is not None and v < (11, 0) else None
    if calib_batches is not None:
        calib_cache.unlink(missing_ok=True)  # never reuse another model's ranges
    result["tensorrt"] = trt_tools.build_engine(
        str(out if calib_batches is not None else engine_onnx), str(engine), precision=precision,
        workspace_mb=workspace_mb, timing_cache=str(cache), dla_core=dla_core, calibration_batches=calib_batches,
        calibration_cache=str(calib_cache), input_shape=shape, dynamic_batch=batch_range).to_dict()
    return result


def export_for_device(model: nn.Module, example: torch.Tensor, device: str | DeviceProfile, out: str | Path, *,
                      precision: str | None = None, opset: int | None = None, tensorrt: str | None = None,
                      dynamic_batch: bool = False, max_batch: int = 32, simplify: str | None = "onnxslim",
                      tolerance: float = 1e-4, trials: int = 5, exporter: str = "auto", build: bool = True,
                      dense_model: nn.Module | None = None, calibration: Dataset | None = None,
                      eval_data: Dataset | None = None, calibration_samples: int = 256, calibration_method: str = "minmax",
                      dla_core: int | None = None, workspace_mb: int | None = None, latency_runs: int = 100,
                      progress: bool = True) -> dict[str, Any]:
    """Export ``model`` for ``device`` and return everything the ``export`` command reports.

    ``out`` is the ONNX file; side files (``.fp16.onnx``, ``.int8.onnx``, ``.engine``, ``.timing.cache``,
    ``.export.json``) go next to it. ``dense_model`` (the unpruned architecture) makes the exporter refuse
    a graph that still has the dense channel counts. ``precision="int8"`` needs ``calibration`` data;
    ``eval_data`` (labelled) measures the accuracy change. Raises ValueError for impossible requests and
    RuntimeError when the graph fails the parity gate.
    """
    from tqdm import tqdm

    device = get_device(device)
    out = Path(out)
    if out.suffix != ".onnx":
        raise ValueError(f"the output file {out} must end in .onnx")
    trt_version = tensorrt or device.tensorrt
    if trt_version:
        trt_tools.parse_version(trt_version)
    precision = precision or default_precision(device)
    _check_precision(device, precision, dla_core, calibration is not None)
    chosen_opset = choose_opset(device, opset, tensorrt)
    workspace_mb = workspace_mb if workspace_mb is not None else default_workspace_mb(device)
    timing: dict[str, float] = {}
    steps = tqdm(total=2 + (precision == "int8") + bool(trt_version), desc=f"export for {device.name}",
                 disable=not progress, leave=False)

    def step(name: str, fn, *args, **kwargs):
        steps.set_postfix_str(name)
        t0 = time.perf_counter()
        value = fn(*args, **kwargs)
        timing[f"{name}_s"] = time.perf_counter() - t0
        steps.update()
        return value

    onnx_result = step("onnx", export_onnx, model, example, out, opset=chosen_opset, simplify=simplify,
                       tolerance=tolerance, trials=trials, dynamic_batch=dynamic_batch, exporter=exporter)
    notes = [onnx_result.note] if onnx_result.note else []
    if onnx_result.constant_output:
        notes.append("the model's outputs did not change with the input (a zero-initialised classifier?): the "
                     "parity check compared constants; export trained weights to make it meaningful")
    channels = check_channels(onnx.load(str(out), load_external_data=False), model, dense_model, example[:1])
    notes += _channel_notes(channels, dense_model is not None)
    result: dict[str, Any] = {
        "device": device.name, "device_kind": device.kind, "precision": precision, "tensorrt_version": trt_version,
        "onnx": onnx_result.to_dict(), "channels": channels,
    }
    calib = calibration_arrays(calibration, calibration_samples) if precision == "int8" else None
    engine_onnx = out  # the graph trtexec and the builder read
    if calib is not None:
        result["int8"] = step("int8", _int8, out, device, calib, eval_data, calibration_method, latency_runs)
        if eval_data is None:
            notes.append("no labelled evaluation data: the INT8 accuracy change was not measured")
        if device.kind != "cpu":
            engine_onnx = Path(result["int8"]["path"])
    if trt_version:
        batch_range = (1, min(8, max_batch), max_batch) if dynamic_batch else None
        result.update(step("tensorrt", _tensorrt, out, engine_onnx, device, trt_version, precision, build, calib,
                           onnx_result, example, batch_range, dla_core, workspace_mb))
        if "fp16_onnx" in result:
            notes.append("TensorRT 11 takes precision from the graph: the trtexec command reads the FP16 copy")
        if not result["tensorrt_ops"]["ok"]:
            notes.append(f"the graph uses operators TensorRT {trt_version} does not support as-is: see tensorrt_ops")
    else:
        result["trtexec"] = None
        result["tensorrt"] = {"built": False, "reason": f"{device.name} runs ONNX Runtime, not TensorRT"}
    est = step("estimate", estimate_model, model, example[:1] if dynamic_batch else example, device,
               precision=precision, workspace_mb=workspace_mb)
    result["estimate"] = {"latency_ms": est.latency_ms, "precision": est.precision, "memory": est.memory,
                          "warnings": est.warnings, "assumptions": est.assumptions}
    notes.extend(est.warnings)
    steps.close()
    result["notes"] = notes
    result["timing"] = timing
    report = out.with_suffix(".export.json")
    report.write_text(json.dumps(result, indent=1, default=str))
    result["report"] = str(report)
    return result

