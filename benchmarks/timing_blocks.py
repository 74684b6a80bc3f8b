"""How a model is timed beside others changes what a slim model seems to gain: single runs round-robin
against blocks of runs in a row (the harness's default, ``latency.BLOCK``) and against each model alone.

Dense, Torch-Pruning at each ratio r and edgeslim at Torch-Pruning's MACs (L1, multiples of 16; no
probes, so the models are the same in every run) are exported to ONNX and timed in ONNX Runtime
(CPU, batch 1) under each protocol, all in one process:

  single        one run of each model in turn (A B C, C B A, ...): how the harness timed before
  blocks of k   k runs of a model in a row, the first of each block dropped, blocks in turn
  alone         every run of one model back to back, then the next model (two passes, the second in
                reverse order, so drift hits all alike): how a deployed model runs

A run that follows another model starts from caches that model filled; a deployed model running back
to back keeps its weights and buffers in cache. The table shows the median (ms) and the quotient
speed-up / MACs reduction of every model under each protocol.

    python benchmarks/timing_blocks.py                 # mobilenet_v2, ONNX Runtime's default threads
    python benchmarks/timing_blocks.py --threads 1
    python benchmarks/timing_blocks.py --json
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speedup import (ONE_THREAD, make_runner, one_thread_runners, parallel_note, print_warnings,  # noqa: E402
                     prune_tp)

import edgeslim  # noqa: E402
from edgeslim.metrics import count  # noqa: E402
from edgeslim.models import build_model  # noqa: E402
from edgeslim.runtime.latency import interleaved_samples  # noqa: E402

BLOCKS = (1, 2, 5, 10)


def protocol_name(block: int) -> str:
    return "single" if block == 1 else f"blocks of {block}"


def alone_samples(timers: dict, runs: int, warmup: int) -> dict[str, list[float]]:
    """Every model's runs back to back, model after model; two passes, the second in reverse order."""
    samples = {k: [] for k in timers}
    for key in list(timers) + list(timers)[::-1]:
        samples[key] += interleaved_samples({key: timers[key]}, -(-runs // 2), warmup, block=1)[key]
    return samples


def run(name: str, ratios: list[float], side: int, runs: int, warmup: int, threads: int | None) -> dict:
    torch.manual_seed(0)
    example = torch.randn(1, 3, side, side)
    dense = build_model(name if ":" in name else f"torchvision:{name}").eval()
    models = {"dense": dense}
    for r in ratios:
        models[f"tp@{r}"] = prune_tp(dense, example, r)
    macs = {k: count(m, example).macs for k, m in models.items()}
    for r in ratios:
        target = {"macs": macs[f"tp@{r}"] / macs["dense"]}
        models[f"ours@tp{r}"] = edgeslim.prune(dense, example, target=target, round_to=16, progress=False).model
        macs[f"ours@tp{r}"] = count(models[f"ours@tp{r}"], example).macs
    with tempfile.TemporaryDirectory(prefix="edgeslim-blocks-") as folder:
        runners = {k: make_runner(m, example, "ort", "cpu", folder, k, threads) for k, m in models.items()}
        runners.update(one_thread_runners({"dense": dense}, example, "ort", "cpu", folder, threads))
        try:
            for r in runners.values():
                r.prepare()
            timers = {k: r.time_once for k, r in runners.items()}
            medians = {}
            for block in BLOCKS:
                samples = interleaved_samples(timers, runs, warmup, progress=True, desc=protocol_name(block),
                                              block=block)
                medians[protocol_name(block)] = {k: float(np.median(v)) for k, v in samples.items()}
            medians["alone"] = {k: float(np.median(v)) for k, v in alone_samples(timers, runs, warmup).items()}
        finally:
            for r in runners.values():
                r.close()
    one = {p: m.pop(ONE_THREAD, None) for p, m in medians.items()}
    rows = []
    for protocol, med in medians.items():
        for key in models:
            speedup, reduction = med["dense"] / med[key], macs["dense"] / macs[key]
            rows.append({"model": name, "protocol": protocol, "variant": key, "p50_ms": med[key],
                         "macs_reduction": reduction, "speedup": speedup, "speedup_over_macs": speedup / reduction,
                         "dense_parallel_speedup": one[protocol] / med["dense"] if one[protocol] else None})
    return {"rows": rows, "variants": list(models), "protocols": list(medians)}


def print_table(out: dict, file=sys.stdout) -> None:
    variants = out["variants"]
    by = {(r["protocol"], r["variant"]): r for r in out["rows"]}
    reductions = " ".join(f"{v} {by[out['protocols'][0], v]['macs_reduction']:.2f}×" for v in variants[1:])
    print(f"MACs reduction: {reductions}\n", file=file)
    print("| protocol | " + " | ".join(variants) + " |", file=file)
    print("|" + "---|" * (len(variants) + 1), file=file)
    for p in out["protocols"]:
        cells = [f"{by[p, 'dense']['p50_ms']:.3f} ms"]
        cells += [f"{by[p, v]['p50_ms']:.3f} ms ({by[p, v]['speedup_over_macs']:.2f})" for v in variants[1:]]
        print(f"| {p} | " + " | ".join(cells) + " |", file=file)
    print("\ncells: median (speed-up / MACs reduction)", file=file)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="mobilenet_v2", help="torchvision name or edgeslim spelling")
    p.add_argument("--ratios", default="0.3,0.5,0.7", help="Torch-Pruning's channel ratios r")
    p.add_argument("--input", type=int, default=224)
    p.add_argument("--runs", type=int, default=100, help="samples per model and protocol")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads (default: all cores)")
    p.add_argument("--quick", action="store_true", help="smoke run: 32x32 input, few runs")
    p.add_argument("--json", action="store_true", help="print the raw numbers as one JSON object")
    args = p.parse_args(argv)
    if args.quick:
        args.input, args.runs, args.warmup = 32, 6, 1
    t0 = time.perf_counter()
    ratios = [float(r) for r in args.ratios.split(",") if r]
    out = run(args.model, ratios, args.input, args.runs, args.warmup, args.threads)
    import onnxruntime

    out["meta"] = {"model": args.model, "input": [1, 3, args.input, args.input], "threads": args.threads,
                   "runs": args.runs, "warmup": args.warmup, "onnxruntime": onnxruntime.__version__,
                   "wall_s": time.perf_counter() - t0}
    if args.json:
        print(json.dumps(out))
    else:
        print_table(out)
        print(f"({out['meta']['wall_s']:.0f} s, ORT {onnxruntime.__version__})")
    dense_rows = [r for r in out["rows"] if r["variant"] == "dense"]
    print_warnings([parallel_note(dense_rows[-1:], args.threads)], args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
