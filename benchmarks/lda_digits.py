"""Deep-LDA pruning on digits (Tian thesis, issue 5): the tables of the README's "Deep-LDA" section.

1. ResNet-20: deep-LDA vs l1 vs random at macs=0.5 and macs=0.3, accuracy before and after the same
   fine-tuning, achieved MACs ratio and measured latency ratio (eager torch, this CPU, batch 1,
   dense and slim interleaved); the concatenating Inception net pruned with lda the same way.
2. Push-and-prune: ResNet-20 trained with and without the push loss (same recipe); accuracy, latent
   discriminant statistics, then both pruned with lda at falling MACs targets and fine-tuned.
3. The thesis's own schedule: iterative deep-LDA pruning with eta = 0.1, 0.2, ... and re-training,
   one family member per step (accuracy, MACs, latency ratio).

Everything is seeded; --seeds runs several seeds and prints mean and min-max. Images are the
scikit-learn 8x8 digits upsampled to --image-size (default 16; the data hold 8x8 pixels of
information). Run:  python benchmarks/lda_digits.py [--seeds 0,1,2] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

import edgeslim
from edgeslim.compress.criteria.lda import clean_neurons, fisher_ratios, latent_features, select_top_neurons
from edgeslim.compress.lda_family import lda_family, torch_latency_ratio
from edgeslim.data import load_data
from edgeslim.models import build_model
from edgeslim.training import TrainConfig, evaluate, fit
from edgeslim.training.push import PushLoss

PUSH = {"gamma": 1.0, "lam": 0.1, "beta": 0.0}   # the defaults of PushLoss, chosen by this script's part 2


def train(spec, data, epochs, seed, push=None, **kw):
    torch.manual_seed(seed)
    model = build_model(spec, num_classes=data.num_classes, **kw)
    callbacks = [PushLoss(model, decision="fc", **push)] if push else []
    fit(model, data.train, None, TrainConfig(epochs=epochs, lr=0.05, seed=seed), callbacks, progress=False)
    return model.eval()


def prune_and_finetune(model, data, example, method, macs, epochs, seed, push=None):
    t = time.perf_counter()
    result = edgeslim.prune(model, example, method=method, target={"macs": macs}, data=data.train_plain,
                            progress=False, criterion_options={"seed": seed} if method == "random" else None)
    slim = result.model
    before = evaluate(slim, data.test)["accuracy"]
    callbacks = [PushLoss(slim, decision="fc", **push)] if push else []
    fit(slim, data.train, None, TrainConfig(epochs=epochs, lr=0.01, seed=seed), callbacks, progress=False)
    slim.eval()
    ratio, _ = torch_latency_ratio(model, slim, example, runs=60)
    return {"method": method, "target": macs, "macs": result.achieved["macs"], "params": result.achieved["params"],
            "before": before, "after": evaluate(slim, data.test)["accuracy"], "latency": ratio,
            "wall_s": time.perf_counter() - t}


def latent_stats(model, data):
    x, y = latent_features(model, data.train_plain, "fc")
    sel = select_top_neurons(x, y)
    active = clean_neurons(x)
    v = fisher_ratios(x[:, active], y, mode="full").sort(descending=True).values
    top = v[:9].clamp_min(0)
    return {"active": int(active.sum()), "m_prime": len(sel.selected), "top9_mean_v": float(top.mean()),
            "top2_share_of_top9": float(top[:2].sum() / top.sum())}


def summarise(rows, keys, value):
    """Mean and range of ``value`` over seeds for every distinct ``keys`` combination."""
    out = {}
    for r in rows:
        out.setdefault(tuple(r[k] for k in keys), []).append(r[value])
    return {k: (statistics.mean(v), min(v), max(v)) for k, v in out.items()}


def fmt(stat, digits=1, pct=False):
    mean, lo, hi = stat
    scale = 100 if pct else 1
    if hi - lo < 10 ** -digits / 2:
        return f"{mean * scale:.{digits}f}"
    return f"{mean * scale:.{digits}f} ({lo * scale:.{digits}f}-{hi * scale:.{digits}f})"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="0")
    p.add_argument("--image-size", type=int, default=16)
    p.add_argument("--epochs", type=int, default=8, help="training epochs of the dense models")
    p.add_argument("--finetune-epochs", type=int, default=3)
    p.add_argument("--parts", default="1,2,3")
    p.add_argument("--json", help="also write all rows to this file")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's own choice)")
    args = p.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    parts = set(args.parts.split(","))
    if args.threads:
        torch.set_num_threads(args.threads)
    data = load_data("digits", image_size=args.image_size)
    example = torch.randn(1, *data.input_shape)
    rows = {"compare": [], "push": [], "push_prune": [], "family": [], "dense": []}
    log = lambda *a: print(*a, file=sys.stderr, flush=True)

    for seed in seeds:
        dense = train("zoo:resnet20", data, args.epochs, seed)
        rows["dense"].append({"model": "resnet20", "seed": seed, "accuracy": evaluate(dense, data.test)["accuracy"]})
        log("dense", rows["dense"][-1])
        if "1" in parts:
            for macs in (0.5, 0.3):
                for method in ("lda", "l1", "random"):
                    r = prune_and_finetune(dense, data, example, method, macs, args.finetune_epochs, seed)
                    rows["compare"].append({"model": "resnet20", "seed": seed, **r})
                    log(rows["compare"][-1])
            incep = train("zoo:inception-cifar", data, args.epochs, seed, stages=(1, 2, 1), width=0.25)
            rows["dense"].append({"model": "inception-cifar", "seed": seed,
                                  "accuracy": evaluate(incep, data.test)["accuracy"]})
            for method in ("lda", "l1", "random"):
                r = prune_and_finetune(incep, data, example, method, 0.5, args.finetune_epochs, seed)
                rows["compare"].append({"model": "inception-cifar", "seed": seed, **r})
                log(rows["compare"][-1])
        if "2" in parts:
            pushed = train("zoo:resnet20", data, args.epochs, seed, push=PUSH)
            for name, model in (("CE + L2", dense), ("CE + L2 + push", pushed)):
                rows["push"].append({"training": name, "seed": seed, "accuracy": evaluate(model, data.test)["accuracy"],
                                     **latent_stats(model, data)})
                log(rows["push"][-1])
                for macs in (0.3, 0.2, 0.1):
                    r = prune_and_finetune(model, data, example, "lda", macs, args.finetune_epochs, seed,
                                           push=PUSH if name.endswith("push") else None)
                    rows["push_prune"].append({"training": name, "seed": seed, **r})
                    log(rows["push_prune"][-1])
        if "3" in parts:
            family = lda_family(dense, example, data.train, data.test, data.train_plain,
                                etas=[0.1, 0.2, 0.3, 0.4, 0.5, 0.6],
                                finetune=TrainConfig(epochs=args.finetune_epochs, lr=0.01, seed=seed), progress=False)
            for m in family.members:
                rows["family"].append({"seed": seed, **m.to_dict()})
                log(rows["family"][-1])

    print(report(rows, seeds, args))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


def report(rows, seeds, args) -> str:
    lines = [f"digits at {args.image_size}x{args.image_size}, seeds {','.join(map(str, seeds))}; "
             f"dense training {args.epochs} epochs, fine-tuning {args.finetune_epochs} epochs (lr 0.01); "
             "accuracy in % on the 360 test images (mean, and min-max over seeds when they differ); "
             "latency = slim/dense p50, eager torch, batch 1, this CPU, interleaved"]
    dense = summarise(rows["dense"], ["model"], "accuracy")
    if rows["compare"]:
        lines += ["", "| model | target | method | MACs | params | acc. before FT | acc. after FT | latency |",
                  "|---|---|---|---|---|---|---|---|"]
        for model in ("resnet20", "inception-cifar"):
            lines.append(f"| {model} | dense | - | 1.00 | 1.00 | {fmt(dense[(model,)])} | | 1.00 |")
            sub = [r for r in rows["compare"] if r["model"] == model]
            keys = ["target", "method"]
            stats = {v: summarise(sub, keys, v) for v in ("macs", "params", "before", "after", "latency")}
            for key in stats["macs"]:
                lines.append(f"| {model} | macs={key[0]} | {key[1]} | {fmt(stats['macs'][key], 2)} | "
                             f"{fmt(stats['params'][key], 2)} | {fmt(stats['before'][key])} | "
                             f"{fmt(stats['after'][key])} | {fmt(stats['latency'][key], 2)} |")
    if rows["push"]:
        lines += ["", "| training | accuracy | active latent neurons | M' (sweep) | mean v of top 9 | top-2 share of top-9 v |",
                  "|---|---|---|---|---|---|"]
        for name in ("CE + L2", "CE + L2 + push"):
            sub = [r for r in rows["push"] if r["training"] == name]
            s = {v: summarise(sub, ["training"], v)[(name,)] for v in
                 ("accuracy", "active", "m_prime", "top9_mean_v", "top2_share_of_top9")}
            lines.append(f"| {name} | {fmt(s['accuracy'])} | {fmt(s['active'], 0)} | {fmt(s['m_prime'], 0)} | "
                         f"{fmt(s['top9_mean_v'], 1)} | {fmt(s['top2_share_of_top9'], 0, pct=True)} % |")
        lines += ["", "| training | target | MACs | acc. before FT | acc. after FT |", "|---|---|---|---|---|"]
        stats = {v: summarise(rows["push_prune"], ["training", "target"], v) for v in ("macs", "before", "after")}
        for key in stats["macs"]:
            lines.append(f"| {key[0]} | macs={key[1]} | {fmt(stats['macs'][key], 2)} | {fmt(stats['before'][key])} | "
                         f"{fmt(stats['after'][key])} |")
    if rows["family"]:
        d = rows["family"]
        lines += ["", "| step | eta | M' | channels | MACs | acc. before FT | acc. after FT | latency |",
                  "|---|---|---|---|---|---|---|---|"]
        stats = {v: summarise(d, ["step", "eta"], v) for v in
                 ("m_prime", "channels", "macs", "accuracy_before_finetune", "accuracy", "latency_ratio")}
        dense_macs = edgeslim.count(build_model("zoo:resnet20"), torch.randn(1, 3, args.image_size, args.image_size)).macs
        for key in stats["macs"]:
            macs = tuple(v / dense_macs for v in stats["macs"][key])
            lines.append(f"| {key[0]} | {key[1]} | {fmt(stats['m_prime'][key], 0)} | {fmt(stats['channels'][key], 2)} | "
                         f"{fmt(macs, 2)} | {fmt(stats['accuracy_before_finetune'][key])} | "
                         f"{fmt(stats['accuracy'][key])} | {fmt(stats['latency_ratio'][key], 2)} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
