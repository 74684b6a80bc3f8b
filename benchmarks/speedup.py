"""Measured speed-up against MACs reduction: edgeslim (runtime-aware channel counts) vs Torch-Pruning.

For each model and channel ratio r, in ONE process, timed interleaved in ONNX Runtime (CPU, batch 1):

  dense        the torchvision model (random init; latency does not depend on the weights' values)
  tp           Torch-Pruning 1.6 BasePruner + MagnitudeImportance(p=1), pruning_ratio=r (r = fraction of
               channels REMOVED from every prunable layer), round_to=None (its default); classifier ignored
  ours         edgeslim.prune(method="l1", target={"channels": 1 - r}) (1 - r = fraction KEPT, so the same
               nominal channel ratio as tp) with round_to = measured device rounding (DeviceRounding: the
               aligned width at or above the engine's count that the runtime executes fastest) and
               allocate="measured": cut four ways (channels ranked by L1 importance, or by importance per
               measured ms per MAC; widths in multiples of 8 or of 16), the slim models timed whole and
               the fastest kept; the table says which (e.g. "latency/16"). --allocate latency or
               importance: one way only
  ours@tp-macs edgeslim.prune(target={"macs": MACs(tp) / MACs(dense)}, same rounding): matched MACs

``--drop-blocks N|all``: edgeslim first removes N residual blocks whole (prune(drop_blocks=...):
MobileNetV2's inverted residuals, least influential first), then cuts channels to the same targets,
which still count against the whole dense model. Fewer nodes, wider layers.

Reported per cell: MACs reduction (dense MACs / slim MACs), measured speed-up (dense p50 / slim p50),
and their quotient; the goal is speed-up >= 0.9 x MACs reduction for edgeslim in every cell.
With several ORT threads, dense is also timed on one thread in the same loop: if the extra threads
bought dense less than 3/4 of the ideal, a neighbour held a core and the run says so.
``--thread-gain`` times every model on one thread too and prints a second table: each model's
quotient on one thread, and what the extra threads bought it compared with dense.

    python benchmarks/speedup.py                 # ResNet-50 and MobileNetV2, r = 0.3 0.5 0.7, 224x224
    python benchmarks/speedup.py --json          # raw numbers
    python benchmarks/speedup.py --models mobilenet_v2 --threads 2 --thread-gain
    python benchmarks/speedup.py --models mobilenet_v2 --drop-blocks all
    python benchmarks/speedup.py --quick         # smoke run on tiny inputs (< 60 s)
    python benchmarks/speedup.py --runtime torch --device cuda            # PyTorch eager on a GPU
    python benchmarks/speedup.py --runtime torch-compile --device cuda    # torch.compile on a GPU

On a GPU the widths are measured with the same runtime (PyTorch on CUDA, CUDA events) and models
are timed the same way, interleaved.

Run it on a quiet machine (``nice -n 0``, nothing else busy): ratios survive noise because every
model is timed interleaved, but a busy machine widens the spread, which the table reports.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torchvision
from torch import nn

from edgeslim.compress.depth import residual_blocks
from edgeslim.compress.prune import ALLOCATIONS
from edgeslim.export import export_onnx
from edgeslim.metrics import count
from edgeslim.models import build_model
from edgeslim.runtime import OrtRunner, TorchRunner, benchmark
from edgeslim.runtime.channels import PROBE_RUNS, DeviceRounding, LatencyTable
from edgeslim.runtime.latency import DEFAULT_MAX_SPREAD

GOAL = 0.9


def classifier_layers(model: nn.Module) -> list[nn.Module]:
    """The final Linear layer(s): their outputs are the classes, never pruned."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1:]


def prune_tp(model: nn.Module, example: torch.Tensor, ratio: float) -> nn.Module:
    import copy

    import torch_pruning as tp

    slim = copy.deepcopy(model)
    pruner = tp.pruner.BasePruner(slim, example, importance=tp.importance.MagnitudeImportance(p=1),
                                  pruning_ratio=ratio, ignored_layers=classifier_layers(slim))
    pruner.step()
    return slim


