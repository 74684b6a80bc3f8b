"""Export every torchvision classification model for a device and check it: parity with PyTorch in
ONNX Runtime, the TensorRT operator check, and (with --slim) the engine's slim model with its
channel counts verified in the graph.

    python benchmarks/export_all.py [--device jetson-orin-nano-8gb] [--slim] [--models a,b] [--max-params 2e8]
                                    [--simplifier onnxslim|onnxsim|none] [--jsonl results.jsonl] [--budget-s S]

Prints one row per model and a summary line (passed / exported / skipped). Random weights: parity is
about the graph, not about accuracy. Models with more than --max-params parameters are skipped (and
listed) so the run fits in a small machine's memory; with --slim, models the engine refuses to slim
(UnsupportedOpError) are listed apart from export failures. --budget-s stops starting new models after
that many seconds and lists the ones not run (the whole list takes hours on a small shared host).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch
import torchvision

import edgeslim
from edgeslim.export import export_for_device
from common import random_model
from edgeslim.models import default_input_shape


def slim_version(model, x):
    """The slimming engine's output for ``model`` (L1, half the MACs)."""
    return edgeslim.prune(model, x, method="l1", target={"macs": 0.5}, progress=False).model


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="jetson-orin-nano-8gb")
    ap.add_argument("--models", help="comma-separated torchvision names (default: every classification model)")
    ap.add_argument("--slim", action="store_true", help="export the engine's slim model instead of the dense one")
    ap.add_argument("--max-params", type=float, default=2e8)
    ap.add_argument("--simplifier", default="onnxslim", choices=["onnxslim", "onnxsim", "none"])
    ap.add_argument("--jsonl", help="also write one JSON object per model to this file")
    ap.add_argument("--budget-s", type=float, help="start no new model after this many seconds")
    args = ap.parse_args()
    names = args.models.split(",") if args.models else torchvision.models.list_models(module=torchvision.models)
    rows, skipped, failed, not_slimmed, not_run = [], [], [], [], []
    start = time.perf_counter()
    sink = open(args.jsonl, "w") if args.jsonl else None
    print(f"{'model':<22} {'params':>7} {'opset':>5} {'exporter':>11} {'nodes':>11} {'rel err':>8} {'TRT ops':>8} "
          f"{'chan':>5} {'s':>6}")
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            if args.budget_s is not None and time.perf_counter() - start > args.budget_s:
                not_run.append(name)
                continue
            spec = f"torchvision:{name}"
            model = random_model(spec)
            params = sum(p.numel() for p in model.parameters())
            if params > args.max_params:
                skipped.append(f"{name} ({params / 1e6:.0f} M params)")
                continue
            x = torch.randn(default_input_shape(spec))
            t0 = time.perf_counter()
            record = {"model": name, "params": params, "slim": args.slim}
            try:
                dense = None
                if args.slim:
                    try:
                        dense, model = model, slim_version(model, x)
                    except edgeslim.UnsupportedOpError as exc:  # not an export failure: nothing to export
                        not_slimmed.append(name)
                        print(f"{name:<22} {params / 1e6:>6.1f}M the engine does not slim it: {str(exc)[:100]}")
                        continue
                r = export_for_device(model, x, args.device, Path(tmp) / f"{name}.onnx", build=False,
                                      dense_model=dense, progress=False,
                                      simplify=None if args.simplifier == "none" else args.simplifier)
                o = r["onnx"]
                record.update(constant_output=o["constant_output"], opset=o["opset"], exporter=o["exporter"],
                              nodes_before=o["nodes_before"],
                              nodes_after=o["nodes_after"], max_rel_diff=o["max_rel_diff"], cosine=o["cosine"],
                              simplified=o["simplified"], trt_ops_ok=r["tensorrt_ops"]["ok"],
                              trt_problems=r["tensorrt_ops"]["unsupported"] + r["tensorrt_ops"]["restricted"],
                              channels_ok=r["channels"]["matches_model"] and r["channels"].get("differs_from_dense", True),
                              notes=r["notes"], seconds=time.perf_counter() - t0, ok=True)
                print(f"{name:<22} {params / 1e6:>6.1f}M {o['opset']:>5} {o['exporter']:>11} "
                      f"{o['nodes_before']:>4} -> {o['nodes_after']:>4} {o['max_rel_diff']:>8.1e} "
                      f"{'ok' if record['trt_ops_ok'] else 'PROBLEM':>8} {'ok' if record['channels_ok'] else 'BAD':>5} "
                      f"{record['seconds']:>6.1f}")
            except Exception as exc:  # noqa: BLE001 - every failure is a reported result
                record.update(ok=False, error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc(limit=3),
                              seconds=time.perf_counter() - t0)
                failed.append(name)
                print(f"{name:<22} {params / 1e6:>6.1f}M FAILED {type(exc).__name__}: {str(exc)[:120]}")
            rows.append(record)
            if sink:
                sink.write(json.dumps(record) + "\n")
                sink.flush()
            for f in Path(tmp).iterdir():
                f.unlink()
            sys.stdout.flush()
    passed = sum(r["ok"] and r["trt_ops_ok"] and r["channels_ok"] for r in rows)
    print(f"\n{args.device}, {'slim' if args.slim else 'dense'}: {passed}/{len(rows)} exported with parity, "
          f"TensorRT-clean and channel-checked; {len(failed)} failed ({', '.join(failed) or 'none'}); "
          f"{len(skipped)} skipped over {args.max_params:.0e} params ({', '.join(skipped) or 'none'})"
          + (f"; {len(not_slimmed)} not slimmed by the engine ({', '.join(not_slimmed)})" if args.slim else "")
          + (f"; {len(not_run)} not run within --budget-s ({', '.join(not_run)})" if not_run else ""))
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
