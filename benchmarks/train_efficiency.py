"""Training-efficiency methods on digits vs plain training: accuracy, wall-clock and training FLOPs.

    python benchmarks/train_efficiency.py                       # the README table
    python benchmarks/train_efficiency.py --seeds 0,1,2 --epochs 30 --json-out results.json

Runs plain training, dynamic data pruning (random / EMA / epsilon-greedy / UCB at each pruning
rate), CAPER (and its random-removal baseline) and LILAC with the same model, recipe and seeds, and
prints one table with the thesis's own numbers (CIFAR-10, ResNet-18/VGG16, hundreds of epochs)
beside ours. Cost convention: see ``edgeslim.training.efficiency.CONVENTION``. Wall-clock includes
scoring. On a shared machine wall-clock swings with the load; the CPU seconds of the process
(with ``--threads 1``) are the steadier measure of the work done.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgeslim.data import load_data  # noqa: E402
from edgeslim.models import build_model  # noqa: E402
from edgeslim.training import TrainConfig, fit  # noqa: E402
from edgeslim.training.caper import Caper  # noqa: E402
from edgeslim.training.data_pruning import DynamicDataPruning  # noqa: E402
from edgeslim.training.efficiency import CONVENTION, forward_macs, training_cost  # noqa: E402
from edgeslim.training.lilac import Lilac  # noqa: E402

# The theses' own results, for users with the real data sets (specs/seed-raju.md B.7, seed-ganesh.md 3.4, 4.6-4.7).
THESIS = {
    "plain": "C10: R18 batch 95.19 +- 0.19 (Ganesh T5.2); VGG16 94.04 (T6.9)",
    "random": "C10 R18: -2 pts at 70 %, -3.5 pts at 80 % (Raju L882, L1059)",
    "ema": "C10 R18 70 %: 93.33 (Raju Table 4.1)",
    "egreedy": "C10 R18: slightly above EMA up to 80 % (Raju L871)",
    "ucb": "C10 R18: slightly above EMA; CINIC-10 80 %: ~5x cheaper (Raju L1002)",
    "caper": "C10 VGG16: 94.47 vs 94.04 plain, gamma=125, 9.83 TFLOPs saved (Ganesh T6.9, T6.12)",
    "caper-random": "C10 VGG16: 93.19 (random removal, Ganesh T6.9)",
    "lilac": "C10 R18: 95.52 +- 0.07 vs batch 95.19 +- 0.19 (Ganesh T5.2)",
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="zoo:resnet20")
    p.add_argument("--width", type=int, default=8, help="CIFAR ResNet base width (16 = the paper's ResNet-20)")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--period", type=int, default=2, help="data-pruning period T_p in epochs")
    p.add_argument("--rates", default="0.5,0.7", help="data-pruning rates (fraction left out of each epoch)")
    p.add_argument("--methods", default="random,ema,egreedy,ucb")
    p.add_argument("--by-class", default="ema,ucb",
                   help="also run these methods with by_class=True (same fraction of every class; not in the thesis)")
    p.add_argument("--caper-remove", type=int, default=72, help="CAPER gamma (samples; 72 = 5 %% of digits)")
    p.add_argument("--caper-tau", type=int, default=None, help="CAPER epoch tau (default: epochs // 6, as 50 of 300)")
    p.add_argument("--caper-smoothing", type=float, default=0.1)
    p.add_argument("--lilac-step", type=int, default=2)
    p.add_argument("--lilac-interval", type=int, default=1)
    p.add_argument("--lilac-epsilon", type=float, default=0.4)
    p.add_argument("--seeds", default="0")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 is steadier on a busy machine)")
    p.add_argument("--only", default=None, help="comma-separated subset: plain,pruning,caper,lilac")
    p.add_argument("--json-out", type=Path, default=None)
    return p.parse_args(argv)


def build(args, num_classes):
    kwargs = {"width": args.width} if args.model.startswith("zoo:resnet") else {}
    return build_model(args.model, num_classes=num_classes, **kwargs)


def run_one(args, data, name, make_callbacks, epochs, seed, macs):
    torch.manual_seed(seed)
    model = build(args, data.num_classes)
    callbacks = make_callbacks(seed)
    cfg = TrainConfig(epochs=epochs, batch_size=64, lr=0.05, seed=seed)
    cpu = time.process_time()
    result = fit(model, data.train, data.test, cfg, callbacks, progress=False)
    cpu = time.process_time() - cpu
    cost = training_cost(result, callbacks, macs)
    row = {"method": name, "seed": seed, "epochs": epochs, "accuracy": result["accuracy"],
           "best_accuracy": result["best_accuracy"], "cpu_s": cpu, **cost.to_dict()}
    row.pop("convention")
    for cb in callbacks:
        if isinstance(cb, Caper):
            row["thesis_saved_fwd_macs"] = cb.saved_forward_macs(epochs, macs)
    print(f"  {name:<22} seed {seed}: {row['accuracy']:.2f} %  {row['wall_s']:.0f} s wall  {cpu:.0f} s CPU  "
          f"{row['flops'] / 1e12:.3f} TFLOPs", file=sys.stderr, flush=True)
    return row


def plan(args, data):
    """(name, callbacks factory, epochs) for every run."""
    only = set(args.only.split(",")) if args.only else {"plain", "pruning", "caper", "lilac"}
    runs = []
    if "plain" in only:
        runs.append(("plain", lambda s: [], args.epochs))
    if "pruning" in only:
        for rate in (float(r) for r in args.rates.split(",")):
            variants = [(m, False) for m in args.methods.split(",")]
            variants += [(m, True) for m in args.by_class.split(",") if m]
            for method, by_class in variants:
                name = f"{method}{'/class' if by_class else ''}@{rate:g}"
                runs.append((name, lambda s, m=method, r=rate, b=by_class: [
                    DynamicDataPruning(m, r, period=args.period, seed=s, score_set=data.train_plain, by_class=b)],
                    args.epochs))
    if "caper" in only:
        tau = args.caper_tau if args.caper_tau is not None else max(1, args.epochs // 6)
        for selection, name in (("instability", "caper"), ("random", "caper-random")):
            runs.append((name, lambda s, sel=selection: [
                Caper(args.caper_remove, tau, args.caper_smoothing, seed=s, selection=sel,
                      score_set=data.train_plain)], args.epochs))
    if "lilac" in only:
        probe = Lilac(data.num_classes, step=args.lilac_step, interval=args.lilac_interval)
        runs.append(("lilac", lambda s: [Lilac(data.num_classes, step=args.lilac_step, interval=args.lilac_interval,
                                              epsilon=args.lilac_epsilon, seed=s)], probe.il_epochs + args.epochs))
    return runs


def summarize(rows):
    by_method: dict[str, list] = {}
    for r in rows:
        by_method.setdefault(r["method"], []).append(r)
    plain = by_method.get("plain")
    base_wall = statistics.mean(r["wall_s"] for r in plain) if plain else None
    base_cpu = statistics.mean(r["cpu_s"] for r in plain) if plain else None
    base_flops = statistics.mean(r["flops"] for r in plain) if plain else None
    table = []
    for method, rs in by_method.items():
        accs = [r["accuracy"] for r in rs]
        wall = statistics.mean(r["wall_s"] for r in rs)
        cpu = statistics.mean(r["cpu_s"] for r in rs)
        flops = statistics.mean(r["flops"] for r in rs)
        table.append({
            "method": method, "epochs": rs[0]["epochs"], "seeds": len(rs),
            "accuracy": statistics.mean(accs), "accuracy_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
            "wall_s": wall, "scoring_s": statistics.mean(r["scoring_s"] for r in rs), "flops": flops,
            "wall_vs_plain": wall / base_wall if base_wall else None,
            "cpu_s": cpu, "cpu_vs_plain": cpu / base_cpu if base_cpu else None,
            "flops_vs_plain": flops / base_flops if base_flops else None,
            "thesis": THESIS.get(method.split("@")[0], "(not in the thesis)" if "/class" in method else ""),
        })
    return table


def print_table(table, args, macs):
    print(f"digits (1,437 train / 360 test), {args.model} width {args.width} ({macs / 1e6:.2f} M MACs/sample), "
          f"{args.epochs} epochs of plain training, SGD lr 0.05 cosine, batch 64; data pruning every "
          f"{args.period} epochs; seeds {args.seeds}; torch threads {torch.get_num_threads()}")
    print(f"cost: {CONVENTION}\n")
    print("| method | epochs | accuracy % | wall s (scoring s) | wall vs plain | CPU s | CPU vs plain | TFLOPs | "
          "FLOPs vs plain | thesis (real data) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for t in table:
        ratio = lambda v: f"{v:.2f}x" if v is not None else "-"  # noqa: E731
        acc = f"{t['accuracy']:.2f}" + (f" +- {t['accuracy_std']:.2f}" if t["seeds"] > 1 else "")
        print(f"| {t['method']} | {t['epochs']} | {acc} | {t['wall_s']:.0f} ({t['scoring_s']:.1f}) | "
              f"{ratio(t['wall_vs_plain'])} | {t['cpu_s']:.0f} | {ratio(t['cpu_vs_plain'])} | {t['flops'] / 1e12:.3f} | "
              f"{ratio(t['flops_vs_plain'])} | {t['thesis']} |")


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    data = load_data("digits")
    macs = forward_macs(build(args, data.num_classes), torch.randn(1, *data.input_shape))
    rows = []
    start = time.perf_counter()
    for seed in (int(s) for s in args.seeds.split(",")):
        for name, make, epochs in plan(args, data):
            rows.append(run_one(args, data, name, make, epochs, seed, macs))
    table = summarize(rows)
    print_table(table, args, macs)
    saved = [r["thesis_saved_fwd_macs"] for r in rows if r["method"] == "caper"]
    if saved:
        print(f"\nCAPER training compute saved in the thesis's convention (gamma x (E - tau) x forward MACs): "
              f"{saved[0] / 1e9:.2f} GMACs (the table's FLOPs include its scoring passes and count backward)")
    print(f"\n(total {time.perf_counter() - start:.0f} s)")
    if args.json_out:
        args.json_out.write_text(json.dumps({"args": vars(args) | {"json_out": str(args.json_out)}, "macs": macs,
                                             "rows": rows, "table": table}, indent=1))


if __name__ == "__main__":
    main()