def prune_ours(model: nn.Module, example: torch.Tensor, target: dict, rounding,
               allocate: str = "measured", drop_blocks: int | str = 0) -> tuple[nn.Module, dict]:
    """The slim model and what to report of it: achieved ratios, the allocation asked for and the one
    used, the residual blocks dropped."""
    import edgeslim
    from edgeslim.compress.depth import BlocksOvershoot

    options = dict(method="l1", target=target, round_to=rounding, progress=False, allocate=allocate)
    try:
        result = edgeslim.prune(model, example, drop_blocks=drop_blocks, **options)
    except BlocksOvershoot:  # e.g. all blocks at a mild channel target: channels alone (the row says 0 dropped)
        result = edgeslim.prune(model, example, **options)
    return result.model, {"achieved": dict(result.achieved), "allocate": allocate, "allocation": result.allocation,
                          "dropped_blocks": len(result.dropped)}


RUNTIMES = ("ort", "torch", "torch-compile")


def make_runner(model: nn.Module, example: torch.Tensor, runtime: str, device: str, folder: str, key: str,
                threads: int | None):
    """ONNX Runtime (exported, parity-checked) or PyTorch eager / compiled on ``device``."""
    if runtime == "ort":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            path = export_onnx(model.eval(), example, Path(folder) / f"{key}.onnx").path
        return OrtRunner(path, inputs=[example], threads=threads, device=device)
    return TorchRunner(model.eval(), example, device=device, compile=runtime == "torch-compile")


