"""onnxslim vs onnxsim on the same raw exports: nodes left, time taken, parity with PyTorch.

    python benchmarks/simplifiers.py [--models resnet18,mobilenet_v3_small,...] [--opset 17]

Prints one row per model and simplifier. Times are wall-clock on this machine (noisy when shared);
node counts and parity are deterministic. The numbers in README's "Export" section come from here.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import onnx
import torch

from edgeslim.export.onnx import _run_exporter, _simplify, graph_summary, parity
from common import random_model

DEFAULT = "zoo:resnet56,torchvision:resnet18,torchvision:mobilenet_v2,torchvision:mobilenet_v3_small," \
          "torchvision:efficientnet_b0,torchvision:convnext_tiny,torchvision:regnet_y_400mf,torchvision:vit_b_16"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=DEFAULT)
    ap.add_argument("--opset", type=int, default=17)
    args = ap.parse_args()
    print(f"{'model':<32} {'simplifier':<9} {'nodes':>11} {'seconds':>8} {'rel err':>9}  result")
    with tempfile.TemporaryDirectory() as tmp:
        for spec in args.models.split(","):
            model = random_model(spec)
            side = 32 if spec.startswith("zoo:") else 224
            x = torch.randn(1, 3, side, side)
            raw_path = Path(tmp) / "raw.onnx"
            _run_exporter("torchscript", model, x, raw_path, args.opset, ["input"], ["output"], False)
            raw = onnx.load(str(raw_path))
            n_raw = graph_summary(raw)["nodes"]
            for name in ("onnxslim", "onnxsim"):
                out = Path(tmp) / f"{name}.onnx"
                t0 = time.perf_counter()
                try:
                    simplified = _simplify(raw, name)
                except Exception as exc:  # noqa: BLE001 - a failure is a result here
                    print(f"{spec:<32} {name:<9} {n_raw:>5} ->   - {time.perf_counter() - t0:>8.2f} {'-':>9}  "
                          f"FAILED {type(exc).__name__}: {str(exc)[:60]}")
                    continue
                seconds = time.perf_counter() - t0
                onnx.save(simplified, str(out))
                check = parity(model, out, x, trials=3)
                ok = "ok" if check["max_rel_diff"] <= 1e-4 else "PARITY FAILED"
                print(f"{spec:<32} {name:<9} {n_raw:>5} -> {graph_summary(simplified)['nodes']:>3} {seconds:>8.2f} "
                      f"{check['max_rel_diff']:>9.1e}  {ok}")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
