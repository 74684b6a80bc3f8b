"""Robustness and calibration of a dense model vs its slimmed version on digits: what did slimming do?

    python benchmarks/robustness.py                         # ResNet-20 vs edgeslim.prune(l1, macs=0.5) + fine-tune
    python benchmarks/robustness.py --method l2 --target macs=0.3 --finetune-epochs 8
    python benchmarks/robustness.py --slim scp               # dense vs the thesis's SCP-narrow M-CifarNet
    python benchmarks/robustness.py --slim-checkpoint run/model.pt --dense-checkpoint dense/model.pt

Default: the dense CIFAR ResNet-20 is trained here, then physically slimmed with ``edgeslim.prune``
(channels removed, ``--method``/``--target``) and fine-tuned ``--finetune-epochs`` epochs. With
``--slim scp`` the pair is instead M-CifarNet and its static-channel-pruning baseline at
``--slim-width`` (specs/seed-raju.md A.5), both trained from scratch. Adversarial examples are
white-box on each model, and transferred from a third, independently trained model of another
family (M-CifarNet at width 0.5, or ResNet-20 for the SCP pair; Tian's protocol uses a separate
ResNet-50). Accuracy drop = perturbed - clean accuracy, in points (the deep-LDA thesis's metric).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import edgeslim  # noqa: E402
from edgeslim.data import load_data  # noqa: E402
from edgeslim.metrics.robustness import evaluate_robustness  # noqa: E402
from edgeslim.models import build_model, load_checkpoint  # noqa: E402
from edgeslim.training import TrainConfig, fit  # noqa: E402

# specs/seed-tian.md 5.3 Table 5-1 (Inception on CIFAR-100, original -> deep-LDA pruned; FGSM transferred
# from a separate ResNet-50) and specs/seed-ganesh.md 1.10 (MINT, qualitative).
THESIS = {
    "gaussian": "CIFAR-100 Inception: -2.5 -> -2.0 (Tian T5-1)",
    "poisson": "-0.1 -> 0.0 (Tian T5-1)",
    "speckle": "-3.7 -> -3.1 (Tian T5-1)",
    "fgsm_transfer": "-8.1 -> -7.4 (Tian T5-1, FGSM from a separate ResNet-50)",
    "pgd": "MINT: pruned nets MORE vulnerable to iterative FGSM (Ganesh 1.10, figures only)",
    "fgsm": "",
    "pgd_transfer": "",
    "ece": "MINT: pruning DECREASES ECE (Ganesh 1.10, figures only)",
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--slim", choices=["engine", "scp"], default="engine")
    p.add_argument("--method", default="l1", help="engine criterion (--slim engine)")
    p.add_argument("--target", default="macs=0.5", help="engine target (--slim engine)")
    p.add_argument("--finetune-epochs", type=int, default=4)
    p.add_argument("--slim-width", type=float, default=0.5, help="width of the SCP-narrow M-CifarNet (--slim scp)")
    p.add_argument("--dense-checkpoint", type=Path, default=None)
    p.add_argument("--slim-checkpoint", type=Path, default=None)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--eps", type=float, default=8.0, help="attack radius on the 0-255 scale")
    p.add_argument("--pgd-steps", type=int, default=20)
    p.add_argument("--limit", type=int, default=None, help="evaluate on the first N test images only")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json-out", type=Path, default=None)
    return p.parse_args(argv)


def trained(spec, data, epochs, seed, model=None, **kwargs):
    if model is None:
        torch.manual_seed(seed)
        model = build_model(spec, num_classes=data.num_classes, **kwargs)
    start = time.perf_counter()
    result = fit(model, data.train, data.test, TrainConfig(epochs=epochs, lr=0.05, seed=seed), progress=False)
    print(f"  trained {spec} {kwargs or ''}: {result['accuracy']:.2f} % in {time.perf_counter() - start:.0f} s",
          file=sys.stderr, flush=True)
    return model


def models(args, data):
    """(dense, slim, source, description of the slim model)."""
    example = torch.randn(1, *data.input_shape)
    if args.slim == "scp":
        dense = (load_checkpoint(args.dense_checkpoint).model if args.dense_checkpoint
                 else trained("zoo:mcifarnet", data, args.epochs, args.seed))
        slim = (load_checkpoint(args.slim_checkpoint).model if args.slim_checkpoint
                else trained("zoo:mcifarnet", data, args.epochs, args.seed, width=args.slim_width))
        source = trained("zoo:resnet20", data, args.epochs, args.seed + 1000)
        return dense, slim, source, f"M-CifarNet width {args.slim_width:g} (SCP, trained from scratch)"
    dense = (load_checkpoint(args.dense_checkpoint).model if args.dense_checkpoint
             else trained("zoo:resnet20", data, args.epochs, args.seed))
    if args.slim_checkpoint:
        slim, how = load_checkpoint(args.slim_checkpoint).model, str(args.slim_checkpoint)
    else:
        result = edgeslim.prune(dense, example, method=args.method, target=args.target, progress=False)
        slim = trained(f"slim ({args.method}, {args.target})", data, args.finetune_epochs, args.seed, model=result.model)
        how = (f"edgeslim.prune(method={args.method}, target {args.target}; achieved MACs "
               f"{result.achieved['macs']:.2f}x) + {args.finetune_epochs} fine-tuning epochs")
    source = trained("zoo:mcifarnet", data, args.epochs, args.seed + 1000, width=0.5)
    return dense, slim, source, how


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    data = load_data("digits")
    dense, slim, source, how = models(args, data)
    example = torch.randn(1, *data.input_shape)
    results = {}
    for name, model in (("dense", dense), ("slim", slim)):
        start = time.perf_counter()
        r = evaluate_robustness(model, data.test, source=source, eps=args.eps / 255, pgd_steps=args.pgd_steps,
                                limit=args.limit, seed=args.seed, progress=False)
        cost = edgeslim.count(model, example)
        r.update(macs=cost.macs, params=cost.params, eval_s=time.perf_counter() - start)
        results[name] = r
        print(f"  evaluated {name} in {r['eval_s']:.0f} s", file=sys.stderr, flush=True)
    print_table(results, args, how)
    if args.json_out:
        args.json_out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "slim": how,
                                             "results": results}, indent=1))


def print_table(results, args, how):
    d, s = results["dense"], results["slim"]
    dense_name = args.dense_checkpoint or ("M-CifarNet" if args.slim == "scp" else "CIFAR ResNet-20")
    source = "CIFAR ResNet-20" if args.slim == "scp" else "M-CifarNet width 0.5"
    print(f"digits test set ({d['samples']} images); dense = {dense_name} ({d['macs'] / 1e6:.1f} M MACs, "
          f"{d['params'] / 1e6:.3f} M params; {args.epochs} epochs SGD 0.05 cosine), slim = {how} "
          f"({s['macs'] / 1e6:.1f} M MACs, {s['params'] / 1e6:.3f} M params); attacks l-inf eps {args.eps:g}/255 in "
          f"pixel space, PGD {args.pgd_steps} steps of eps/4 with random start; transfer source {source} trained "
          "separately; Gaussian std 5/255, Poisson peak 255, speckle 0.05; ECE with 15 bins; seed "
          f"{args.seed}; torch threads {torch.get_num_threads()}\n")
    print("| metric | dense | slim | dense drop | slim drop | thesis |")
    print("|---|---|---|---|---|---|")
    print(f"| clean accuracy % | {d['accuracy']:.2f} | {s['accuracy']:.2f} | | | |")
    print(f"| ECE % | {100 * d['ece']:.2f} | {100 * s['ece']:.2f} | | | {THESIS['ece']} |")
    print(f"| NLL | {d['nll']:.3f} | {s['nll']:.3f} | | | |")
    for key in ("gaussian", "poisson", "speckle", "fgsm", "pgd", "fgsm_transfer", "pgd_transfer"):
        print(f"| {key} accuracy % | {d['accuracy_under'][key]:.2f} | {s['accuracy_under'][key]:.2f} | "
              f"{d['drop'][key]:+.2f} | {s['drop'][key]:+.2f} | {THESIS[key]} |")


if __name__ == "__main__":
    main()