def run(models: list[str], ratios: list[float], side: int, runs: int, warmup: int, threads: int | None,
        table_path: str | None, log, probe_runs: int = PROBE_RUNS, runtime: str = "ort", device: str = "cpu",
        allocate: str = "measured", thread_gain: bool = False, drop_blocks: int | str = 0) -> list[dict]:
    """``thread_gain``: time every model on one thread as well (not only dense), to show how much
    each gains from the extra threads. ``drop_blocks``: edgeslim removes that many residual blocks
    first (prune's ``drop_blocks``)."""
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}, not {runtime!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"--device {device} needs a CUDA GPU, and torch sees none on this host")
    probe_runtime = "ort" if runtime == "ort" else "torch"  # widths measured where the models will run
    rows = []
    for name in models:
        torch.manual_seed(0)
        example = torch.randn(1, 3, side, side)
        dense = build_model(name if ":" in name else f"torchvision:{name}").eval()
        table = LatencyTable(device=device, runtime=probe_runtime, threads=threads,
                             path=table_path or Path(tempfile.mkdtemp(prefix="edgeslim-speedup-")) / "table.json")
        rounding = DeviceRounding(dense, example, runtime=probe_runtime, device=device, table=table, threads=threads,
                                  runs=probe_runs)
        variants: dict[str, tuple[nn.Module, dict]] = {"dense": (dense, {})}
        drop = drop_blocks if drop_blocks and residual_blocks(dense, [(example,)]) else 0
        if drop != drop_blocks:
            log(f"{name}: no residual block edgeslim can remove (--drop-blocks); channels only")
        timing = {}
        for r in ratios:
            t = time.perf_counter()
            tp_model, error = prune_tp(dense, example, r), None
            try:
                with torch.no_grad():
                    tp_model(example)
            except RuntimeError as exc:  # e.g. option-A (zero-padding) shortcuts TP does not follow
                error = f"Torch-Pruning's model does not run: {str(exc).splitlines()[0]}"
                log(f"{name} r={r}: {error}")
                rows.append({"model": name, "ratio": r, "variant": "tp", "error": error})
            else:
                variants[f"tp@{r}"] = (tp_model, {})
            timing[f"tp@{r}"] = time.perf_counter() - t
            t = time.perf_counter()
            variants[f"ours@{r}"] = prune_ours(dense, example, {"channels": 1 - r}, rounding, allocate, drop)
            timing[f"ours@{r}"] = time.perf_counter() - t
            log(f"{name} r={r}: pruned (tp {timing[f'tp@{r}']:.1f} s, ours {timing[f'ours@{r}']:.1f} s incl. probes)")
        dense_macs = count(dense, example).macs
        for r in ratios:
            if f"tp@{r}" not in variants:
                continue
            tp_macs = count(variants[f"tp@{r}"][0], example).macs
            t = time.perf_counter()
            variants[f"ours-matched@{r}"] = prune_ours(dense, example, {"macs": tp_macs / dense_macs}, rounding,
                                                         allocate, drop)
            timing[f"ours-matched@{r}"] = time.perf_counter() - t
        with tempfile.TemporaryDirectory(prefix="edgeslim-speedup-") as folder:
            runners, costs = {}, {}
            for key, (model, _) in variants.items():
                costs[key] = count(model, example)
                runners[key] = make_runner(model, example, runtime, device, folder, key, threads)
            runners.update(one_thread_runners({k: variants[k][0] for k in (variants if thread_gain else ["dense"])},
                                              example, runtime, device, folder, threads))
            log(f"{name}: timing {len(runners)} models interleaved, {runs} runs each")
            results = benchmark(runners, runs=runs, warmup=warmup, memory=False, progress=True)
        d = results["dense"].latency_ms
        one = {key: results.pop(on_one_thread(key)).latency_ms for key in variants if on_one_thread(key) in results}
        parallel = one["dense"].p50 / d.p50 if "dense" in one else None
        for key, res in results.items():
            if key == "dense":
                continue
            variant, r = key.split("@")
            macs_red = dense_macs / costs[key].macs
            speedup = d.p50 / res.latency_ms.p50
            row = {"model": name, "ratio": float(r), "variant": variant, "macs": costs[key].macs,
                   "dense_macs": dense_macs, "params": costs[key].params, "dense_params": costs["dense"].params,
                   "macs_reduction": macs_red, "p50_ms": res.latency_ms.p50, "dense_p50_ms": d.p50,
                   "speedup": speedup, "speedup_over_macs": speedup / macs_red,
                   "spread": res.latency_ms.spread, "dense_spread": d.spread, **variants[key][1],
                   "prune_s": timing.get(key), "goal_met": speedup >= GOAL * macs_red,
                   "dense_parallel_speedup": parallel}
            if key in one:  # its quotient on one thread, and what the extra threads bought it
                row.update(one_thread_speedup_over_macs=one["dense"].p50 / one[key].p50 / macs_red,
                           thread_gain=one[key].p50 / res.latency_ms.p50)
            rows.append(row)
    return rows


def on_one_thread(key: str) -> str:
    return f"{key}-1-thread"


ONE_THREAD = on_one_thread("dense")


def one_thread_runners(models: dict[str, nn.Module], example: torch.Tensor, runtime: str, device: str, folder: str,
                       threads: int | None) -> dict:
    """Runners of ``models`` on one thread, under ``on_one_thread`` keys, when the table's models use
    several (see ``parallel_check``); none otherwise."""
    if not parallel_check(runtime, threads):
        return {}
    return {on_one_thread(k): make_runner(m, example, runtime, device, folder, on_one_thread(k), 1)
            for k, m in models.items()}


def parallel_check(runtime: str, threads: int | None) -> bool:
    """Time dense on one ORT thread as well when the models use several: on a shared host a neighbour
    can take a core for minutes, and then "2 threads" figures describe a one-core machine."""
    return runtime == "ort" and threads != 1 and (threads or os.cpu_count() or 1) > 1


def parallel_note(rows: list[dict], threads: int | None) -> str | None:
    """A warning when dense gained less than 3/4 of the ideal from its extra threads."""
    n = threads or os.cpu_count() or 1
    gains = {r["model"]: r["dense_parallel_speedup"] for r in rows if r.get("dense_parallel_speedup")}
    low = {m: g for m, g in gains.items() if g < 0.75 * n}
    if not low:
        return None
    return ("warning: dense ran only " + ", ".join(f"{g:.2f}× ({m})" for m, g in low.items()) +
            f" faster on {n} threads than on 1: another process probably held a core, so these figures"
            f" describe a machine with fewer than {n} free cores; run again when it is quiet")


