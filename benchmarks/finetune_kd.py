"""How much does distillation from the dense teacher help recovery fine-tuning? (digits, CPU)

Trains a dense CIFAR-style ResNet-20 on the embedded digits data, prunes it to a MACs target
with the L1 criterion, then fine-tunes the same slim model with the 'digits' recipe for several lengths,
with and without knowledge distillation from the dense model (Hinton KD; default T = 4, alpha = 0.5,
edgeslim's defaults), over several seeds, and prints one table.

Pruning uses the slimming engine (``edgeslim.prune``, method l1, one MACs target).

    python benchmarks/finetune_kd.py                     # 1, 2 and 6 fine-tuning epochs, 5 seeds
    python benchmarks/finetune_kd.py --epochs 2 --seeds 3 --json
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time

import torch
from torch import nn

import edgeslim
from edgeslim.data import load_data
from edgeslim.models import build_model
from edgeslim.training import Distillation, TrainConfig, evaluate, fit
from edgeslim.training.recipes import get_recipe


def prune(dense: nn.Module, example: torch.Tensor, macs_target: float, data) -> tuple[nn.Module, str]:
    result = edgeslim.prune(dense, example, method="l1", target={"macs": macs_target}, data=data, progress=False)
    return result.model, "edgeslim.prune (l1)"


def _mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--macs", type=float, default=0.3, help="MACs target of the slim model (slim/dense)")
    ap.add_argument("--dense-epochs", type=int, default=8)
    ap.add_argument("--epochs", default="1,2,6", help="fine-tuning lengths to compare, comma-separated")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--alpha", type=float, default=0.5, help="weight of the distillation term (edgeslim default 0.5)")
    ap.add_argument("--temperature", type=float, default=4.0, help="KD temperature (edgeslim default 4)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    lengths = [int(e) for e in args.epochs.split(",")]
    torch.set_num_threads(1)  # a small shared machine; the results do not depend on it

    data = load_data("digits")
    example = torch.zeros(1, *data.input_shape)
    t0 = time.perf_counter()
    torch.manual_seed(0)
    dense = build_model("zoo:resnet20", num_classes=data.num_classes)
    fit(dense, data.train, None, TrainConfig(epochs=args.dense_epochs, lr=0.05), progress=False)
    dense_acc = evaluate(dense, data.test)["accuracy"]
    slim, pruner = prune(dense, example, args.macs, data.train_plain)
    ratio = edgeslim.count(slim, example).macs / edgeslim.count(dense, example).macs
    before = evaluate(slim, data.test)["accuracy"]

    recipe = get_recipe("digits")
    rows = []
    for epochs in lengths:
        for seed in range(args.seeds):
            row = {"epochs": epochs, "seed": seed}
            for kd in (False, True):
                student = copy.deepcopy(slim)
                r = fit(student, data.train, data.test, recipe.config(epochs=epochs, seed=seed),
                        [Distillation(dense, args.temperature, args.alpha)] if kd else [], progress=False)
                row["kd" if kd else "plain"] = r["accuracy"]
            row["gain"] = row["kd"] - row["plain"]
            rows.append(row)
            print(f"{epochs} epochs, seed {seed}: without KD {row['plain']:.2f} %, with KD {row['kd']:.2f} %",
                  file=sys.stderr)

    table = []
    for epochs in lengths:
        mine = [r for r in rows if r["epochs"] == epochs]
        table.append({"epochs": epochs, "plain": _mean_sd([r["plain"] for r in mine]),
                      "kd": _mean_sd([r["kd"] for r in mine]), "gain": _mean_sd([r["gain"] for r in mine]),
                      "kd_better": sum(r["gain"] > 0 for r in mine), "kd_worse": sum(r["gain"] < 0 for r in mine),
                      "seeds": len(mine)})
    summary = {
        "data": "digits (360 test images)", "model": "zoo:resnet20", "pruner": pruner, "macs_ratio": ratio,
        "dense_accuracy": dense_acc, "accuracy_before_finetune": before,
        "finetune": {k: v for k, v in recipe.options.items() if k != "epochs"},
        "kd": {"temperature": args.temperature, "alpha": args.alpha},
        "table": table, "rows": rows, "wall_s": time.perf_counter() - t0,
    }
    if args.json:
        print(json.dumps(summary))
        return
    ft = summary["finetune"]
    print(f"ResNet-20 on digits (360 test images): dense {dense_acc:.2f} %; pruned with {pruner} to {ratio:.3f} of "
          f"the dense MACs: {before:.2f} % before fine-tuning.")
    print(f"Fine-tune: recipe 'digits' (SGD lr {ft['lr']}, cosine, batch {ft['batch_size']}), {args.seeds} seeds "
          f"(data order and augmentation); KD: T = {args.temperature:g}, alpha = {args.alpha:g}, teacher = the dense "
          "model. Last-epoch test "
          "accuracy, mean ± sd over seeds.\n")
    print("| fine-tune epochs | without KD (%) | with KD (%) | KD gain (points) | seeds KD better / worse |")
    print("|---:|---:|---:|---:|---:|")
    for t in table:
        (pm, ps), (km, ks), (gm, gs) = t["plain"], t["kd"], t["gain"]
        print(f"| {t['epochs']} | {pm:.2f} ± {ps:.2f} | {km:.2f} ± {ks:.2f} | {gm:+.2f} ± {gs:.2f} | "
              f"{t['kd_better']} / {t['kd_worse']} of {t['seeds']} |")
    print(f"\n{summary['wall_s']:.0f} s")


if __name__ == "__main__":
    main()
