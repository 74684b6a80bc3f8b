"""``edgeslim prune MODEL --method M --target T [--data D] [--finetune-epochs N] -o DIR``.

With ``--finetune-epochs`` the slim model is recovery-trained right away, with the same options as
``edgeslim finetune`` (recipes, distillation from the dense model in memory, ``--resume``), and
the command runs unchanged under ``torchrun``: every rank prunes, rank 0's plan is the one used.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..compress.prune import ALLOCATIONS
from .common import add_command, add_model_args, human, resolve_model
from .efficiency import add_efficiency_args, render_robustness, robustness_summary
from .finetune import add_recovery_args, add_training_args, recover, subsample, training_config


def add_parser(sub) -> None:
    p = add_command(sub, "prune", "remove channels (physically), optionally fine-tune, save checkpoint + plan",
                    run, render)
    add_model_args(p)
    p.add_argument("--method", default="l1", help="pruning criterion: l1, l2, random, bn_scale, ... (default l1)")
    p.add_argument("--target", default="macs=0.5",
                   help="slim/dense ratio to reach: channels=R, macs=R, params=R (comma-separated; default macs=0.5)")
    p.add_argument("--data", help="digits | cifar10:ROOT | cifar100:ROOT | imagefolder:ROOT (calibration, accuracy, "
                                  "fine-tuning)")
    p.add_argument("--round-to", help="keep channel counts multiples of N, or 'device' (the --device profile's)")
    p.add_argument("--device", help="device profile (for --round-to device; 'cpu' measures this host's CPU, also for "
                                    "--target latency=Xms)")
    p.add_argument("--allocate", default="importance", choices=ALLOCATIONS,
                   help="rank channels across groups by importance alone (default), by importance per measured "
                        "ms per MAC on the runtime, or measured: cut four ways (both rankings, widths in multiples "
                        "of 8 and 16), keep the fastest slim model (latency and measured need --round-to device "
                        "--device cpu)")
    p.add_argument("--drop-blocks", default="0", metavar="N|all",
                   help="first remove N residual blocks whole (or all that qualify: MobileNetV2/V3, EfficientNet), "
                        "least influential first: fewer, wider layers use a multi-core runtime better; changes "
                        "the function, so fine-tune (default 0)")
    p.add_argument("--ignore", nargs="+", default=[], metavar="MODULE",
                   help="module paths whose channels are kept as they are")
    p.add_argument("--min-keep", type=float, default=0.1, help="every channel group keeps at least this fraction")
    p.add_argument("-o", "--output", required=True,
                   help="run folder: DIR/model.pt and DIR/plan.json (+ last.pt, run.json when fine-tuning)")
    # fine-tuning: the options of `edgeslim finetune` (--recipe, --lr, --batch-size, --seed, ...)
    add_training_args(p, epochs_flag="--finetune-epochs")
    add_recovery_args(p, teacher_flag=False)
    add_efficiency_args(p)  # shape the fine-tuning (--data-pruning, --caper, ...) and --eval-robustness


def run(args) -> dict:
    from ..compress import apply_plan, compose, prune
    from ..compress.masks import masks_after_plan
    from ..data import load_data
    from ..models import LoadedModel, save_checkpoint
    from ..training import distributed_session, evaluate

    if args.epochs and not args.data:
        raise ValueError("--finetune-epochs needs --data (the data to fine-tune on)")
    shaping = [o for o, on in (("--data-pruning", args.data_pruning), ("--caper", args.caper),
                               ("--curriculum", args.curriculum), ("--patchdrop", args.patchdrop)) if on]
    if shaping and not args.epochs:
        raise ValueError(f"{', '.join(shaping)} shape the fine-tuning: add --finetune-epochs N (and --data)")
    if args.robustness_source:
        raise ValueError("prune attacks the dense and slim models with each other's examples; --robustness-source "
                         "is for edgeslim train and finetune")
    if args.eval_robustness and not args.data:
        raise ValueError("--eval-robustness needs --data (its test set is what the model is evaluated on)")
    if "latency" in args.target and not args.device:  # fail before tracing, not after a progress bar
        raise ValueError("a latency target needs the device it is measured on: --device cpu times ONNX Runtime "
                         "on this host's CPU")
    config, augment = training_config(args, args.data, lr=0.01, batch_size=64) if args.epochs else (None, "standard")
    seed = args.seed if args.seed is not None else 0
    data = load_data(args.data, image_size=args.input[-1] if args.input else None, augment=augment) \
        if args.data else None
    if data is not None:
        data = subsample(data, args.train_samples, args.test_samples, seed=seed)
    loaded = resolve_model(args, num_classes=data.num_classes if data else None)
    if data is not None and args.input is None:
        loaded.input_shape = (1, *data.input_shape)
    example = loaded.example_input()
    model = loaded.model.eval()
    round_to = int(args.round_to) if args.round_to and args.round_to.isdigit() else args.round_to
    drop_blocks = int(args.drop_blocks) if args.drop_blocks.isdigit() else args.drop_blocks
    run_dir = Path(args.output)

    with distributed_session(args.train_device if args.epochs else "cpu") as dist:
        torch.manual_seed(seed)
        result = prune(model, example, method=args.method, target=args.target,
                       data=data.train_plain if data else None, round_to=round_to, device=args.device,
                       ignore=args.ignore, min_keep=args.min_keep, progress=not args.json and dist.is_main,
                       allocate=args.allocate, drop_blocks=drop_blocks)
        slim, rank0_plan = result.model, dist.broadcast_object(result.plan.to_dict())
        if rank0_plan != result.plan.to_dict():  # a data-driven criterion scored differently on this rank
            slim = apply_plan(model, rank0_plan)
        if rank0_plan["dropped"]:  # the dropped blocks' constants, folded into batch norms, follow rank 0 too
            slim.load_state_dict(dist.broadcast_object(slim.state_dict()))
        out = {"model": args.model, "method": args.method, "target": args.target, "dense": dict(result.dense),
               "slim": dict(result.slim),
               "achieved": result.achieved, "equivalence_error": result.equivalence_error,
               "channel_groups": {"total": len(result.graph.groups), "prunable": len(result.graph.prunable_groups),
                                  "pruned": len(result.plan.groups)},
               "accuracy_before_finetune": None, "allocation": result.allocation,
               "dropped_blocks": result.dropped, "notes": result.notes}
        if "dense_latency_ms" in result.achieved:  # timed while choosing the cut (allocate="measured")
            out["dense"]["latency_ms"] = {"p50": result.achieved["dense_latency_ms"]}
            out["slim"]["latency_ms"] = {"p50": result.achieved["latency_ms"]}
        finetune_s = 0.0
        if data is not None:
            out["dense"]["accuracy"] = evaluate(model, data.test, dist=dist)["accuracy"]
            out["accuracy_before_finetune"] = out["slim"]["accuracy"] = evaluate(slim, data.test, dist=dist)["accuracy"]
        out["timing"] = {**result.timing, "finetune_s": finetune_s}

        plan = compose(loaded.plan, rank0_plan)  # a pruned checkpoint pruned again still rebuilds from the original
        kwargs = loaded.kwargs or ({"num_classes": data.num_classes} if data else {})
        teacher_ref, no_teacher = _dense_reference(args, loaded, run_dir, dist)
        meta = {**loaded.meta, "method": args.method, "target": args.target, "data": args.data}
        if teacher_ref:
            meta["teacher"] = teacher_ref  # `edgeslim finetune` distils from it by default
        # connection masks (SNACS/MINT) of a masked checkpoint follow the surgery and stay fixed
        masks = masks_after_plan(model, rank0_plan, loaded.masks) if loaded.masks else None
        if dist.is_main:
            plan.save(run_dir / "plan.json")
        if args.epochs:
            pruned = LoadedModel(slim, loaded.spec, kwargs, tuple(example.shape), plan.to_dict(), meta, masks)
            teacher = model if teacher_ref else None
            record = recover(args, pruned, data, config, teacher, teacher_ref, no_teacher,
                             meta={"recipe": args.recipe, "augment": augment})
            out["slim"]["accuracy"] = record["accuracy"]
            out["timing"]["finetune_s"] = record["training"]["wall_s"]
            out["finetune"] = {k: record[k] for k in (
                "epochs", "world_size", "best_accuracy", "best_epoch", "last_epoch", "top5", "per_class_accuracy",
                "training", "distillation", "precision", "config", "resumed_from", "last_checkpoint", "run_json",
                "rank_weight_sha256", "notes") if k in record}
            ckpt = Path(record["checkpoint"])
        else:
            ckpt = run_dir / "model.pt"
            if dist.is_main:
                save_checkpoint(ckpt, slim, loaded.spec, kwargs, tuple(example.shape), plan=plan.to_dict(),
                                meta={**meta, "accuracy": out["slim"].get("accuracy")}, masks=masks)
        dist.barrier()
    out["checkpoint"], out["plan"] = str(ckpt), str(run_dir / "plan.json")
    if args.eval_robustness and dist.is_main:  # what slimming did to calibration and robustness, attacks crossed
        from ..models import load_checkpoint

        tuned = load_checkpoint(ckpt).model if args.epochs else slim
        out["robustness"] = robustness_summary(args, model, data, compare_with=tuned.eval())
    if dist.is_main:  # report.json / report.md / report.html with the per-layer widths before and after
        from ..metrics import count
        from ..report import write_report

        paths = write_report(run_dir, out, count(model, example).layers, count(slim.eval(), example).layers,
                             title=f"edgeslim prune: {args.model}, {args.method} to {args.target}")
        out["report"], out["report_html"] = paths["markdown"], paths["html"]
    return out


def _dense_reference(args, loaded, run_dir: Path, dist) -> tuple[str | None, str | None]:
    """The dense model as a checkpoint the slim one can name as its distillation teacher.

    (reference or None, why there is none). A dense checkpoint file is named as it is; a model
    built from a spelling plus ``--weights`` is saved once as ``DIR/dense.pt``; a bare spelling has
    untrained weights, which are nothing to distil from.
    """
    from ..models import save_checkpoint

    if Path(args.model).is_file() and not args.weights:
        return str(Path(args.model).resolve()), None
    if not args.weights:
        return None, (f"{args.model} was built with untrained weights (no --weights): the dense model is no "
                      "teacher")
    if dist.is_main:
        save_checkpoint(run_dir / "dense.pt", loaded.model, loaded.spec, loaded.kwargs, loaded.input_shape,
                        plan=loaded.plan, meta=loaded.meta, masks=loaded.masks)
    return "dense.pt", None  # relative to the slim checkpoint's folder


def render(r: dict) -> None:
    d, s = r["dense"], r["slim"]
    print(f"{'':<14}{'dense':>14}{'slim':>14}{'ratio':>10}")
    for key in ("macs", "params"):
        print(f"{key:<14}{human(d[key]):>14}{human(s[key]):>14}{s[key] / d[key]:>10.3f}")
    if "latency_ms" in s:
        dl, sl = d["latency_ms"]["p50"], s["latency_ms"]["p50"]
        print(f"{'latency p50':<14}{dl:>11.3f} ms{sl:>11.3f} ms{sl / dl:>10.3f}   ({dl / sl:.2f}× faster, "
              "measured while choosing the cut)")
    if "accuracy" in s:
        print(f"{'accuracy %':<14}{d['accuracy']:>14.2f}{s['accuracy']:>14.2f}"
              f"   (before fine-tuning {r['accuracy_before_finetune']:.2f})")
    if "finetune" in r:
        ft, kd = r["finetune"], r["finetune"]["distillation"]
        kd_text = f"distilled from the dense model (T={kd['temperature']}, alpha={kd['alpha']})" if kd["enabled"] \
            else f"no distillation ({kd.get('reason', 'off')})"
        print(f"fine-tuned {ft['epochs']} epochs on {ft['world_size']} process(es), {kd_text}; best "
              f"{ft['best_accuracy']:.2f} % at epoch {ft['best_epoch']}")
    g = r["channel_groups"]
    print(f"\n{r['method']} to {r['target']}: {g['pruned']} of {g['prunable']} prunable channel groups cut "
          f"({g['total']} groups); channels kept {r['achieved']['channels']:.3f}")
    print(f"proof: slim model == masked original, relative error {r['equivalence_error']:.1e}")
    t = r["timing"]
    print(f"time: scoring {t['scoring_s']:.1f} s, surgery {t['surgery_s']:.1f} s, fine-tuning {t['finetune_s']:.1f} s")
    if "robustness" in r:
        render_robustness(r["robustness"])
    for note in r["notes"]:
        print(f"note: {note}")
    print(f"checkpoint: {r['checkpoint']}\nplan: {r['plan']}\nreport: {r['report_html']}")