def spread_note(rows: list[dict]) -> str | None:
    """A warning naming the cells whose timing spread ((p90 - p50) / p50) was too wide to trust: a
    neighbour that takes a core now and then widens it without slowing dense on average."""
    wide = [f"{r['model']} {r['variant']}" + (f"@{r['ratio']:.1f}" if "ratio" in r else "") + f" ({r['spread']:.2f})"
            for r in rows if "error" not in r and r["spread"] > DEFAULT_MAX_SPREAD]
    if not wide:
        return None
    return (f"warning: spread above {DEFAULT_MAX_SPREAD:.2f} in {len(wide)} cell(s): {', '.join(wide)}; "
            "their quotients may be off by more than the goal's margin; run again when the machine is quiet")


def print_warnings(notes: list[str | None], as_json: bool) -> None:
    """The notes that apply (None: none), after the table; on stderr under --json so stdout stays JSON."""
    for note in filter(None, notes):
        print(note, file=sys.stderr if as_json else sys.stdout)


def print_table(rows: list[dict], out=sys.stdout) -> None:
    header = ("model", "ratio", "variant", "MACs (G)", "MACs red.", "p50 (ms)", "speed-up", "speed-up/MACs red.",
              "spread")
    print("| " + " | ".join(header) + " |", file=out)
    print("|" + "---|" * len(header), file=out)
    for r in rows:
        if "error" in r:
            print(f"| {r['model']} | {r['ratio']:.1f} | {r['variant']} | {r['error']} |" + " |" * (len(header) - 4),
                  file=out)
            continue
        mark = "" if r["variant"] == "tp" else (" ✓" if r["goal_met"] else " ✗")
        noisy = " ⚠" if r["spread"] > DEFAULT_MAX_SPREAD else ""
        # allocate="measured" chose one allocation per cell: say which
        how = [r["allocation"]] if r.get("allocate") == "measured" else []
        how += [f"{r['dropped_blocks']} blocks dropped"] if r.get("dropped_blocks") else []
        variant = r["variant"] + (f" ({', '.join(how)})" if how else "")
        print(f"| {r['model']} | {r['ratio']:.1f} | {variant} | {r['macs'] / 1e9:.3f} | {r['macs_reduction']:.2f}× | "
              f"{r['p50_ms']:.2f} | {r['speedup']:.2f}× | {r['speedup_over_macs']:.2f}{mark} | {r['spread']:.2f}{noisy} |",
              file=out)
    dense = {r["model"]: r for r in rows if "error" not in r}
    for model, r in dense.items():
        gain = r.get("dense_parallel_speedup")
        on_one = f"; {gain:.2f}× faster than on one thread" if gain else ""
        print(f"\n{model} dense: {r['dense_macs'] / 1e9:.3f} GMACs, p50 {r['dense_p50_ms']:.2f} ms "
              f"(spread {r['dense_spread']:.2f}){on_one}", file=out)
    print_thread_gains(rows, out)


