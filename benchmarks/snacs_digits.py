"""SNACS and MINT (filter granularity) against l1 and random on real data here (issue 4, item 7).

digits (scikit-learn's 1,797 real handwritten digits), zoo ResNet-20 and ResNet-56 trained here,
each method pruned to ``macs=0.5`` and ``macs=0.3`` by the slimming engine (channels physically
removed). Reported per run: test accuracy right after pruning, after re-estimating the BatchNorm
statistics on the calibration images (a forward pass, no training: removed inputs shift every
consumer's output distribution, which alone can drop a model to chance), and after a short
fine-tune; MACs and parameters (``edgeslim.count``); ONNX Runtime latency of the slim model vs the
dense one (batch 1, CPU, interleaved, median of many runs); scoring time.

    python benchmarks/snacs_digits.py                   # the README table (about an hour on 2 CPU cores)
    python benchmarks/snacs_digits.py --models resnet20 --targets 0.5 --methods snacs l1
    python benchmarks/snacs_digits.py --models resnet20 --seeds 3   # fine-tune each pruned model 3 times
    python benchmarks/snacs_digits.py --json
    python benchmarks/snacs_digits.py --stability   # how much SNACS's channel ranking depends on the seed

Trained dense models are cached in ``--cache`` (default ``runs/snacs_digits``).
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from edgeslim.compress import prune
from edgeslim.data import load_data, make_loader
from edgeslim.export import export_onnx
from edgeslim.metrics import count
from edgeslim.models import build_model, load_checkpoint, save_checkpoint
from edgeslim.runtime import OrtRunner, benchmark
from edgeslim.training import TrainConfig, evaluate, fit

DENSE_RECIPES = {  # epochs, lr (warm-up 1 epoch, cosine): reach ~99 % on digits
    "resnet20": TrainConfig(epochs=8, lr=0.05, warmup_epochs=1, seed=0),
    "resnet56": TrainConfig(epochs=10, lr=0.05, warmup_epochs=1, seed=0),
}


def dense_model(name: str, data, cache: Path, progress: bool):
    path = cache / f"{name}_digits.pt"
    if path.is_file():
        return load_checkpoint(path).model.eval()
    torch.manual_seed(0)
    model = build_model(f"zoo:{name}", num_classes=data.num_classes)
    fit(model, data.train, data.test, DENSE_RECIPES[name], progress=progress)
    save_checkpoint(path, model, f"zoo:{name}", {"num_classes": data.num_classes}, (1, *data.input_shape))
    return model.eval()


@torch.no_grad()
def recalibrate_bn(model: torch.nn.Module, data) -> torch.nn.Module:
    """A copy whose BatchNorm statistics are re-estimated on ``data`` (no weights change)."""
    model = copy.deepcopy(model).train()
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the pass
    for x, _ in make_loader(data, 256):
        model(x)
    return model.eval()


def finetune(model, data, args, row: dict) -> torch.nn.Module:
    """Fine-tune copies of ``model`` with seeds 0..args.seeds-1; their test accuracies go into ``row``.

    One fine-tune per seed: on 360 test images one seed swings by about half a point.
    """
    accuracies = []
    for seed in range(args.seeds):
        tuned = copy.deepcopy(model)
        fit(tuned, data.train, data.test, TrainConfig(epochs=args.finetune_epochs, lr=0.01, seed=seed),
            progress=not args.json)
        accuracies.append(evaluate(tuned.eval(), data.test)["accuracy"])
    row.update(accuracy_finetuned_runs=accuracies, accuracy_finetuned=float(np.mean(accuracies)),
               accuracy_finetuned_sd=float(np.std(accuracies)))
    return tuned


def run_one(dense, name: str, method: str, target: float, data, args, example, dense_onnx: str, tmp: Path) -> dict:
    options = {"per_class": args.per_class} if method in ("snacs", "mint") else {}
    if method == "snacs" and args.n_hashes:
        options["n_hashes"] = args.n_hashes
    if method == "mint" and args.mint_groups:
        options["groups"] = args.mint_groups  # the MST estimator per single filter is too slow on 2 cores
    result = prune(dense, example, method=method, target={"macs": target}, data=data.train_plain,
                   criterion_options=options, progress=not args.json)
    slim = result.model.eval()
    row = {"model": name, "method": method, "target": target, "scoring_s": result.timing["scoring_s"],
           "accuracy_pruned": evaluate(slim, data.test)["accuracy"],
           "accuracy_bn_recalibrated": evaluate(recalibrate_bn(slim, data.train_plain), data.test)["accuracy"]}
    tuned = finetune(slim, data, args, row)
    cost = count(tuned, example)
    row.update(macs=cost.macs, params=cost.params)
    slim_onnx = export_onnx(tuned, example, tmp / f"{name}_{method}_{target}.onnx").path
    lat = benchmark({"dense": OrtRunner(dense_onnx, inputs=[example]), "slim": OrtRunner(slim_onnx, inputs=[example])},
                    runs=args.runs, warmup=20, memory=False)
    dense_ms, slim_ms = lat["dense"].latency_ms.p50, lat["slim"].latency_ms.p50
    row.update(latency_ms=slim_ms, dense_latency_ms=dense_ms, speedup=dense_ms / slim_ms)
    return row


def seed_agreement(dense, example, data, per_class: int, n_hashes: int) -> float:
    """Mean over channel groups of the Spearman correlation between SNACS's channel scores under seeds 0
    and 1 (the seed draws the calibration images and the hashes): 1 = the ranking is the model's, 0 = noise."""
    from scipy.stats import spearmanr

    from edgeslim.compress import get_criterion, trace

    graph, snacs = trace(dense, example), get_criterion("snacs")
    a, b = (snacs.score(dense, graph, data.train_plain, per_class=per_class, n_hashes=n_hashes, seed=seed,
                        progress=False) for seed in (0, 1))
    return float(np.mean([spearmanr(a[g].numpy(), b[g].numpy())[0] for g in a]))


