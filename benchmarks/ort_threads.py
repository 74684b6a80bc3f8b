"""How ONNX Runtime's worker threads are told to wait changes measured speed-ups: which setting
makes the interleaved harness agree with a default session timed alone?

Three thread-pool settings, each timed two ways:

  no-spin       workers sleep whenever they have no work (session.intra_op.allow_spinning=0)
  spin-in-run   workers spin while run() is in progress, stop when it returns
                (session.force_spinning_stop=1; what OrtRunner uses)
  default       ONNX Runtime's default: workers keep spinning for a while after run() returns

  interleaved   all models of one setting timed interleaved in one process, in blocks of runs in a row
                (the harness's way, as benchmarks/speedup.py)
  alone         each model in a session of its own, the only one alive while it is timed
                (as a deployed model runs), in 5 blocks per model taken in turn

Models: a torchvision model dense, Torch-Pruning at ratios 0.5 and 0.7 and edgeslim L1 at the same
channel ratios (no rounding, importance allocation: no probes needed). The table gives each model's
speed-up over dense divided by its MACs reduction. The setting to trust is the one whose interleaved
column matches the default-alone column.

    python benchmarks/ort_threads.py                       # resnet50, 224x224, ORT's default threads
    python benchmarks/ort_threads.py --model mobilenet_v2 --threads 2 --json
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speedup import prune_ours, prune_tp  # noqa: E402

from edgeslim.export import export_onnx  # noqa: E402
from edgeslim.metrics import count  # noqa: E402
from edgeslim.models import build_model  # noqa: E402
from edgeslim.runtime.latency import interleaved_samples  # noqa: E402
from edgeslim.runtime.runners import ort_session_options  # noqa: E402

# setting -> ort_session_options(allow_spinning=...): session.intra_op.allow_spinning=0,
# session.force_spinning_stop=1 (OrtRunner's), or no entry (ONNX Runtime's default)
SETTINGS = {"no-spin": False, "spin-in-run": True, "default": None}


def session_run(path: str, example: np.ndarray, allow_spinning: bool | None, threads: int | None):
    """A zero-argument callable that runs one inference and returns its wall time in ms."""
    import onnxruntime as ort

    opts = ort_session_options(threads, allow_spinning=allow_spinning)
    session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: example}

    def timed() -> float:
        t = time.perf_counter()
        session.run(None, feed)
        return (time.perf_counter() - t) * 1e3
    return timed


def alone(paths: dict, example: np.ndarray, allow_spinning: bool | None, threads: int | None, runs: int, warmup: int,
          rounds: int = 5) -> dict[str, float]:
    """Each model in a session of its own, the only one alive while it is timed. The runs are split
    into ``rounds`` blocks per model, taken in turn, so a neighbour who takes a core for a few seconds
    spoils one block of each model rather than every run of one."""
    samples: dict[str, list[float]] = {k: [] for k in paths}
    for _ in range(rounds):
        for k, path in paths.items():
            timer = session_run(path, example, allow_spinning, threads)
            samples[k] += interleaved_samples({k: timer}, -(-runs // rounds), warmup)[k]
    return {k: float(np.median(v)) for k, v in samples.items()}


def variants(name: str, example: torch.Tensor) -> dict:
    dense = build_model(f"torchvision:{name}").eval()
    models = {"dense": dense}
    for r in (0.5, 0.7):
        models[f"tp@{r}"] = prune_tp(dense, example, r)
        models[f"ours@{r}"] = prune_ours(dense, example, {"channels": 1 - r}, None, allocate="importance")[0]
    return models


def run(name: str, side: int, runs: int, warmup: int, threads: int | None, log) -> list[dict]:
    torch.manual_seed(0)
    example = torch.randn(1, 3, side, side)
    models = variants(name, example)
    macs = {k: count(m, example).macs for k, m in models.items()}
    rows = []
    with tempfile.TemporaryDirectory(prefix="edgeslim-threads-") as folder:
        paths = {}
        for k, m in models.items():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                paths[k] = export_onnx(m, example, Path(folder) / f"{k.replace('@', '_')}.onnx").path
        for setting, allow_spinning in SETTINGS.items():
            log(f"{name}: {setting}, {len(paths)} models, {runs} runs each, interleaved then alone")
            timers = {k: session_run(p, example.numpy(), allow_spinning, threads) for k, p in paths.items()}
            samples = interleaved_samples(timers, runs, warmup)
            medians = {"interleaved": {k: float(np.median(v)) for k, v in samples.items()}}
            del timers  # no session of this setting is alive while the models are timed alone
            medians["alone"] = alone(paths, example.numpy(), allow_spinning, threads, runs, warmup)
            for mode, med in medians.items():
                for k in models:
                    reduction = macs["dense"] / macs[k]
                    speedup = med["dense"] / med[k]
                    rows.append({"model": name, "setting": setting, "timing": mode, "variant": k, "p50_ms": med[k],
                                 "macs_reduction": reduction, "speedup": speedup,
                                 "speedup_over_macs": speedup / reduction})
    return rows


def print_table(rows: list[dict], out=sys.stdout) -> None:
    keys = [r["variant"] for r in rows if r["setting"] == rows[0]["setting"] and r["timing"] == rows[0]["timing"]]
    slim = [k for k in keys if k != "dense"]
    reductions = {r["variant"]: r["macs_reduction"] for r in rows}
    header = ["setting", "timing", "dense p50 (ms)"] + [f"{k} ({reductions[k]:.1f}× MACs)" for k in slim]
    print("| " + " | ".join(header) + " |", file=out)
    print("|" + "---|" * len(header), file=out)
    for setting in SETTINGS:
        for mode in ("interleaved", "alone"):
            cells = {r["variant"]: r for r in rows if r["setting"] == setting and r["timing"] == mode}
            print(f"| {setting} | {mode} | {cells['dense']['p50_ms']:.2f} | " + " | ".join(
                f"{cells[k]['speedup']:.2f}× ({cells[k]['speedup_over_macs']:.2f})" for k in slim) + " |", file=out)
    print("\ncells: measured speed-up over dense (speed-up / MACs reduction)", file=out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="resnet50", help="torchvision model name (default resnet50)")
    p.add_argument("--input", type=int, default=224)
    p.add_argument("--runs", type=int, default=60)
    p.add_argument("--warmup", type=int, default=8)
    p.add_argument("--threads", type=int, help="intra-op threads (default: ONNX Runtime's, all cores)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    log = (lambda m: print(m, file=sys.stderr)) if args.json else print
    rows = run(args.model, args.input, args.runs, args.warmup, args.threads, log)
    if args.json:
        print(json.dumps({"rows": rows}, indent=1))
    else:
        print()
        print_table(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
