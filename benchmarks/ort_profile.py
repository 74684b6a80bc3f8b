"""Where ONNX Runtime spends a dense and a slim model's time, node by node (ORT's own profiler).

Builds a torchvision model, prunes it with edgeslim (L1, ``target={"channels": keep}``), exports
both to ONNX and runs each in ONNX Runtime with ``SessionOptions.enable_profiling``. Prints, per
model, the time by operator kind (``Conv`` is ORT's blocked NCHWc kernel, ``FusedConv`` the plain
NCHW fallback it takes for widths that are not whole channel blocks, ``Reorder*`` the layout
conversions between them), then every node side by side. Node times are medians over the profiled
runs; they exclude the per-run overhead outside the nodes.

    python benchmarks/ort_profile.py --model mobilenet_v2 --keep 0.5                  # no rounding
    python benchmarks/ort_profile.py --model mobilenet_v2 --keep 0.5 --round-to device --allocate latency
    python benchmarks/ort_profile.py --model mobilenet_v2 --keep 0.5 --json
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

import edgeslim
from edgeslim.compress.prune import ALLOCATIONS
from edgeslim.export import export_onnx
from edgeslim.metrics import count
from edgeslim.models import build_model
from edgeslim.runtime.runners import ort_session_options


def profile_nodes(path: str, example: np.ndarray, runs: int, threads: int | None) -> list[dict]:
    """[{name, op, us, output_shape}] in execution order, median over ``runs`` profiled runs."""
    import onnxruntime as ort

    opts = ort_session_options(threads)  # as OrtRunner times models
    opts.enable_profiling = True
    opts.profile_file_prefix = str(Path(path).with_suffix(""))
    session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: example}
    for _ in range(runs):
        session.run(None, feed)
    events = json.loads(Path(session.end_profiling()).read_text())
    times, info = defaultdict(list), {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            name = e["name"][: -len("_kernel_time")]
            times[name].append(e["dur"])
            shapes = e["args"].get("output_type_shape") or [{}]
            info[name] = (e["args"].get("op_name"), next(iter(shapes[0].values()), None))
    return [{"name": n, "op": info[n][0], "us": float(np.median(t)), "output_shape": info[n][1]}
            for n, t in times.items()]


def by_op(nodes: list[dict]) -> dict[str, float]:
    totals: dict[str, float] = defaultdict(float)
    for node in nodes:
        totals[node["op"]] += node["us"]
    return dict(sorted(totals.items(), key=lambda kv: -kv[1]))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="mobilenet_v2", help="torchvision name or edgeslim spelling")
    p.add_argument("--keep", type=float, default=0.5, help="fraction of prunable channels kept")
    p.add_argument("--round-to", default=None, help="None, an integer, or 'device' (measured on this CPU)")
    p.add_argument("--allocate", default="importance", choices=ALLOCATIONS)
    p.add_argument("--input", type=int, default=224)
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--threads", type=int)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    example = torch.randn(1, 3, args.input, args.input)
    dense = build_model(args.model if ":" in args.model else f"torchvision:{args.model}").eval()
    round_to = int(args.round_to) if args.round_to and args.round_to.isdigit() else args.round_to
    result = edgeslim.prune(dense, example, target={"channels": args.keep}, round_to=round_to, device="cpu",
                            allocate=args.allocate, progress=False)
    report = {"model": args.model, "keep": args.keep, "round_to": args.round_to, "allocate": args.allocate,
              "macs_reduction": count(dense, example).macs / count(result.model, example).macs, "models": {}}
    with tempfile.TemporaryDirectory(prefix="edgeslim-profile-") as folder:
        for key, model in (("dense", dense), ("slim", result.model)):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                path = export_onnx(model, example, Path(folder) / f"{key}.onnx").path
            nodes = profile_nodes(str(path), example.numpy(), args.runs, args.threads)
            report["models"][key] = {"total_us": sum(n["us"] for n in nodes), "by_op": by_op(nodes), "nodes": nodes}
    d, s = report["models"]["dense"], report["models"]["slim"]
    report["node_speedup"] = d["total_us"] / s["total_us"]
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"{args.model} keep={args.keep} round_to={args.round_to} allocate={args.allocate}: MACs reduction "
          f"{report['macs_reduction']:.2f}x, node-time speed-up {report['node_speedup']:.2f}x")
    for key, m in report["models"].items():
        ops = ", ".join(f"{op} {us:.0f}" for op, us in m["by_op"].items())
        print(f"{key}: {len(m['nodes'])} nodes, {m['total_us']:.0f} us  ({ops})")
    print(f"\n{'dense us':>9} {'op':>17}  {'slim us':>8} {'op':>17}  slim node (output shape)")
    rows = max(len(d["nodes"]), len(s["nodes"]))
    for i in range(rows):
        a = d["nodes"][i] if i < len(d["nodes"]) else None
        b = s["nodes"][i] if i < len(s["nodes"]) else None
        left = f"{a['us']:9.1f} {a['op']:>17}" if a else " " * 27
        right = f"{b['us']:8.1f} {b['op']:>17}  {b['name'][:48]} {b['output_shape']}" if b else ""
        print(f"{left}  {right}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
