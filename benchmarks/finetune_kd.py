"""How much does distillation from the dense teacher help recovery fine-tuning? (digits, CPU)

Trains a dense CIFAR-style ResNet-20 on the embedded digits data, prunes it to a MACs target
with the L1 criterion, then fine-tunes the same slim model with the 'digits' recipe for several lengths,
with and without knowledge distillation from the dense model (Hinton KD; default T = 4, alpha = 0.5,
edgeslim's defaults; ``--alphas 0.5,0.9`` compares distillation weights on the same runs), over several
seeds, and prints one table.

Pruning uses the slimming engine (``edgeslim.prune``, method l1, one MACs target).

    python benchmarks/finetune_kd.py                     # 1, 2 and 6 fine-tuning epochs, 5 seeds
    python benchmarks/finetune_kd.py --epochs 2 --seeds 3 --json
    python benchmarks/finetune_kd.py --epochs 1,2 --seeds 3 --alphas 0.5,0.9
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


def _key(alpha: float | None) -> str:
    return "plain" if alpha is None else f"kd@{alpha:g}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--macs", type=float, default=0.3, help="MACs target of the slim model (slim/dense)")
    ap.add_argument("--dense-epochs", type=int, default=8)
    ap.add_argument("--epochs", default="1,2,6", help="fine-tuning lengths to compare, comma-separated")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--alphas", default="0.5",
                    help="weights of the distillation term to compare, comma-separated (edgeslim default 0.5)")
    ap.add_argument("--temperature", type=float, default=4.0, help="KD temperature (edgeslim default 4)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    lengths = [int(e) for e in args.epochs.split(",")]
    alphas = [float(a) for a in args.alphas.split(",")]
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
            for alpha in (None, *alphas):  # None: no distillation
                student = copy.deepcopy(slim)
                r = fit(student, data.train, data.test, recipe.config(epochs=epochs, seed=seed),
                        [Distillation(dense, args.temperature, alpha)] if alpha is not None else [], progress=False)
                row[_key(alpha)] = r["accuracy"]
            for alpha in alphas:
                row[f"gain@{alpha:g}"] = row[_key(alpha)] - row["plain"]
            rows.append(row)
            print(f"{epochs} epochs, seed {seed}: " + ", ".join(f"{k} {v:.2f} %" for k, v in row.items()
                                                              if k == "plain" or k.startswith("kd")), file=sys.stderr)

    table = []
    for epochs in lengths:
        mine = [r for r in rows if r["epochs"] == epochs]
        line = {"epochs": epochs, "plain": _mean_sd([r["plain"] for r in mine]), "seeds": len(mine)}
        for alpha in alphas:
            gains = [r[f"gain@{alpha:g}"] for r in mine]
            line[_key(alpha)] = {"accuracy": _mean_sd([r[_key(alpha)] for r in mine]), "gain": _mean_sd(gains),
                                 "better": sum(g > 0 for g in gains), "worse": sum(g < 0 for g in gains)}
        table.append(line)
    summary = {
        "data": "digits (360 test images)", "model": "zoo:resnet20", "pruner": pruner, "macs_ratio": ratio,
        "dense_accuracy": dense_acc, "accuracy_before_finetune": before,
        "finetune": {k: v for k, v in recipe.options.items() if k != "epochs"},
        "kd": {"temperature": args.temperature, "alphas": alphas},
        "table": table, "rows": rows, "wall_s": time.perf_counter() - t0,
    }
    if args.json:
        print(json.dumps(summary))
        return
    ft = summary["finetune"]
    print(f"ResNet-20 on digits (360 test images): dense {dense_acc:.2f} %; pruned with {pruner} to {ratio:.3f} of "
          f"the dense MACs: {before:.2f} % before fine-tuning.")
    print(f"Fine-tune: recipe 'digits' (SGD lr {ft['lr']}, cosine, batch {ft['batch_size']}), {args.seeds} seeds "
          f"(data order and augmentation); KD: T = {args.temperature:g}, teacher = the dense model. Last-epoch test "
          "accuracy, mean ± sd over seeds; gain = KD minus no KD on the same seed.\n")
    print("| fine-tune epochs | without KD (%) | " + " | ".join(
        f"with KD, α = {a:g} (%) | gain α = {a:g} (points) | α = {a:g} better / worse" for a in alphas) + " |")
    print("|---:|---:|" + "---:|---:|---:|" * len(alphas))
    for t in table:
        cells = [f"{t['epochs']}", "{:.2f} ± {:.2f}".format(*t["plain"])]
        for alpha in alphas:
            kd = t[_key(alpha)]
            cells += ["{:.2f} ± {:.2f}".format(*kd["accuracy"]), "{:+.2f} ± {:.2f}".format(*kd["gain"]),
                      f"{kd['better']} / {kd['worse']} of {t['seeds']}"]
        print("| " + " | ".join(cells) + " |")
    print(f"\n{summary['wall_s']:.0f} s")


if __name__ == "__main__":
    main()
