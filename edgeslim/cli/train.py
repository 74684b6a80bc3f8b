"""``edgeslim train MODEL --data D --epochs N -o DIR``."""
from __future__ import annotations

from pathlib import Path

from ..data import load_data
from ..models import save_checkpoint
from ..training import TrainConfig, fit
from .common import add_command, add_model_args, resolve_model
from .efficiency import add_efficiency_args, efficiency_callbacks, render_robustness, robustness_summary, training_summary


def add_parser(sub) -> None:
    p = add_command(sub, "train", "train a model from scratch (or continue from a checkpoint)", run, render)
    add_model_args(p)
    p.add_argument("--data", required=True, help="digits | cifar10:ROOT | cifar100:ROOT | imagefolder:ROOT")
    p.add_argument("--epochs", type=int, required=True)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--optimizer", default="sgd", choices=["sgd", "adamw", "rmsprop"])
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--schedule", default="cosine", choices=["cosine", "step", "constant"])
    p.add_argument("--milestones", type=lambda s: tuple(int(v) for v in s.split(",")), default=())
    p.add_argument("--label-smoothing", type=float, default=0.0)
    p.add_argument("--augment", default="standard", choices=["standard", "cutout", "none"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--output", required=True, help="run folder; the checkpoint is DIR/model.pt")
    add_efficiency_args(p)


def run(args) -> dict:
    data = load_data(args.data, image_size=args.input[-1] if args.input else None, augment=args.augment)
    loaded = resolve_model(args, num_classes=data.num_classes)
    callbacks, epochs = efficiency_callbacks(args, data, loaded.model, args.epochs, args.seed)
    cfg = TrainConfig(epochs=epochs, batch_size=args.batch_size, lr=args.lr, optimizer=args.optimizer,
                      weight_decay=args.weight_decay, schedule=args.schedule, milestones=args.milestones,
                      label_smoothing=args.label_smoothing, seed=args.seed)
    result = fit(loaded.model, data.train, data.test, cfg, callbacks)
    shape = (1, *data.input_shape)
    ckpt = save_checkpoint(Path(args.output) / "model.pt", loaded.model, loaded.spec, loaded.kwargs or
                           {"num_classes": data.num_classes}, shape, plan=loaded.plan,
                           meta={"data": args.data, "accuracy": result.get("accuracy"), "train": cfg.to_dict()})
    out = {"accuracy": result["accuracy"], "best_accuracy": result["best_accuracy"], "epochs": epochs,
           "checkpoint": str(ckpt), "wall_s": result["wall_s"], "history": result["history"],
           "training": training_summary(result, callbacks, loaded.model, data)}
    if args.eval_robustness:
        out["robustness"] = robustness_summary(args, loaded.model, data)
    return out


def render(r: dict) -> None:
    print(f"trained {r['epochs']} epochs in {r['wall_s']:.0f} s: test accuracy {r['accuracy']:.2f} % "
          f"(best {r['best_accuracy']:.2f} %)\ncheckpoint: {r['checkpoint']}")
    t = r["training"]
    print(f"training cost: {t['samples_seen']} samples trained, {t['samples_scored']} scored, "
          f"{t['flops'] / 1e12:.3f} TFLOPs ({t['flops_convention']})")
    if "robustness" in r:
        render_robustness(r["robustness"])
