"""Run time of SNACS's hash ACMI estimator vs MINT's MST estimator (issue 4, item 6).

Part A -- the thesis's own run-time setting (specs/seed-ganesh.md §2.8): one layer pair of VGG16,
conv8 (512 filters, parents) -> conv9 (512 filters, children), 200 samples per class = 2,000 samples,
G = 16 ... 256 groups in both layers, every (child group, parent group) pair scored. The
activations come from edgeslim's CIFAR VGG16 (random initialisation: neither estimator's run time
depends on the weights' training state beyond the number of occupied hash cells) on digits images;
digits has 1,437 training images, so 2,000 samples are drawn from two augmented passes (random
shifts) over them. The MST estimator is timed on every pair while that fits ``--mst-budget`` seconds
per G; beyond that on a random subset of parent groups (all child groups), and the total is
extrapolated linearly in the number of pairs -- the table says which.

Part B -- full per-filter SNACS scoring of CIFAR ResNet-56 on 1,000 samples (100 per class):
activation collection plus ACMI for every (child filter, parent filter) pair of every layer, with the
thesis's single hash draw and with the draws ``prune(method="snacs")`` averages (``FILTER_N_HASHES``).

    python benchmarks/snacs_speed.py            # both parts (about 10 minutes on 2 CPU cores)
    python benchmarks/snacs_speed.py --json     # one JSON object on stdout
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch
from torch.utils.data import Dataset

from edgeslim.compress.criteria.activations import collect_activations
from edgeslim.compress.criteria.connectivity import FILTER_N_HASHES, collect_pairs, phi_from_weights, score_pairs
from edgeslim.compress.criteria.mi_estimators import acmi_layer, mst_cmi_layer, split_groups
from edgeslim.data import load_data
from edgeslim.models import build_model


class Images(Dataset):
    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x, self.targets = x, y

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i):
        return self.x[i], self.targets[i]


def two_thousand_digits(per_class: int = 200, seed: int = 0) -> Images:
    """``per_class`` images of each digit from augmented passes over the digits training set."""
    train = load_data("digits").train
    xs, ys = [], []
    for epoch in range(2):
        train.set_epoch(epoch)
        xs += [train[i][0] for i in range(len(train))]
        ys += [int(train[i][1]) for i in range(len(train))]
    x, y = torch.stack(xs), torch.tensor(ys)
    gen = torch.Generator().manual_seed(seed)
    keep = torch.cat([torch.nonzero(y == c).flatten()[torch.randperm(int((y == c).sum()), generator=gen)[:per_class]]
                      for c in range(10)])
    return Images(x[keep], y[keep])


def vgg_layer_pair(samples: Images) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
    torch.manual_seed(0)
    model = build_model("zoo:vgg16", num_classes=10).eval()
    convs = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]
    conv8, conv9 = convs[7], convs[8]
    acts = collect_activations(model, samples, {conv8: {"output"}, conv9: {"output"}}, progress=False)
    weight = dict(model.named_modules())[conv9].weight
    return acts.output(conv9), acts.output(conv8), weight


def time_call(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def part_a(groups: list[int], mst_budget: float, seed: int = 0) -> list[dict]:
    samples = two_thousand_digits()
    child, parent, weight = vgg_layer_pair(samples)
    rows = []
    for g in groups:
        cg, pg = split_groups(child.shape[1], g), split_groups(parent.shape[1], g)
        pairs = g * g
        acmi_one = time_call(lambda: acmi_layer(child, parent, cg, pg, seed=seed))
        phi = phi_from_weights(weight, cg, pg, "exp_w2")
        acmi_phi = time_call(lambda: acmi_layer(child, parent, cg, pg, phi=phi, seed=seed))
        # MST: time one parent group first, then as many as fit the budget
        first = time_call(lambda: mst_cmi_layer(child, parent, cg, pg, seed=seed, parents_to_score=[0]))
        n_parents = int(min(g, max(1, mst_budget // max(first, 1e-9))))
        if n_parents >= g:
            mst_s = first + time_call(lambda: mst_cmi_layer(child, parent, cg, pg, seed=seed,
                                                          parents_to_score=list(range(1, g))))
            measured_pairs, extrapolated = pairs, False
        else:
            chosen = np.random.default_rng(seed).choice(np.arange(1, g), size=max(1, n_parents - 1), replace=False)
            rest = time_call(lambda: mst_cmi_layer(child, parent, cg, pg, seed=seed, parents_to_score=chosen.tolist()))
            measured_pairs = (len(chosen) + 1) * g
            mst_s = (first + rest) / measured_pairs * pairs
            extrapolated = True
        rows.append({"groups": g, "pairs": pairs, "acmi_phi1_s": acmi_one, "acmi_phi_exp_w2_s": acmi_phi,
                     "mst_s": mst_s, "mst_pairs_timed": measured_pairs, "mst_extrapolated": extrapolated,
                     "speedup_phi1": mst_s / acmi_one, "speedup_phi_exp_w2": mst_s / acmi_phi})
        print(f"G={g:4d}: ACMI {acmi_one:8.2f} s (phi=1), {acmi_phi:8.2f} s (phi=exp(-w^2/2)); MST {mst_s:9.1f} s"
              f"{' (extrapolated from %d pairs)' % measured_pairs if extrapolated else ''}; "
              f"speed-up {mst_s / acmi_one:6.1f}x", file=sys.stderr, flush=True)
    return rows


def part_b(per_class: int = 100, seed: int = 0, n_hashes: tuple[int, ...] = (1, FILTER_N_HASHES)) -> list[dict]:
    torch.manual_seed(0)
    model = build_model("zoo:resnet56", num_classes=10).eval()
    data = load_data("digits").train_plain
    t0 = time.perf_counter()
    pairs, acts = collect_pairs(model, data, pairing="input", per_class=per_class, seed=seed, progress=False)
    collect_s = time.perf_counter() - t0
    out = []
    for draws in n_hashes:
        t0 = time.perf_counter()
        conn = score_pairs(model, acts, pairs, estimator="acmi", seed=seed, progress=False,
                           estimator_options={"n_hashes": draws})
        score_s = time.perf_counter() - t0
        n_pairs = int(sum(np.isfinite(c.scores).sum() for c in conn.values()))
        out.append({"model": "zoo:resnet56", "samples": len(acts), "layers": len(conn), "filter_pairs": n_pairs,
                    "n_hashes": draws, "activations_s": collect_s, "acmi_s": score_s, "total_s": collect_s + score_s})
        print(f"ResNet-56, {len(acts)} samples, {draws} hash draw(s): {n_pairs} filter pairs in {len(conn)} layers; "
              f"activations {collect_s:.1f} s + ACMI {score_s:.1f} s = {collect_s + score_s:.1f} s", file=sys.stderr,
              flush=True)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--groups", type=int, nargs="+", default=[16, 32, 64, 128, 256])
    p.add_argument("--mst-budget", type=float, default=60.0, help="seconds of MST timing per G before extrapolating")
    p.add_argument("--skip-a", action="store_true")
    p.add_argument("--skip-b", action="store_true")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    result = {"torch_threads": torch.get_num_threads()}
    if not args.skip_a:
        result["thesis_setting"] = part_a(args.groups, args.mst_budget)
    if not args.skip_b:
        result["resnet56_scoring"] = part_b()
    if args.json:
        print(json.dumps(result))
    else:
        if "thesis_setting" in result:
            print("| G | pairs | ACMI phi=1 (s) | ACMI phi=exp(-w^2/2) (s) | MST (s) | MST / ACMI |")
            print("|---|---|---|---|---|---|")
            for r in result["thesis_setting"]:
                mst = f"{r['mst_s']:.1f}" + (f" (extrapolated from {r['mst_pairs_timed']} pairs)"
                                             if r["mst_extrapolated"] else "")
                print(f"| {r['groups']} | {r['pairs']} | {r['acmi_phi1_s']:.2f} | {r['acmi_phi_exp_w2_s']:.2f} | "
                      f"{mst} | {r['speedup_phi1']:.0f}x |")
        for r in result.get("resnet56_scoring", []):
            print(f"\nResNet-56 per-filter SNACS scoring, {r['samples']} samples, {r['filter_pairs']} filter pairs, "
                  f"{r['n_hashes']} hash draw(s): {r['total_s']:.1f} s (activations {r['activations_s']:.1f} s, "
                  f"ACMI {r['acmi_s']:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
