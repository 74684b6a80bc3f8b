"""``edgeslim export MODEL --device P -o FILE``: ONNX for the device (opset, simplification, parity
gate, channel check), the TensorRT operator check, an engine where TensorRT runs here, the trtexec
recipe for the device, and INT8 calibrated on your data."""
from __future__ import annotations

import argparse

import torch

from .common import add_command, add_model_args, human, resolve_model


def add_parser(sub) -> None:
    p = add_command(sub, "export", "ONNX (and TensorRT) for a target device, with a parity check and trtexec recipe",
                    run, render)
    add_model_args(p)
    p.add_argument("--device", required=True, metavar="P", help="device profile (see `edgeslim devices`)")
    p.add_argument("-o", "--output", required=True, metavar="FILE", help="the ONNX file to write (side files go next to it)")
    p.add_argument("--format", default="onnx,trt", help="onnx,trt (default) or onnx: whether to try a TensorRT build")
    p.add_argument("--precision", choices=["fp32", "fp16", "int8"],
                   help="engine precision (default: fp16 on NVIDIA devices, fp32 on cpu)")
    p.add_argument("--int8", action="store_true", help="same as --precision int8 (needs --data)")
    p.add_argument("--data", metavar="D", help="calibration and evaluation data for INT8: digits, cifar10:ROOT, ...")
    p.add_argument("--calib-samples", type=int, default=256, help="training images used to calibrate INT8 (default 256)")
    p.add_argument("--calib-method", default="minmax", choices=["minmax", "entropy", "percentile"])
    p.add_argument("--eval-samples", type=int, help="test images for the INT8 accuracy change (default: all)")
    p.add_argument("--bench-runs", type=int, default=100, help="interleaved FP32/INT8 latency runs on cpu (0: skip)")
    p.add_argument("--opset", type=int, help="ONNX opset (default: the device's highest, at most 20)")
    p.add_argument("--tensorrt", metavar="VERSION", help="the TensorRT version on your device, if not the profile's")
    p.add_argument("--dynamic-batch", action="store_true", help="a dynamic batch axis (default: static shapes)")
    p.add_argument("--max-batch", type=int, default=32, help="largest batch of the TensorRT profile (--dynamic-batch)")
    p.add_argument("--simplifier", default="onnxslim", choices=["onnxslim", "onnxsim", "none"])
    p.add_argument("--tolerance", type=float, default=1e-4, help="largest accepted relative error vs PyTorch (1e-4)")
    p.add_argument("--trials", type=int, default=5, help="random inputs in the parity check (5)")
    p.add_argument("--exporter", default="auto", choices=["auto", "torchscript", "dynamo"])
    p.add_argument("--dla-core", type=int, help="build for this DLA core (Jetson Xavier / Orin NX / AGX Orin)")
    p.add_argument("--workspace", type=int, metavar="MB", help="TensorRT builder workspace in MiB")
    p.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> dict:
    from ..export import export_for_device
    from ..models import build_model

    formats = {f.strip() for f in args.format.split(",") if f.strip()}
    if not formats or formats - {"onnx", "trt"}:
        raise ValueError(f"--format must be onnx or onnx,trt, not {args.format!r}")
    precision = "int8" if args.int8 else args.precision
    if args.int8 and args.precision not in (None, "int8"):
        raise ValueError(f"--int8 contradicts --precision {args.precision}")
    data = None
    if args.data:
        from ..data import load_data

        data = load_data(args.data, augment="none")
    elif precision == "int8":
        raise ValueError("INT8 needs calibration data from your domain: pass --data (e.g. --data digits)")
    loaded = resolve_model(args, num_classes=data.num_classes if data else None)
    if data is not None and (loaded.input_shape is None or tuple(loaded.input_shape[1:]) != tuple(data.input_shape)):
        if args.input or loaded.plan is not None or args.model.endswith((".pt", ".pth")):
            shown = "x".join(map(str, loaded.input_shape or ()))
            raise ValueError(f"the model's input {shown} does not match the images of --data {args.data} "
                             f"({'x'.join(map(str, data.input_shape))}); INT8 must be calibrated on the input it serves")
        loaded.input_shape = (1, *data.input_shape)  # a default shape: the data decides
    example = loaded.example_input(batch=loaded.input_shape[0] if loaded.input_shape else 1)
    dense = build_model(loaded.spec, **loaded.kwargs) if loaded.plan is not None else None
    eval_data = data.test if data is not None else None
    if eval_data is not None and args.eval_samples:
        eval_data = torch.utils.data.Subset(eval_data, range(min(args.eval_samples, len(eval_data))))
    result = export_for_device(
        loaded.model, example, args.device, args.output, precision=precision, opset=args.opset,
        tensorrt=args.tensorrt, dynamic_batch=args.dynamic_batch, max_batch=args.max_batch,
        simplify=None if args.simplifier == "none" else args.simplifier, tolerance=args.tolerance,
        trials=args.trials, exporter=args.exporter, build="trt" in formats, dense_model=dense,
        calibration=data.train_plain if data is not None else None, eval_data=eval_data,
        calibration_samples=args.calib_samples, calibration_method=args.calib_method, dla_core=args.dla_core,
        workspace_mb=args.workspace, latency_runs=args.bench_runs, progress=not args.no_progress)
    result["model"] = args.model
    result["input_shape"] = list(example.shape)
    return result


