"""FBS-pruned CondConv on the bundled digits set (issue 6): SCP vs FBS vs FBS-CondConv at d = 0.5 and 0.3.

Prints (and writes to OUT/results.json):
  1. accuracy, exact and thesis-convention MACs and parameters of every model, trained from scratch
     with edgeslim's short digits recipe (DIGITS_RECIPE, --epochs to change);
  2. latency in ONNX Runtime on this CPU at batch 1 and 32, and in PyTorch eager at batch 1, every model
     interleaved in one process (median of --runs after warm-up): the dense model, SCP (static, physically
     smaller), FBS / FBS-CondConv through the batched mask path, and through the per-example "skip" path
     that gathers only the surviving kernel slices (batch 32 = 32 batch-1 calls);
  3. the channel-usage diagnostic of the thesis (Fig. 3.4) for FBS at the lowest density (OUT/usage.png);
  4. usage-based slimming of FBS and FBS-CondConv at the lowest density: channels no training image used are
     removed through the slimming engine, giving plain static models whose accuracy (before and after a
     --finetune-epochs fine-tune) and latency are reported beside SCP's.

Digits are 8x8 images: by default they are trained and evaluated at 16x16 (--image-size), which keeps the
run within minutes on 2 CPU cores; latency and the MACs of table 2 are taken at M-CifarNet's CIFAR
geometry, 32x32 (--latency-size), with the same trained weights (the cost of every model here does not
depend on the input values). Trained checkpoints are cached in OUT and reused with --reuse.

    python benchmarks/fbs_condconv.py [--epochs 6] [--densities 0.5 0.3] [--runs 200] [-o bench-out/fbs_condconv]
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
import warnings
from pathlib import Path

import torch

from edgeslim.compress.fbs_condconv import (DIGITS_RECIPE, channel_usage, execution, fbs_cost, fbs_layers,
                                            plot_usage, slim_by_usage, train_fbs)
from edgeslim.data import load_data
from edgeslim.export import export_onnx
from edgeslim.metrics import count
from edgeslim.models import build_model, load_checkpoint, save_checkpoint
from edgeslim.runtime import interleaved_latency, stats_from_samples
from edgeslim.training import evaluate


def model_list(densities: list[float]) -> list[tuple[str, str, dict]]:
    models = [("dense", "zoo:mcifarnet", {})]
    for d in densities:
        models += [(f"SCP d={d}", "zoo:mcifarnet-scp", {"width": d}),
                   (f"FBS d={d}", "zoo:mcifarnet-fbs", {"density": d}),
                   (f"FBS-CondConv d={d}", "zoo:mcifarnet-fbs-condconv", {"density": d})]
    return models


def slug(name: str) -> str:
    return name.lower().replace(" ", "_").replace("=", "")


def train_or_load(name, spec, kwargs, data, args, out: Path):
    path = out / f"{slug(name)}.pt"
    if args.reuse and path.is_file():
        loaded = load_checkpoint(path)
        return loaded.model, loaded.meta
    model = build_model(spec, num_classes=data.num_classes, **kwargs)
    t = time.perf_counter()
    fit = train_fbs(model, data, DIGITS_RECIPE.with_epochs(args.epochs), progress=not args.quiet)
    meta = {"train_s": time.perf_counter() - t, "epochs": args.epochs}
    save_checkpoint(path, model, spec, {"num_classes": data.num_classes, **kwargs},
                    (1, *data.input_shape), meta=meta)
    print(f"  trained {name}: {fit['accuracy']:.2f}% in {meta['train_s']:.0f} s", file=sys.stderr)
    return model, meta


def costs(model: torch.nn.Module, size: int) -> dict:
    x = torch.zeros(1, 3, size, size)
    if fbs_layers(model):
        c = fbs_cost(model, x)
        return {"macs": c.macs, "macs_thesis": c.macs_thesis, "macs_dense_path": c.macs_dense_path, "params": c.params}
    c = count(model, x)
    return {"macs": c.macs, "macs_thesis": None, "macs_dense_path": c.macs, "params": c.params}


def ort_runner(path: Path, x: torch.Tensor, threads: int, repeat: int = 1):
    import onnxruntime as ort

    from edgeslim.runtime.runners import ort_session_options

    opts = ort_session_options(threads)  # as OrtRunner; at the default one thread there is no worker pool to spin
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    xs = [x[i:i + 1].numpy() for i in range(len(x))] if repeat > 1 else [x.numpy()]
    return lambda: [sess.run(None, {name: xi}) for xi in xs]


def torch_runner(model, x, mode):
    def run():
        with torch.no_grad(), execution(model, mode):
            model(x)
    return run


def cpu_timed(fn, samples: list):
    """``fn`` that also records the CPU time of the calling thread, where ORT (1 thread) and torch compute."""
    def run():
        t = time.thread_time()
        fn()
        samples.append((time.thread_time() - t) * 1e3)
    return run


def measure_latency(models: dict, args, out: Path) -> dict:
    """{row: {"ort_b1", "ort_b32", "torch_b1"}: {"wall", "cpu"} stats} for dense, SCP, FBS(-CondConv) mask/skip.

    Wall-clock medians come from edgeslim's interleaved timer. On a busy shared host a long call is
    preempted more often than a short one, which distorts wall-clock ratios; with one compute thread
    the per-call CPU time of the calling thread is robust to that, so both are recorded.
    """
    size = args.latency_size
    x1, x32 = torch.randn(1, 3, size, size), torch.randn(32, 3, size, size)
    onnx_dir = out / "onnx"
    b1, b32, eager = {}, {}, {}
    for name, model in models.items():
        model.eval()
        dynamic = bool(fbs_layers(model))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            p1 = export_onnx(model, x1, onnx_dir / f"{slug(name)}_b1.onnx").path
            p32 = export_onnx(model, x32, onnx_dir / f"{slug(name)}_b32.onnx").path
        row = f"{name} (mask)" if dynamic else name
        b1[row] = ort_runner(p1, x1, args.threads)
        b32[row] = ort_runner(p32, x32, args.threads)
        eager[row] = torch_runner(model, x1, "mask")
        if dynamic:
            with execution(model, "skip"), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ps = export_onnx(model, x1, onnx_dir / f"{slug(name)}_skip.onnx").path
            row = f"{name} (skip)"
            b1[row] = ort_runner(ps, x1, args.threads)
            b32[row] = ort_runner(ps, x32, args.threads, repeat=32)
            eager[row] = torch_runner(model, x1, "skip")
    results = {}
    for key, fns, runs in (("ort_b1", b1, args.runs), ("ort_b32", b32, max(20, args.runs // 10)),
                           ("torch_b1", eager, max(20, args.runs // 2))):
        print(f"  timing {key}: {len(fns)} models x {runs} runs", file=sys.stderr)
        warmup = max(3, runs // 20)
        cpu = {row: [] for row in fns}
        wall = interleaved_latency({row: cpu_timed(fn, cpu[row]) for row, fn in fns.items()}, runs=runs, warmup=warmup)
        for row in fns:
            results.setdefault(row, {})[key] = {"wall": wall[row].to_dict(),
                                                "cpu": stats_from_samples(cpu[row][warmup:]).to_dict()}
    return results


def usage_slimming(name: str, model, data, args):
    """Remove the channels no training image used; accuracy of the static model before/after a fine-tune."""
    calibration = channel_usage(model, data.train_plain, progress=not args.quiet)
    result = slim_by_usage(model, calibration, torch.zeros(1, 3, args.image_size, args.image_size))
    slim = copy.deepcopy(result.model)
    train_fbs(slim, data, DIGITS_RECIPE.with_epochs(args.finetune_epochs), progress=not args.quiet)
    slim.eval()
    row = {"model": f"{name} usage-slim", "from": name, "threshold": 0.0, **result.to_dict(),
           "accuracy_dynamic": evaluate(model, data.test)["accuracy"],
           "accuracy_static": evaluate(result.model, data.test)["accuracy"],
           "accuracy_finetuned": evaluate(slim, data.test)["accuracy"], "finetune_epochs": args.finetune_epochs,
           "digits": costs(slim, args.image_size), "cifar_geometry": costs(slim, args.latency_size)}
    del row["plan"]
    return row, slim


def fmt_m(v) -> str:
    return "–" if v is None else f"{v / 1e6:.2f} M"


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=DIGITS_RECIPE.train.epochs)
    p.add_argument("--densities", type=float, nargs="+", default=[0.5, 0.3])
    p.add_argument("--image-size", type=int, default=16, help="digits are trained/evaluated at this size")
    p.add_argument("--latency-size", type=int, default=32, help="input side for latency and table-2 MACs")
    p.add_argument("--runs", type=int, default=200)
    p.add_argument("--finetune-epochs", type=int, default=2, help="fine-tuning of the usage-slimmed static models")
    p.add_argument("--threads", type=int, default=1, help="CPU threads of ONNX Runtime and PyTorch")
    p.add_argument("--reuse", action="store_true", help="reuse trained checkpoints found in OUT")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("-o", "--out", default="bench-out/fbs_condconv")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = load_data("digits", image_size=args.image_size)
    t0 = time.perf_counter()

    models, rows = {}, []
    for name, spec, kwargs in model_list(args.densities):
        model, meta = train_or_load(name, spec, kwargs, data, args, out)
        model.eval()
        models[name] = model
        row = {"model": name, "spec": spec, "kwargs": kwargs, "train_s": meta.get("train_s"),
               "accuracy": evaluate(model, data.test)["accuracy"]}
        if fbs_layers(model):
            with execution(model, "skip"):
                row["accuracy_skip_path"] = evaluate(model, data.test)["accuracy"]
        row["digits"] = costs(model, args.image_size)
        row["cifar_geometry"] = costs(model, args.latency_size)
        rows.append(row)

    low = min(args.densities)
    fbs_low = models[f"FBS d={low}"]
    usage = channel_usage(fbs_low, data.test, progress=not args.quiet)
    plot = plot_usage(usage, out / "usage.png", title=f"FBS d={low} on digits test ({usage.samples} images)")

    slimmed = []
    for name in (f"FBS d={low}", f"FBS-CondConv d={low}"):
        row, slim = usage_slimming(name, models[name], data, args)
        slimmed.append(row)
        models[f"{name} usage-slim"] = slim

    latency = measure_latency(models, args, out)
    result = {"args": vars(args), "recipe": DIGITS_RECIPE.train.to_dict(), "models": rows, "latency": latency,
              "usage": {"model": f"FBS d={low}", "plot": str(plot), **usage.to_dict()},
              "usage_slimming": slimmed, "wall_s": time.perf_counter() - t0}
    (out / "results.json").write_text(json.dumps(result, indent=1))
    print_tables(result, args)
    return result


def print_tables(r: dict, args) -> None:
    s = args.image_size
    print(f"\n### Accuracy and cost on digits ({s}x{s}, {args.epochs} epochs from scratch, test set of 360)\n")
    print(f"| model | accuracy (%) | MACs exact ({s}x{s}) | MACs thesis conv. ({s}x{s}) | MACs exact (32x32) "
          "| MACs thesis conv. (32x32) | params |")
    print("|---|---|---|---|---|---|---|")
    for m in r["models"]:
        dg, cg = m["digits"], m["cifar_geometry"]
        acc = f"{m['accuracy']:.2f}"
        if "accuracy_skip_path" in m and abs(m["accuracy_skip_path"] - m["accuracy"]) > 1e-9:
            acc += f" (skip path {m['accuracy_skip_path']:.2f})"
        print(f"| {m['model']} | {acc} | {fmt_m(dg['macs'])} | {fmt_m(dg['macs_thesis'])} | {fmt_m(cg['macs'])} "
              f"| {fmt_m(cg['macs_thesis'])} | {cg['params'] / 1e6:.2f} M |")
    lat = r["latency"]
    dense = lat["dense"]
    print(f"\n### Latency at {args.latency_size}x{args.latency_size}, CPU, {args.threads} thread(s): median ms "
          "of CPU time / wall time per call (x = speed-up over dense in CPU time, higher is faster)\n")
    print("| model | ORT batch 1 | ORT batch 32 | PyTorch eager batch 1 |")
    print("|---|---|---|---|")
    for row, stats in lat.items():
        cells = []
        for key in ("ort_b1", "ort_b32", "torch_b1"):
            st = stats[key]
            speedup = dense[key]["cpu"]["p50"] / st["cpu"]["p50"]
            cells.append(f"{st['cpu']['p50']:.2f} / {st['wall']['p50']:.2f} ({speedup:.2f}x)")
        print(f"| {row} | " + " | ".join(cells) + " |")
    u = r["usage"]
    print(f"\n### Channel usage of {u['model']} over the digits test set ({u['samples']} images), "
          f"plot: {u['plot']}\n")
    print("| layer | channels | kept per image k | SCP budget d·C | used by any image | never used | used by all |")
    print("|---|---|---|---|---|---|---|")
    for layer in u["layers"]:
        print(f"| {layer['name']} | {layer['channels']} | {layer['k']} | {layer['scp_budget']:.1f} "
              f"| {layer['effective_width']} | {layer['never_used']} | {layer['always_used']} |")
    print("\n### Usage-based slimming: channels no training image used, removed through the engine\n")
    print(f"| model | channels kept | accuracy dynamic | static, before fine-tune | after {args.finetune_epochs} "
          f"epochs | MACs ({s}x{s}) | MACs (32x32) | params |")
    print("|---|---|---|---|---|---|---|---|")
    for m in r["usage_slimming"]:
        print(f"| {m['model']} | {m['kept']}/{m['total']} | {m['accuracy_dynamic']:.2f} | {m['accuracy_static']:.2f} "
              f"| {m['accuracy_finetuned']:.2f} | {fmt_m(m['digits']['macs'])} | {fmt_m(m['cifar_geometry']['macs'])} "
              f"| {m['cifar_geometry']['params'] / 1e6:.3f} M |")
    print(f"\nwall time {r['wall_s']:.0f} s")


if __name__ == "__main__":
    main()