def print_stability(models, data, example, cache: Path, per_class: int) -> None:
    print(f"SNACS channel scores, seed 0 vs seed 1 ({per_class} calibration images per class): mean Spearman "
          "correlation over channel groups\n")
    print("| model | hash draws | seed-to-seed Spearman |\n|---|---|---|")
    for name in models:
        dense = dense_model(name, data, cache, progress=True)
        for n_hashes in (1, 4, 8, 16):
            print(f"| {name} | {n_hashes} | {seed_agreement(dense, example, data, per_class, n_hashes):.2f} |",
                  flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["resnet20", "resnet56"], choices=sorted(DENSE_RECIPES))
    p.add_argument("--methods", nargs="+", default=["snacs", "mint", "l1", "random"])
    p.add_argument("--targets", nargs="+", type=float, default=[0.5, 0.3])
    p.add_argument("--per-class", type=int, default=100, help="calibration samples per class for snacs/mint")
    p.add_argument("--mint-groups", type=int, default=16, help="G for mint (0: one group per filter)")
    p.add_argument("--n-hashes", type=int, help="hash draws averaged per SNACS score (default: the criterion's, 8; "
                                                  "the thesis's estimator uses 1)")
    p.add_argument("--finetune-epochs", type=int, default=5)
    p.add_argument("--seeds", type=int, default=1, help="fine-tunes per run (seeds 0..N-1): the table shows their "
                                                          "mean and standard deviation")
    p.add_argument("--runs", type=int, default=300, help="latency runs per model (interleaved)")
    p.add_argument("--cache", default="runs/snacs_digits")
    p.add_argument("--json", action="store_true")
    p.add_argument("--stability", action="store_true",
                   help="only measure how far SNACS's channel ranking depends on the seed, for 1-16 hash draws")
    args = p.parse_args(argv)
    if args.seeds < 1:
        p.error("--seeds must be at least 1")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    data = load_data("digits")
    example = torch.randn(1, *data.input_shape)
    cache = Path(args.cache)
    if args.stability:
        print_stability(args.models, data, example, cache, args.per_class)
        return 0
    rows, dense_rows = [], []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for name in args.models:
            dense = dense_model(name, data, cache, not args.json)
            cost = count(dense, example)
            dense_rows.append({"model": name, "accuracy": evaluate(dense, data.test)["accuracy"], "macs": cost.macs,
                               "params": cost.params})
            # the same fine-tune on the unpruned model: the reference for "within 1 point of dense", since
            # the extra epochs alone can lift a dense model that had not converged
            finetune(dense, data, args, dense_rows[-1])
            dense_onnx = export_onnx(dense, example, tmp / f"{name}_dense.onnx").path
            for target in args.targets:
                for method in args.methods:
                    t0 = time.perf_counter()
                    row = run_one(dense, name, method, target, data, args, example, dense_onnx, tmp)
                    row["wall_s"] = time.perf_counter() - t0
                    rows.append(row)
                    print(json.dumps(row), file=sys.stderr, flush=True)
    if args.json:
        print(json.dumps({"dense": dense_rows, "runs": rows, "finetune_epochs": args.finetune_epochs,
                          "per_class": args.per_class, "seeds": args.seeds, "n_hashes": args.n_hashes,
                          "mint_groups": args.mint_groups}))
        return 0
    print(f"digits, fine-tune {args.finetune_epochs} epochs (lr 0.01, cosine; mean ± sd of {args.seeds} seed(s)); "
          f"latency: ONNX Runtime CPU, batch 1, median of {args.runs} interleaved runs; snacs/mint: "
          f"{args.per_class} calibration images per class, snacs with {args.n_hashes or 'the default'} hash draws, "
          f"mint with G = {args.mint_groups or 'one per filter'}\n")
    print("| model | method | target | acc. pruned | acc. BN-recal. | acc. fine-tuned | MACs | params | "
          "ORT p50 (ms) | speed-up | scoring (s) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for d in dense_rows:
        print(f"| {d['model']} | dense | - | {d['accuracy']:.2f} | - | {d['accuracy_finetuned']:.2f} ± "
              f"{d['accuracy_finetuned_sd']:.2f} | {d['macs'] / 1e6:.1f} M | "
              f"{d['params'] / 1e3:.1f} k | - | 1.00x | - |")
        for r in (r for r in rows if r["model"] == d["model"]):
            print(f"| {r['model']} | {r['method']} | macs={r['target']} | {r['accuracy_pruned']:.2f} | "
                  f"{r['accuracy_bn_recalibrated']:.2f} | {r['accuracy_finetuned']:.2f} ± {r['accuracy_finetuned_sd']:.2f} | "
                  f"{r['macs'] / 1e6:.1f} M | "
                  f"{r['params'] / 1e3:.1f} k | {r['latency_ms']:.3f} | {r['speedup']:.2f}x | {r['scoring_s']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
