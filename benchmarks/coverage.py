"""Zoo coverage: edgeslim's engine vs Torch-Pruning (DepGraph) on every torchvision classifier.

For each model of ``torchvision.models.list_models(module=torchvision.models)`` (random weights,
randomised so that no check passes vacuously), both tools prune half of the channels with the
L1 magnitude criterion, leaving the classifier's outputs alone, and the slim model must then

* run forward in eval mode and give the dense model's output shape,
* run forward and backward in training mode (batch of two),
* export to ONNX (opset 17, TorchScript exporter) and match PyTorch in ONNX Runtime (rel. error < 1e-4).

edgeslim must in addition pass its proof (slim model == masked original, relative error < 1e-4).
A model is *passed* when all of this holds, *refused* when the tool stops with a clear error saying
why it will not prune the model (edgeslim: ``UnsupportedOpError`` / ``ValueError``), and *failed*
otherwise (an exception elsewhere, a wrong shape, a broken export). ``trace_s`` is the time to build
the dependency graph (edgeslim: ``edgeslim.trace``; Torch-Pruning: constructing ``BasePruner``).

Torch-Pruning is run as its torchvision example does it: ``BasePruner`` with
``MagnitudeImportance(p=1)``, ``pruning_ratio=0.5``, layers with 1000 outputs ignored, and for ViT
``round_to=num_heads`` plus the ``hidden_dim`` fix-up its example applies after pruning.

Every (model, tool) pair runs in its own process with a time limit, and results are appended to a
JSON-lines file so that an interrupted sweep resumes::

    nice -n 10 python benchmarks/coverage.py --out benchmarks/results/coverage.jsonl   # hours on 2 CPU cores
    python benchmarks/coverage.py --out benchmarks/results/coverage.jsonl --table      # print the table only
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

TOOLS = ("edgeslim", "torch-pruning")
HEAVY = {"regnet_y_128gf", "vit_h_14", "vit_l_16", "vit_l_32"}


def example_input(name: str):
    import torch

    if name.startswith(("vit", "maxvit", "swin", "alexnet", "vgg")):
        side = 224  # native size: transformers require it, AlexNet/VGG pool to 6x6/7x7 (ONNX needs a divisor)
    elif name == "inception_v3":
        side = 299  # its auxiliary classifier (run in training) needs the native size
    else:
        side = 64
    return torch.randn(1, 3, side, side, generator=torch.Generator().manual_seed(0))


def build(name: str):
    import torchvision

    from edgeslim.compress.verify import randomize_

    return randomize_(torchvision.models.get_model(name)).eval()


def slim_checks(slim, example, dense_shape) -> dict:
    """Forward (eval, shape), forward + backward (train, batch 2), ONNX export + parity."""
    import torch

    from edgeslim.export import export_onnx

    slim.eval()
    with torch.no_grad():
        out = slim(example)
    if tuple(out.shape) != tuple(dense_shape):
        raise RuntimeError(f"output shape {tuple(out.shape)} != dense {tuple(dense_shape)}")
    slim.train()
    batch = torch.cat([example, torch.randn_like(example)])
    out = slim(batch)
    out = out[0] if isinstance(out, tuple) else out
    out.float().pow(2).mean().backward()
    slim.eval()
    with tempfile.TemporaryDirectory() as tmp:
        onnx = export_onnx(slim, example, Path(tmp) / "slim.onnx", simplify=False)
    return {"onnx_max_rel_diff": onnx.max_rel_diff}


def run_edgeslim(name: str) -> dict:
    import torch

    import edgeslim
    from edgeslim.compress.verify import check_slimming

    model = build(name)
    x = example_input(name)
    dense_macs = edgeslim.count(model, x).macs
    result = check_slimming(model, x, method="l1", target={"channels": 0.5})
    result.pop("traceback", None)
    if result["status"] == "passed":
        with torch.no_grad():
            result["macs_ratio"] = result["slim_macs"] / dense_macs
    return result


def run_torch_pruning(name: str) -> dict:
    import torch
    import torch_pruning as tp
    from torch import nn
    from torchvision.models.vision_transformer import VisionTransformer

    import edgeslim

    model = build(name)
    x = example_input(name)
    with torch.no_grad():
        dense_shape = tuple(model(x).shape)
    dense_macs = edgeslim.count(model, x).macs
    ignored = [m for m in model.modules() if (isinstance(m, nn.Linear) and m.out_features == 1000)
               or (isinstance(m, nn.Conv2d) and m.out_channels == 1000)]
    round_to = model.encoder.layers[0].num_heads if isinstance(model, VisionTransformer) else None
    out: dict = {"status": "failed"}
    t0 = time.perf_counter()
    try:
        pruner = tp.pruner.BasePruner(model, x, importance=tp.importance.MagnitudeImportance(p=1), pruning_ratio=0.5,
                                      ignored_layers=ignored, round_to=round_to)
        out["trace_s"] = time.perf_counter() - t0
        pruner.step()
        if isinstance(model, VisionTransformer):
            model.hidden_dim = model.conv_proj.out_channels  # Torch-Pruning's example does this by hand
        out["wall_s"] = time.perf_counter() - t0
    except Exception as exc:
        out.update(reason=f"prune: {type(exc).__name__}: {str(exc)[:500]}")
        return out
    try:
        out.update(slim_checks(model, x, dense_shape))
        out["macs_ratio"] = edgeslim.count(model, x).macs / dense_macs
    except Exception as exc:
        out.update(reason=f"slim model: {type(exc).__name__}: {str(exc)[:500]}")
        return out
    out["status"] = "passed"
    return out


def run_one(name: str, tool: str) -> dict:
    import torch

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    try:
        result = run_edgeslim(name) if tool == "edgeslim" else run_torch_pruning(name)
    except Exception as exc:  # a crash in model building etc. is a failure of the harness, reported as such
        result = {"status": "failed", "reason": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc(limit=-3)}
    return result


def load(path: Path) -> dict:
    results: dict = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                results[(r["model"], r["tool"])] = r
    return results


def table(results: dict, names: list[str]) -> str:
    lines = ["| model | edgeslim | trace s | MACs kept | Torch-Pruning | trace s | MACs kept |",
             "|---|---|---|---|---|---|---|"]
    totals = {t: {"passed": 0, "refused": 0, "failed": 0, "missing": 0, "trace_s": []} for t in TOOLS}
    for name in names:
        cells = [name]
        for tool in TOOLS:
            r = results.get((name, tool))
            if r is None:
                totals[tool]["missing"] += 1
                cells += ["-", "", ""]
                continue
            totals[tool][r["status"]] += 1
            if r.get("trace_s") is not None:
                totals[tool]["trace_s"].append(r["trace_s"])
            cells += [r["status"], f"{r['trace_s']:.1f}" if r.get("trace_s") is not None else "",
                      f"{r['macs_ratio']:.2f}" if r.get("macs_ratio") is not None else ""]
        lines.append("| " + " | ".join(cells) + " |")
    summary = ["", "| tool | passed | refused | failed | not run | median trace s |", "|---|---|---|---|---|---|"]
    for tool in TOOLS:
        t = totals[tool]
        med = sorted(t["trace_s"])[len(t["trace_s"]) // 2] if t["trace_s"] else float("nan")
        summary.append(f"| {tool} | {t['passed']} | {t['refused']} | {t['failed']} | {t['missing']} | {med:.1f} |")
    return "\n".join(lines + summary)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="benchmarks/results/coverage.jsonl")
    parser.add_argument("--models", nargs="*", help="default: every torchvision classification model")
    parser.add_argument("--tools", nargs="*", default=list(TOOLS), choices=TOOLS)
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per model and tool")
    parser.add_argument("--workers", type=int, default=1, help="models checked at the same time")
    parser.add_argument("--table", action="store_true", help="only print the table of the results file")
    parser.add_argument("--one", nargs=2, metavar=("MODEL", "TOOL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(*args.one)))
        return

    import torchvision

    names = args.models or torchvision.models.list_models(module=torchvision.models)
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    results = load(path)
    if not args.table:
        todo = [(name, tool) for name in names for tool in args.tools if (name, tool) not in results]
        lock = threading.Lock()

        def work(job):
            name, tool = job
            t0 = time.perf_counter()
            try:
                proc = subprocess.run([sys.executable, __file__, "--one", name, tool], capture_output=True, text=True,
                                      timeout=args.timeout, env={**os.environ, "PYTHONWARNINGS": "ignore"})
                lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
                r = json.loads(lines[-1]) if lines else {"status": "failed",
                                                          "reason": f"exit {proc.returncode}: {proc.stderr[-500:]}"}
            except subprocess.TimeoutExpired:
                r = {"status": "failed", "reason": f"timed out after {args.timeout} s"}
            r.update(model=name, tool=tool, total_s=time.perf_counter() - t0)
            with lock:
                results[(name, tool)] = r
                with path.open("a") as f:
                    f.write(json.dumps(r) + "\n")
                print(f"{name:24s} {tool:14s} {r['status']:8s} {r.get('reason', '')[:120]}", file=sys.stderr, flush=True)

        # models with 300 M+ parameters take several GB each: check them one at a time, after the others
        light = [job for job in todo if job[0] not in HEAVY]
        with ThreadPoolExecutor(args.workers) as pool:
            list(pool.map(work, light))
        for job in todo:
            if job[0] in HEAVY:
                work(job)
    print(table(results, names))


if __name__ == "__main__":
    main()
