"""How fast can channel pruning make a model on this runtime? Every channel group cut to one width.

For each width w (default 8, 16, 24, 32, 48, 64), the model with every prunable channel group cut to min(w, its
size) channels, physically, by edgeslim's engine (which channels are kept does not matter for
latency); beside it dense and Torch-Pruning at ``--tp-ratio``. All are exported to ONNX and timed
interleaved in ONNX Runtime (CPU, batch 1, median).

Why: a group keeps time costs that do not shrink with its width (a node's fixed cost, kernels that
need whole channel blocks), so latency has a floor. The fastest uniform width approximates it: a
pruned model with more channels everywhere does more work through the same nodes. The script also
prints the latency that issue 8's goal (speed-up >= 0.9 x MACs reduction) demands at Torch-Pruning's
MACs; when that lies near or below the floor, no choice of channel counts can meet it.

``--random N`` adds N random width profiles at exactly Torch-Pruning's MACs (each group a random
fraction of its channels, in multiples of ``--multiple``, scaled together to the MACs): a search
for the fastest model a latency oracle could pick there, blind to which channels matter. The best
of them is an optimistic estimate (the best of N noisy medians) from a blind search: when it meets
the goal, channel counts exist that do, whatever edgeslim's allocation reaches; when even it misses
widely, the cell is probably out of reach of channel counts alone.

    python benchmarks/width_floor.py                          # mobilenet_v2, ONNX Runtime's default threads
    python benchmarks/width_floor.py --threads 1 --model resnet50
    python benchmarks/width_floor.py --tp-ratio 0.5 --random 30
    python benchmarks/width_floor.py --json
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
from speedup import (GOAL, ONE_THREAD, make_runner, one_thread_runners, parallel_note, print_warnings,  # noqa: E402
                     prune_tp, spread_note)

from edgeslim.compress import apply_plan, make_plan, trace  # noqa: E402
from edgeslim.compress.targets import CostModel  # noqa: E402
from edgeslim.metrics import count  # noqa: E402
from edgeslim.models import build_model  # noqa: E402
from edgeslim.runtime import benchmark  # noqa: E402


def cut_to(model: torch.nn.Module, graph, widths: dict[str, int]) -> torch.nn.Module:
    """``model`` physically cut to ``widths`` (group id -> channels kept; which ones does not matter
    for latency: the first)."""
    keep = {g.id: list(range(widths[g.id])) for g in graph.prunable_groups if widths[g.id] < g.size}
    return apply_plan(model, make_plan(graph, keep)).eval()


def uniform_width(model: torch.nn.Module, example: torch.Tensor, width: int) -> torch.nn.Module:
    """``model`` with every prunable channel group cut to ``min(width, size)`` channels."""
    graph = trace(model, (example,))
    return cut_to(model, graph, {g.id: min(width, g.size) for g in graph.prunable_groups})


def random_widths(graph, macs_ratio: float, multiple: int, rng: np.random.Generator) -> dict[str, int] | None:
    """A random channel count per prunable group (a random fraction of its size in multiples of
    ``multiple``; a group no larger stays whole), all scaled together so the model keeps
    ``macs_ratio`` of its MACs (within 3 %); None when the rounding cannot land that close."""
    cost, groups = CostModel(graph), graph.prunable_groups
    fractions = rng.uniform(0.2, 1.0, len(groups))

    def widths(scale: float) -> dict[str, int]:
        return {g.id: min(g.size, max(multiple, multiple * round(g.size * f * scale / multiple)))
                for g, f in zip(groups, fractions)}

    def kept_macs(w: dict[str, int]) -> float:
        kept = np.ones(graph.num_classes, dtype=bool)
        for g in groups:
            kept[g.classes[w[g.id]:]] = False
        return cost.macs(kept) / cost.macs_dense

    lo, hi = 0.0, 1 / fractions.min()  # at hi every group is whole
    for _ in range(40):  # the largest scale whose model stays within the MACs
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if kept_macs(widths(mid)) <= macs_ratio else (lo, mid)
    w = widths(lo)
    return w if kept_macs(w) >= macs_ratio * 0.97 else None


def run(name: str, widths: list[int], tp_ratio: float, side: int, runs: int, warmup: int,
        threads: int | None, random: int = 0, multiple: int = 16, seed: int = 0) -> dict:
    torch.manual_seed(0)
    example = torch.randn(1, 3, side, side)
    dense = build_model(name if ":" in name else f"torchvision:{name}").eval()
    tp = prune_tp(dense, example, tp_ratio)
    variants = {"dense": dense, f"tp@{tp_ratio}": tp}
    for w in widths:
        variants[f"width {w}"] = uniform_width(dense, example, w)
    graph, rng = trace(dense, (example,)), np.random.default_rng(seed)
    tp_macs_ratio = count(tp, example).macs / count(dense, example).macs
    profiles = []
    for _ in range(10 * random):  # a profile the rounding cannot land near the MACs is drawn again
        if len(profiles) == random:
            break
        profile = random_widths(graph, tp_macs_ratio, multiple, rng)
        if profile:
            profiles.append(profile)
    for i, profile in enumerate(profiles, 1):
        variants[f"random {i}"] = cut_to(dense, graph, profile)
    with tempfile.TemporaryDirectory(prefix="edgeslim-floor-") as folder:
        runners = {k: make_runner(m, example, "ort", "cpu", folder, k.replace(" ", "-"), threads)
                   for k, m in variants.items()}
        runners.update(one_thread_runners({"dense": dense}, example, "ort", "cpu", folder, threads))
        results = benchmark(runners, runs=runs, warmup=warmup, memory=False, progress=True)
    d = results["dense"].latency_ms
    one = results.pop(ONE_THREAD, None)
    dense_macs = count(dense, example).macs
    rows = []
    for key, res in results.items():
        macs = count(variants[key], example).macs
        reduction, speedup = dense_macs / macs, d.p50 / res.latency_ms.p50
        rows.append({"model": name, "variant": key, "macs": macs, "dense_macs": dense_macs,
                     "macs_reduction": reduction, "p50_ms": res.latency_ms.p50, "dense_p50_ms": d.p50,
                     "speedup": speedup, "speedup_over_macs": speedup / reduction, "spread": res.latency_ms.spread,
                     "dense_parallel_speedup": one.latency_ms.p50 / d.p50 if one else None})
    tp = next(r for r in rows if r["variant"].startswith("tp@"))
    floor = min((r for r in rows if r["variant"].startswith("width ")), key=lambda r: r["p50_ms"], default=None)
    best = max((r for r in rows if r["variant"].startswith("random ")), key=lambda r: r["speedup_over_macs"],
               default=None)  # their MACs differ by up to 3 %: the best is the one closest to the goal
    return {"rows": rows, "goal_ms_at_tp_macs": d.p50 / (GOAL * tp["macs_reduction"]),
            "tp_macs_reduction": tp["macs_reduction"], "floor": floor and floor["variant"],
            "best_random": best and best["variant"], "multiple": multiple}


def print_table(out: dict, tp_ratio: float, file=sys.stdout) -> None:
    header = ("variant", "MACs (G)", "MACs red.", "p50 (ms)", "speed-up", "speed-up/MACs red.", "spread")
    print("| " + " | ".join(header) + " |", file=file)
    print("|" + "---|" * len(header), file=file)
    randoms = [r for r in out["rows"] if r["variant"].startswith("random ")]
    for r in out["rows"]:
        if r in randoms and r["variant"] != out["best_random"]:
            continue  # the random profiles are summarised below the table; their best is the row
        label = (f"best of {len(randoms)} random (/{out['multiple']})" if r["variant"] == out["best_random"]
                 else r["variant"])
        print(f"| {label} | {r['macs'] / 1e9:.3f} | {r['macs_reduction']:.2f}× | {r['p50_ms']:.3f} | "
              f"{r['speedup']:.2f}× | {r['speedup_over_macs']:.2f} | {r['spread']:.2f} |", file=file)
    gain = out["rows"][0]["dense_parallel_speedup"]  # the same on every row
    if gain:
        print(f"\ndense: {gain:.2f}× faster than on one thread", file=file)
    if randoms:
        q = sorted(r["speedup_over_macs"] for r in randoms)
        red = sorted(r["macs_reduction"] for r in randoms)
        print(f"\n{len(randoms)} random width profiles (multiples of {out['multiple']}, {red[0]:.2f}–{red[-1]:.2f}× "
              f"fewer MACs): speed-up/MACs red. {q[0]:.2f} (min), {q[len(q) // 2]:.2f} (median), {q[-1]:.2f} (max)",
              file=file)
    floor = next((r for r in out["rows"] if r["variant"] == out["floor"]), None)
    best = next((r for r in randoms if r["variant"] == out["best_random"]), None)
    print(f"\nthe goal at Torch-Pruning's MACs (r = {tp_ratio}, {out['tp_macs_reduction']:.2f}× fewer) needs "
          f"p50 <= {out['goal_ms_at_tp_macs']:.3f} ms" +
          (f"; the fastest uniform width ({floor['variant']}, {floor['macs_reduction']:.2f}× fewer MACs) runs "
           f"{floor['p50_ms']:.3f} ms" if floor else "") +
          (f"; the best random profile ({best['macs_reduction']:.2f}× fewer) runs {best['p50_ms']:.3f} ms, "
           f"{best['speedup_over_macs']:.2f} of its MACs reduction" if best else ""), file=file)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="mobilenet_v2", help="torchvision name or edgeslim spelling")
    p.add_argument("--widths", default="8,16,24,32,48,64", help="uniform channel counts, comma-separated")
    p.add_argument("--tp-ratio", type=float, default=0.7, help="Torch-Pruning's ratio for the reference row")
    p.add_argument("--input", type=int, default=224)
    p.add_argument("--runs", type=int, default=100)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads (default: all cores)")
    p.add_argument("--random", type=int, default=0, help="random width profiles at Torch-Pruning's MACs (default 0)")
    p.add_argument("--multiple", type=int, default=16, help="their channel counts in multiples of this (default 16)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random profiles")
    p.add_argument("--quick", action="store_true", help="smoke run: 32x32 input, few runs")
    p.add_argument("--json", action="store_true", help="print the raw numbers as one JSON object")
    args = p.parse_args(argv)
    if args.quick:
        args.input, args.runs, args.warmup = 32, 5, 1
    t0 = time.perf_counter()
    widths = [int(w) for w in args.widths.split(",") if w]
    out = run(args.model, widths, args.tp_ratio, args.input, args.runs, args.warmup, args.threads,
              args.random, args.multiple, args.seed)
    import onnxruntime

    out["meta"] = {"model": args.model, "input": [1, 3, args.input, args.input], "threads": args.threads,
                   "runs": args.runs, "warmup": args.warmup, "tp_ratio": args.tp_ratio, "seed": args.seed,
                   "onnxruntime": onnxruntime.__version__, "wall_s": time.perf_counter() - t0}
    if args.json:
        print(json.dumps(out))
    else:
        print_table(out, args.tp_ratio)
        print(f"({out['meta']['wall_s']:.0f} s, ORT {onnxruntime.__version__})")
    # one row for the thread check: the dense gain is the same on all
    print_warnings([parallel_note(out["rows"][:1], args.threads), spread_note(out["rows"])], args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
