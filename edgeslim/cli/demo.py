"""``edgeslim demo [-o DIR]``: the whole pipeline on the embedded default."""
from __future__ import annotations

from ..compress.prune import ALLOCATIONS
from .common import add_command, human


def add_parser(sub) -> None:
    p = add_command(sub, "demo", "train, prune, fine-tune, export, benchmark and report on digits", run, render)
    p.add_argument("-o", "--output", default="edgeslim-demo", help="output folder (default: edgeslim-demo)")
    p.add_argument("--epochs", type=int, default=8, help="training epochs of the dense model")
    p.add_argument("--finetune-epochs", type=int, default=4)
    p.add_argument("--method", default="l1")
    p.add_argument("--runs", type=int, default=200, help="timed runs per model")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--round-to", default="device", choices=("device", "none"),
                   help="device (default): channel counts measured fast in ONNX Runtime on this CPU; none: as ranked")
    p.add_argument("--allocate", default=None, choices=ALLOCATIONS,
                   help="channels across layers by importance per measured ms (default with --round-to device), "
                        "by importance alone (default with --round-to none), or measured (four cuts timed, the fastest kept)")


def run(args) -> dict:
    from ..demo import run_demo

    return run_demo(args.output, epochs=args.epochs, finetune_epochs=args.finetune_epochs, method=args.method,
                    runs=args.runs, seed=args.seed, progress=not args.json,
                    round_to=None if args.round_to == "none" else args.round_to, allocate=args.allocate)


def render(r: dict) -> None:
    d, s = r["dense"], r["slim"]
    print(f"{'':<14}{'dense':>14}{'slim':>14}")
    print(f"{'accuracy %':<14}{d['accuracy']:>14.2f}{s['accuracy']:>14.2f}")
    print(f"{'MACs':<14}{human(d['macs']):>14}{human(s['macs']):>14}")
    print(f"{'params':<14}{human(d['params']):>14}{human(s['params']):>14}")
    print(f"{'latency p50':<14}{d['latency_ms']['p50']:>12.3f}ms{s['latency_ms']['p50']:>12.3f}ms")
    if r.get("round_to") == "device":
        print(f"\nchannel counts: measured fast in ONNX Runtime on this CPU (allocation by {r['allocation']})")
    print(f"\nONNX Runtime CPU, batch 1: slim is {r['speedup']:.2f}x faster (p50); "
          f"ONNX parity max |diff| {r['onnx']['max_abs_diff']:.1e}")
    for note in r["notes"]:
        print(f"note: {note}")
    print(f"report: {r['report']} (self-contained: {r['report_html']})")
