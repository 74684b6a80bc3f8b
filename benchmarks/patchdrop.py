"""PatchDrop on digits with a small ViT: accuracy, F1 and training time/FLOPs vs full-token training.

    python benchmarks/patchdrop.py                 # the README table
    python benchmarks/patchdrop.py --drops 0.25,0.5 --epochs 40 --seeds 0,1

1. Train the ViT on all tokens (the baseline). 2. Freeze it and compute, once per training image,
the CLS attention of its last block over the patches (the saliency; the thesis uses DINO ViT-B).
3. Train the same ViT from the same initialisation with PatchDrop (NonSalient, Random, Salient)
at each drop fraction lambda, and evaluate every model on full images (and, as a diagnostic, on
the patches the same drop keeps of each test image, by the teacher's saliency). The saliency pass is
reported as scoring cost and included in the speed-ups (wall and CPU seconds; with ``--threads 1``
CPU seconds are the steadier measure on a shared machine). Training MACs per sample are counted
with the kept tokens (edgeslim.count on ``model(x, keep)``).
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

from edgeslim.data import load_data, make_loader  # noqa: E402
from edgeslim.models import build_model  # noqa: E402
from edgeslim.training import TrainConfig, fit  # noqa: E402
from edgeslim.training.efficiency import CONVENTION, forward_macs, training_cost  # noqa: E402
from edgeslim.training.patchdrop import PatchDrop, attention_saliency, kept_tokens  # noqa: E402

# specs/seed-raju.md C.5: ViT-8L-384 on Visual Wake Words (binary), lambda = 0.5
THESIS = {
    "full": "VWW: 79.95 % / F1 0.787 (no CutMix); 80.36 % with CutMix",
    "nonsalient": "VWW: 77.64 % / F1 0.79 (no CutMix); -1.18 pts with CutMix; 1.66x measured (2.03x theory)",
    "random": "VWW: within 0.73 pts of NonSalient; F1 0.78; ~1.66x",
    "salient": "VWW: 71.95 % / F1 0.744",
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--patch", type=int, default=4)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--drops", default="0.5", help="drop fractions lambda")
    p.add_argument("--modes", default="nonsalient,random,salient")
    p.add_argument("--seeds", default="0")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json-out", type=Path, default=None)
    return p.parse_args(argv)


def vit(args, num_classes, seed):
    torch.manual_seed(seed)
    return build_model("zoo:vit_tiny", num_classes=num_classes, dim=args.dim, depth=args.depth, heads=args.heads,
                       patch=args.patch)


@torch.no_grad()
def accuracy_and_f1(model, dataset, keep=None):
    """Accuracy and macro F1 on full images (or on the patches ``keep`` (images, K) only: a diagnostic)."""
    from sklearn.metrics import f1_score

    model.eval()
    preds, labels, start = [], [], 0
    for x, y in make_loader(dataset, 256):
        preds.append(model(x, keep=None if keep is None else keep[start:start + len(x)]).argmax(1))
        labels.append(y)
        start += len(x)
    preds, labels = torch.cat(preds), torch.cat(labels)
    return 100.0 * float((preds == labels).double().mean()), float(f1_score(labels, preds, average="macro"))


def train(args, data, seed, callbacks):
    model = vit(args, data.num_classes, seed)
    cfg = TrainConfig(epochs=args.epochs, batch_size=64, optimizer="adamw", lr=2e-3, weight_decay=0.05,
                      warmup_epochs=2, label_smoothing=0.1, seed=seed)
    cpu = time.process_time()
    result = fit(model, data.train, None, cfg, callbacks, progress=False)
    result["cpu_s"] = time.process_time() - cpu
    return model, result


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    data = load_data("digits")
    probe = vit(args, data.num_classes, 0)
    example = torch.randn(1, *data.input_shape)
    full_macs = forward_macs(probe, example)
    rows = []
    start = time.perf_counter()
    for seed in (int(s) for s in args.seeds.split(",")):
        baseline, result = train(args, data, seed, [])
        acc, f1 = accuracy_and_f1(baseline, data.test)
        cost = training_cost(result, [], full_macs)
        rows.append({"method": "full", "drop": 0.0, "seed": seed, "accuracy": acc, "f1": f1, "tokens": probe.num_patches,
                     "never_kept": 0, "kept_accuracy": None, "train_macs": full_macs, "cpu_s": result["cpu_s"], **cost.to_dict()})
        print(f"  full            seed {seed}: {acc:.2f} % F1 {f1:.3f} {cost.wall_s:.0f} s", file=sys.stderr, flush=True)
        saliency_start, saliency_cpu = time.perf_counter(), time.process_time()
        saliency = attention_saliency(baseline, data.train_plain)   # the frozen teacher, once per sample
        saliency_s, saliency_cpu = time.perf_counter() - saliency_start, time.process_time() - saliency_cpu
        test_saliency = attention_saliency(baseline, data.test)      # only for the kept-patch diagnostic
        for drop in (float(d) for d in args.drops.split(",")):
            k = kept_tokens(probe.num_patches, drop)
            macs = forward_macs(probe, (example, torch.arange(k)[None]))
            for mode in args.modes.split(","):
                pd = PatchDrop(drop, mode, None if mode == "random" else saliency, probe.num_patches, seed=seed)
                if mode != "random":
                    pd.scored_samples, pd.scoring_s = len(saliency), saliency_s
                model, result = train(args, data, seed, [pd])
                acc, f1 = accuracy_and_f1(model, data.test)
                kept_acc = None
                if mode != "random":  # the same drop at test time (teacher saliency of the test images)
                    kept_acc = accuracy_and_f1(model, data.test, PatchDrop(drop, mode, test_saliency).keep_table)[0]
                cost = training_cost(result, [pd], macs, score_macs_per_sample=full_macs)
                cpu = result["cpu_s"] + (saliency_cpu if mode != "random" else 0.0)
                rows.append({"method": mode, "drop": drop, "seed": seed, "accuracy": acc, "f1": f1, "tokens": k,
                             "never_kept": len(pd.never_kept), "kept_accuracy": kept_acc, "train_macs": macs,
                             "cpu_s": cpu, **cost.to_dict()})
                print(f"  {mode:<15} seed {seed} drop {drop:g}: {acc:.2f} % F1 {f1:.3f} {cost.wall_s:.0f} s",
                      file=sys.stderr, flush=True)
    print_table(rows, args, full_macs, probe)
    print(f"\n(total {time.perf_counter() - start:.0f} s)")
    if args.json_out:
        args.json_out.write_text(json.dumps({"args": vars(args) | {"json_out": str(args.json_out)}, "rows": rows}, indent=1))


def print_table(rows, args, full_macs, probe):
    print(f"digits, ViT (patch {args.patch}, dim {args.dim}, depth {args.depth}, heads {args.heads}; {probe.num_patches} "
          f"patches + CLS; {full_macs / 1e6:.2f} M MACs/image), {args.epochs} epochs AdamW 2e-3 cosine, 2 warm-up "
          f"epochs, label smoothing 0.1, batch 64; seeds {args.seeds}; torch threads {torch.get_num_threads()}; "
          "evaluated on full images; F1 = macro F1 over the 10 classes")
    print(f"cost: {CONVENTION}; the saliency pass (teacher forward on every training image) is scoring\n")
    print("| method | lambda | kept patches | positions never kept | accuracy % | macro F1 | accuracy % on kept patches "
          "| train MACs/img | FLOPs vs full | wall s | speed-up (wall) | CPU s | speed-up (CPU) | thesis (VWW, lambda 0.5) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    groups: dict[tuple, list] = {}
    for r in rows:
        groups.setdefault((r["method"], r["drop"]), []).append(r)
    base = groups[("full", 0.0)]
    base_wall = statistics.mean(r["wall_s"] for r in base)
    base_flops = statistics.mean(r["flops"] for r in base)
    base_cpu = statistics.mean(r["cpu_s"] for r in base)
    for (method, drop), rs in groups.items():
        mean = lambda key: statistics.mean(r[key] for r in rs)  # noqa: E731
        spread = f" +- {statistics.stdev(r['accuracy'] for r in rs):.2f}" if len(rs) > 1 else ""
        acc = f"{mean('accuracy'):.2f}{spread}"
        kept = f"{mean('kept_accuracy'):.2f}" if rs[0]["kept_accuracy"] is not None else "-"
        wall = mean("wall_s") + mean("scoring_s")
        print(f"| {method} | {drop:g} | {rs[0]['tokens']} | {rs[0]['never_kept']} | {acc} | {mean('f1'):.3f} | {kept} | "
              f"{rs[0]['train_macs'] / 1e6:.2f} M | "
              f"{mean('flops') / base_flops:.2f}x | {wall:.0f} | {base_wall / wall:.2f}x | {mean('cpu_s'):.0f} | "
              f"{base_cpu / mean('cpu_s'):.2f}x | {THESIS.get(method, '')} |")


if __name__ == "__main__":
    main()
