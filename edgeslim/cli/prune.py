"""``edgeslim prune MODEL --method M --target T [--data D] [--finetune-epochs N] -o DIR``."""
from __future__ import annotations

import time
from pathlib import Path

import torch

from .common import add_command, add_model_args, human, resolve_model


def add_parser(sub) -> None:
    p = add_command(sub, "prune", "remove channels (physically), optionally fine-tune, save checkpoint + plan",
                    run, render)
    add_model_args(p)
    p.add_argument("--method", default="l1", help="pruning criterion: l1, l2, random, bn_scale, ... (default l1)")
    p.add_argument("--target", default="macs=0.5",
                   help="slim/dense ratio to reach: channels=R, macs=R, params=R (comma-separated; default macs=0.5)")
    p.add_argument("--data", help="digits | cifar10:ROOT | cifar100:ROOT | imagefolder:ROOT (calibration, accuracy, "
                                  "fine-tuning)")
    p.add_argument("--finetune-epochs", type=int, default=0, help="recovery training epochs (needs --data)")
    p.add_argument("--lr", type=float, default=0.01, help="fine-tuning learning rate")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--round-to", help="keep channel counts multiples of N, or 'device' (the --device profile's)")
    p.add_argument("--device", help="device profile (for --round-to device)")
    p.add_argument("--ignore", nargs="+", default=[], metavar="MODULE",
                   help="module paths whose channels are kept as they are")
    p.add_argument("--min-keep", type=float, default=0.1, help="every channel group keeps at least this fraction")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--output", required=True, help="run folder: DIR/model.pt and DIR/plan.json")


def run(args) -> dict:
    from ..compress import compose, prune
    from ..data import load_data
    from ..models import save_checkpoint
    from ..training import TrainConfig, evaluate, fit

    if args.finetune_epochs and not args.data:
        raise ValueError("--finetune-epochs needs --data (the data to fine-tune on)")
    data = load_data(args.data, image_size=args.input[-1] if args.input else None) if args.data else None
    loaded = resolve_model(args, num_classes=data.num_classes if data else None)
    if data is not None and args.input is None:
        loaded.input_shape = (1, *data.input_shape)
    example = loaded.example_input()
    model = loaded.model.eval()
    round_to = int(args.round_to) if args.round_to and args.round_to.isdigit() else args.round_to

    torch.manual_seed(args.seed)
    result = prune(model, example, method=args.method, target=args.target,
                   data=data.train_plain if data else None, round_to=round_to, device=args.device,
                   ignore=args.ignore, min_keep=args.min_keep, progress=not args.json)
    slim = result.model
    out = {"model": args.model, "method": args.method, "target": args.target, "dense": dict(result.dense),
           "slim": dict(result.slim),
           "achieved": result.achieved, "equivalence_error": result.equivalence_error,
           "channel_groups": {"total": len(result.graph.groups), "prunable": len(result.graph.prunable_groups),
                              "pruned": len(result.plan.groups)},
           "accuracy_before_finetune": None, "notes": result.notes}
    finetune_s = 0.0
    if data is not None:
        out["dense"]["accuracy"] = evaluate(model, data.test)["accuracy"]
        out["accuracy_before_finetune"] = evaluate(slim, data.test)["accuracy"]
        if args.finetune_epochs:
            t0 = time.perf_counter()
            cfg = TrainConfig(epochs=args.finetune_epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed)
            fit(slim, data.train, data.test, cfg, progress=not args.json)
            finetune_s = time.perf_counter() - t0
        slim.eval()
        out["slim"]["accuracy"] = evaluate(slim, data.test)["accuracy"]
    out["timing"] = {**result.timing, "finetune_s": finetune_s}

    run_dir = Path(args.output)
    plan = compose(loaded.plan, result.plan)  # a pruned checkpoint pruned again still rebuilds from the original
    plan_path = plan.save(run_dir / "plan.json")
    kwargs = loaded.kwargs or ({"num_classes": data.num_classes} if data else {})
    ckpt = save_checkpoint(run_dir / "model.pt", slim, loaded.spec, kwargs, tuple(example.shape), plan=plan.to_dict(),
                           meta={**loaded.meta, "method": args.method, "target": args.target, "data": args.data,
                                 "accuracy": out["slim"].get("accuracy")})
    out["checkpoint"], out["plan"] = str(ckpt), str(plan_path)
    return out


def render(r: dict) -> None:
    d, s = r["dense"], r["slim"]
    print(f"{'':<14}{'dense':>14}{'slim':>14}{'ratio':>10}")
    for key in ("macs", "params"):
        print(f"{key:<14}{human(d[key]):>14}{human(s[key]):>14}{s[key] / d[key]:>10.3f}")
    if "accuracy" in s:
        print(f"{'accuracy %':<14}{d['accuracy']:>14.2f}{s['accuracy']:>14.2f}"
              f"   (before fine-tuning {r['accuracy_before_finetune']:.2f})")
    g = r["channel_groups"]
    print(f"\n{r['method']} to {r['target']}: {g['pruned']} of {g['prunable']} prunable channel groups cut "
          f"({g['total']} groups); channels kept {r['achieved']['channels']:.3f}")
    print(f"proof: slim model == masked original, relative error {r['equivalence_error']:.1e}")
    t = r["timing"]
    print(f"time: scoring {t['scoring_s']:.1f} s, surgery {t['surgery_s']:.1f} s, fine-tuning {t['finetune_s']:.1f} s")
    for note in r["notes"]:
        print(f"note: {note}")
    print(f"checkpoint: {r['checkpoint']}\nplan: {r['plan']}")
