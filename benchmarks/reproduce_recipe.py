"""Train or fine-tune a model with a thesis recipe and print our numbers next to the thesis's.

    python benchmarks/reproduce_recipe.py zoo:resnet56 --recipe mint-cifar10-resnet56-train \\
        --data cifar10:/data/cifar -o runs/resnet56
    python benchmarks/reproduce_recipe.py runs/snacs/slim.pt --recipe snacs-cifar10-resnet56 \\
        --data cifar10:/data/cifar --dense runs/resnet56/model.pt -o runs/snacs-ft
    torchrun --nproc_per_node=4 benchmarks/reproduce_recipe.py ...     # same, data-parallel

It runs ``edgeslim finetune`` (so it is resumable with ``--resume`` and runs under torchrun) with
the recipe's options, then prints the recipe's thesis targets beside the measured values: the
best test accuracy (the theses report the best epoch), and, given the dense checkpoint, the
share of conv/FC parameters pruned and of FLOPs removed (the thesis's conventions). Extra
arguments go to ``edgeslim finetune`` unchanged (e.g. ``--epochs 2`` for a smoke run; the table
then says that the run is shorter than the thesis's). Nothing is printed for a target whose
measurement does not exist; a run on another data set than the thesis's prints no comparison.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch
from torch import nn

import edgeslim
from edgeslim.cli import build_parser
from edgeslim.models import load_model
from edgeslim.report.thesis import compare_table, recipe_rows
from edgeslim.training.recipes import get_recipe


def conv_fc_params(model: nn.Module) -> int:
    """Parameters of convolutions and linear layers only (how the Ganesh thesis counts 'pruning %')."""
    return sum(p.numel() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)) for p in m.parameters())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--recipe", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--dense", help="dense checkpoint, for parameters pruned / FLOPs reduced")
    ap.add_argument("-o", "--output", required=True)
    args, extra = ap.parse_known_args()
    recipe = get_recipe(args.recipe)
    cli = build_parser().parse_args(["finetune", args.model, "--recipe", args.recipe, "--data", args.data,
                                     "-o", args.output, "--json", *extra])
    record = cli.run(cli)
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # under torchrun, rank 0 reports

    data_kind = args.data.split(":")[0]
    ours: dict[str, float | None] = {}
    if data_kind == recipe.data:
        ours["top1"] = record["best_accuracy"]
        if args.dense:
            dense, slim = load_model(args.dense).model, load_model(record["checkpoint"]).model
            example = torch.zeros(1, 3, 32, 32) if recipe.data.startswith("cifar") else torch.zeros(1, 3, 224, 224)
            ours["params_pruned_pct"] = 100 * (1 - conv_fc_params(slim) / conv_fc_params(dense))
            ours["flops_reduced_pct"] = 100 * (1 - edgeslim.count(slim, example).macs / edgeslim.count(dense, example).macs)
    print(f"recipe {recipe.name}: {recipe.summary}\nsource: {recipe.source}")
    if record["epochs"] != recipe.options["epochs"]:
        print(f"NOTE: {record['epochs']} epochs instead of the recipe's {recipe.options['epochs']}: not a reproduction")
    if data_kind != recipe.data:
        print(f"this run used {data_kind}, the thesis {recipe.data}: no comparison is printed "
              f"(best accuracy here: {record['best_accuracy']:.2f} %)")
    else:
        print(compare_table(recipe_rows(recipe, ours, run=f"{args.model} on {args.data}")))
    for note in recipe.notes:
        print(f"- {note}")
    print(json.dumps({"record": record["run_json"], "ours": ours, "targets": recipe.targets}), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
