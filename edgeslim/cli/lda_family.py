"""``edgeslim lda-family MODEL --data D [--etas 0.1,0.2,...] [--finetune-epochs N] [--push] -o DIR``.

The Tian thesis's iterative deep-LDA pruning: one slim model per threshold step, each re-trained
and saved as DIR/stepK.pt (rebuildable from the original architecture + its composed plan).
"""
from __future__ import annotations

from pathlib import Path

from .common import add_command, add_model_args, human, resolve_model


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{text!r} must be comma-separated numbers, e.g. 0.1,0.2,0.3") from None


def add_parser(sub) -> None:
    p = add_command(sub, "lda-family", "iterative deep-LDA pruning (Tian): a family of slim models, "
                    "one per threshold step, each fine-tuned", run, render)
    add_model_args(p)
    p.add_argument("--data", required=True, help="digits | cifar10:ROOT | cifar100:ROOT | imagefolder:ROOT")
    p.add_argument("--etas", default="0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1.0",
                   help="threshold multiplier of each step (eq. 3.13), raised step by step")
    p.add_argument("--finetune-epochs", type=int, default=2, help="re-training epochs after every step")
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--push", nargs="?", const="1,0.1,0", metavar="GAMMA,LAMBDA,BETA",
                   help="re-train with the push loss (push-and-prune); default weights 1,0.1,0")
    p.add_argument("--selection", default="sweep", choices=["sweep", "otsu", "fixed"], help="how M' is chosen")
    p.add_argument("--m-prime", type=int, help="latent neurons kept with --selection fixed")
    p.add_argument("--trace-per-class", type=int,
                   help="trace utilities with this many training images per class (default: all)")
    p.add_argument("--latency-runs", type=int, default=50, help="timed runs per member (dense and slim interleaved)")
    p.add_argument("--t-acc", type=float, help="stop once accuracy falls below this (percent)")
    p.add_argument("--t-macs", type=float, help="stop once the MACs ratio reaches this")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--output", required=True, help="run folder: DIR/step1.pt, DIR/step2.pt, ...")


def run(args) -> dict:
    import torch

    from ..compress.lda_family import lda_family
    from ..data import load_data
    from ..training import TrainConfig

    etas = _floats(args.etas)
    push = None
    if args.push:
        weights = _floats(args.push)
        if len(weights) != 3:
            raise ValueError("--push takes three weights GAMMA,LAMBDA,BETA, e.g. 1,0.1,0")
        push = dict(zip(("gamma", "lam", "beta"), weights))
    data = load_data(args.data, image_size=args.input[-1] if args.input else None)
    loaded = resolve_model(args, num_classes=data.num_classes)
    if args.input is None:
        loaded.input_shape = (1, *data.input_shape)
    torch.manual_seed(args.seed)
    options = {"selection": args.selection}
    if args.m_prime:
        options["m_prime"] = args.m_prime
    if args.trace_per_class:
        from ..data import calibration_subset

        options["trace_data"] = calibration_subset(data.train_plain, args.trace_per_class, seed=args.seed)
    result = lda_family(loaded.model.eval(), loaded.example_input(), data.train, data.test, data.train_plain,
                        etas=etas, push=push, t_acc=args.t_acc, t_macs=args.t_macs,
                        finetune=TrainConfig(epochs=args.finetune_epochs, lr=args.lr, seed=args.seed),
                        criterion_options=options, spec=loaded.spec,
                        spec_kwargs=loaded.kwargs or {"num_classes": data.num_classes}, out_dir=Path(args.output),
                        latency_runs=args.latency_runs, progress=not args.json)
    return {"model": args.model, "data": args.data, **result.to_dict()}


def render(r: dict) -> None:
    d = r["dense"]
    print(f"dense: accuracy {d['accuracy']:.2f} %, {human(d['macs'])} MACs, {human(d['params'])} params")
    print(f"{'step':>4} {'eta':>5} {'M′':>4} {'MACs':>7} {'params':>7} {'acc before':>10} {'acc after':>9} {'latency':>8}")
    for m in r["members"]:
        print(f"{m['step']:>4} {m['eta']:>5.2f} {m['m_prime']:>4} {m['macs'] / d['macs']:>7.3f} "
              f"{m['params'] / d['params']:>7.3f} {m['accuracy_before_finetune']:>10.2f} {m['accuracy']:>9.2f} "
              f"{m['latency_ratio']:>8.2f}")
    print(f"stopped: {r['stopped']}")