def render(r: dict) -> None:
    o = r["onnx"]
    print(f"ONNX      {o['path']}  opset {o['opset']} ({o['exporter']}), nodes {o['nodes_before']} -> {o['nodes_after']}"
          f" ({o['simplifier'] or 'not simplified'}), weights {human(o['initializer_bytes'], 'B')}")
    print(f"parity    max abs {o['max_abs_diff']:.2e}, relative {o['max_rel_diff']:.2e}, cosine {o['cosine']:.6f} "
          f"over {o['trials']} random inputs (tolerance {o['tolerance']:.0e})")
    c = r["channels"]
    dense = (f"; dense model {c['dense_out_channels']} -> differs: {c['differs_from_dense']}"
             if "dense_out_channels" in c else "")
    print(f"channels  {c['conv_layers']} convolutions, {c['graph_out_channels']} output channels in the graph, "
          f"matches the model: {c['matches_model']}{dense}")
    if "int8" in r:
        q = r["int8"]
        line = f"INT8      {q['path']} ({q['target']}, {q['calibration_samples']} calibration samples)"
        if "accuracy_fp32" in q:
            line += (f": accuracy {q['accuracy_fp32']:.2f}% -> {q['accuracy_int8']:.2f}% "
                     f"({q['accuracy_change']:+.2f} points, {q['samples']} samples)")
        if "int8_speedup" in q:
            line += f", {q['int8_speedup']:.2f}x faster than FP32 in ONNX Runtime here"
        print(line)
    if "tensorrt_ops" in r:
        ops = r["tensorrt_ops"]
        status = "all supported" if ops["ok"] else f"problems: {ops['unsupported'] + ops['restricted']}"
        print(f"TensorRT  {ops['tensorrt']} operator check: {status}")
    t = r["tensorrt"]
    print(f"engine    {'built: ' + t['engine'] if t['built'] else 'not built: ' + t['reason']}")
    if r["trtexec"]:
        print(f"trtexec   {r['trtexec']}\n          ({r['trtexec_note']})")
    e = r["estimate"]
    print(f"estimate  {e['latency_ms']:.3f} ms roofline lower bound at {e['precision']}, memory "
          f"{human(e['memory']['total_bytes'], 'B')} of {human(e['memory']['device_bytes'], 'B')}")
    for note in r["notes"]:
        print(f"note      {note}")
    print(f"report    {r['report']}")