def print_thread_gains(rows: list[dict], out=sys.stdout) -> None:
    """--thread-gain: each model's quotient on one thread and on the threads of the table, and its
    gain from those threads. The quotient on N threads is the one-thread quotient times the model's
    gain over dense's, so a model that gains less than dense from the extra threads loses quotient."""
    gained = [r for r in rows if "thread_gain" in r]
    if not gained:
        return
    header = ("model", "ratio", "variant", "MACs red.", "quotient, 1 thread", "quotient", "gain from threads",
              "vs dense's gain")
    print("\n| " + " | ".join(header) + " |", file=out)
    print("|" + "---|" * len(header), file=out)
    for r in gained:
        print(f"| {r['model']} | {r['ratio']:.1f} | {r['variant']} | {r['macs_reduction']:.2f}× | "
              f"{r['one_thread_speedup_over_macs']:.2f} | {r['speedup_over_macs']:.2f} | {r['thread_gain']:.2f}× | "
              f"{r['thread_gain'] / r['dense_parallel_speedup']:.2f} |", file=out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="resnet50,mobilenet_v2",
                   help="torchvision names (or edgeslim spellings such as zoo:resnet56), comma-separated")
    p.add_argument("--ratios", default="0.3,0.5,0.7", help="channel ratios r (tp: removed; ours: 1-r kept)")
    p.add_argument("--input", type=int, default=224, help="input side (default 224)")
    p.add_argument("--runs", type=int, default=100)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--runtime", default="ort", choices=RUNTIMES, help="ort (default), torch (eager) or torch-compile")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads (default: all cores)")
    p.add_argument("--table", help="latency table JSON to reuse (default: measure afresh in a temp file)")
    p.add_argument("--probe-runs", type=int, default=PROBE_RUNS,
                   help=f"timed runs per width when probing a channel group (default {PROBE_RUNS})")
    p.add_argument("--allocate", default="measured", choices=ALLOCATIONS,
                   help="edgeslim's channel allocation across groups: measured (default: importance and latency "
                        "allocation, widths in multiples of 8 and 16, the fastest slim model kept), by importance "
                        "per measured ms per MAC, or by importance alone")
    p.add_argument("--drop-blocks", default="0", metavar="N|all",
                   help="edgeslim first removes N residual blocks whole, or all it can (default 0)")
    p.add_argument("--thread-gain", action="store_true",
                   help="time every model on one thread too and print each one's gain from the extra threads "
                        "(doubles the timing)")
    p.add_argument("--quick", action="store_true", help="smoke run: resnet18 + mobilenet_v2, 32x32, r=0.5, few runs")
    p.add_argument("--json", action="store_true", help="print the raw numbers as one JSON object")
    args = p.parse_args(argv)
    if args.quick:
        # torchvision models: Torch-Pruning breaks the option-A (zero-padding) shortcuts of zoo:resnet20.
        args.models, args.ratios, args.input, args.runs, args.warmup = "resnet18,mobilenet_v2", "0.5", 32, 10, 2
        args.probe_runs = 5
    try:
        import edgeslim

        edgeslim.prune  # noqa: B018
    except AttributeError:
        print("edgeslim.prune is not available in this build (the slimming engine has not landed)", file=sys.stderr)
        return 2

    def log(msg: str) -> None:
        print(msg, file=sys.stderr)

    t0 = time.perf_counter()
    rows = run(args.models.split(","), [float(r) for r in args.ratios.split(",")], args.input, args.runs,
               args.warmup, args.threads, args.table, log, args.probe_runs, args.runtime, args.device, args.allocate,
               args.thread_gain, int(args.drop_blocks) if args.drop_blocks.isdigit() else args.drop_blocks)
    meta = {"runtime": args.runtime, "device": args.device, "allocate": args.allocate, "drop_blocks": args.drop_blocks,
            "batch": 1, "input": [1, 3, args.input, args.input],
            "runs": args.runs,
            "warmup": args.warmup, "threads": args.threads, "goal": f"speedup >= {GOAL} x macs_reduction",
            "wall_s": time.perf_counter() - t0, "torch": torch.__version__, "torchvision": torchvision.__version__}
    import onnxruntime
    import torch_pruning

    meta["onnxruntime"], meta["torch_pruning"] = onnxruntime.__version__, torch_pruning.__version__
    if args.json:
        print(json.dumps({"meta": meta, "rows": rows}))
    else:
        print_table(rows)
        ours = [r for r in rows if r["variant"] != "tp" and "error" not in r]
        print(f"\nedgeslim cells meeting speed-up >= {GOAL} x MACs reduction: {sum(r['goal_met'] for r in ours)}"
              f"/{len(ours)}  ({meta['wall_s']:.0f} s, ORT {meta['onnxruntime']}, TP {meta['torch_pruning']})")
    print_warnings([parallel_note(rows, args.threads) if args.runtime == "ort" else None, spread_note(rows)], args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
