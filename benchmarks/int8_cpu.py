"""CPU INT8 with ONNX Runtime on the real digits data: accuracy before/after and the latency ratio.

    python benchmarks/int8_cpu.py [--model zoo:resnet20] [--epochs 8] [--calib 256] [--runs 300] [--batch 1]

Trains the model on scikit-learn's digits (1,437 training images), exports it for the ``cpu`` profile,
quantizes it with ONNX Runtime (calibrated on training images), and prints FP32 vs INT8 test accuracy
(360 images), their top-1 agreement and their interleaved ONNX Runtime latency on this host.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from edgeslim.data import load_data
from edgeslim.devices import get_device
from edgeslim.export import export_for_device
from edgeslim.models import build_model
from edgeslim.training import TrainConfig, evaluate, fit


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="zoo:resnet20")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--calib", type=int, default=256)
    ap.add_argument("--runs", type=int, default=300)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--train-threads", type=int, default=1, help="torch threads while training (1 is kind to a shared host)")
    args = ap.parse_args()
    torch.manual_seed(0)
    data = load_data("digits")
    model = build_model(args.model, num_classes=data.num_classes)
    threads = torch.get_num_threads()
    torch.set_num_threads(args.train_threads)
    fit(model, data.train, data.test, TrainConfig(epochs=args.epochs, lr=0.05), progress=True)
    torch.set_num_threads(threads)
    model.eval()
    print(f"PyTorch FP32 test accuracy: {evaluate(model, data.test)['accuracy']:.2f}%")
    with tempfile.TemporaryDirectory() as tmp:
        r = export_for_device(model, torch.randn(args.batch, *data.input_shape), "cpu", Path(tmp) / "m.onnx",
                              precision="int8", calibration=data.train_plain, eval_data=data.test,
                              calibration_samples=args.calib, latency_runs=args.runs)
    q, cpu = r["int8"], get_device("cpu")
    print(f"host: {cpu.display_name}; {cpu.source.split(';')[0]}")
    print(f"ONNX opset {r['onnx']['opset']}, INT8 {q['activation_type']}/{q['weight_type']} per-channel="
          f"{q['per_channel']} reduce_range={q['reduce_range']}, {q['calibration_samples']} calibration images")
    print(f"accuracy FP32 {q['accuracy_fp32']:.2f}% -> INT8 {q['accuracy_int8']:.2f}% "
          f"({q['accuracy_change']:+.2f} points on {q['samples']} test images), top-1 agreement {q['top1_agreement']:.1f}%")
    lat = q["latency_ms"]
    print(f"ONNX Runtime latency p50 FP32 {lat['fp32']['p50']:.3f} ms, INT8 {lat['int8']['p50']:.3f} ms "
          f"-> INT8 {q['int8_speedup']:.2f}x (batch {args.batch}, {args.runs} interleaved runs; "
          f"p90/p50 spread FP32 {lat['fp32']['p90'] / lat['fp32']['p50']:.2f})")


if __name__ == "__main__":
    main()
