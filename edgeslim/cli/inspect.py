"""``edgeslim inspect MODEL``: MACs, FLOPs, params, memory and a per-layer table."""
from __future__ import annotations

import torch

from ..metrics import count
from .common import add_command, add_model_args, human, resolve_model


def add_parser(sub) -> None:
    p = add_command(sub, "inspect", "MACs, FLOPs, params, memory, per-layer table, tracer coverage", run, render)
    add_model_args(p)
    p.add_argument("--device", metavar="P", help="add a roofline latency and memory estimate on this device profile")
    p.add_argument("--precision", choices=["fp32", "fp16", "int8"], help="precision of the estimate (device default)")


def run(args) -> dict:
    loaded = resolve_model(args)
    example = loaded.example_input()
    cost = count(loaded.model, example)
    result = cost.to_dict()
    result["model"] = args.model
    if args.device:
        from ..devices import estimate_model

        result["estimate"] = estimate_model(loaded.model, example, args.device, precision=args.precision,
                                            cost=cost).to_dict()
    result["unsupported_ops"] = []  # filled by the slimming engine's coverage report
    return result


def render(r: dict) -> None:
    print(f"{'layer':<40} {'type':<18} {'MACs':>12} {'params':>10}  output")
    for layer in r["layers"]:
        print(f"{layer['name'][:40]:<40} {layer['type'][:18]:<18} {human(layer['macs']):>12} "
              f"{human(layer['params']):>10}  {layer['output_shape']}")
    print(f"\nMACs {human(r['macs'])}  FLOPs {human(r['flops'])}  params {human(r['params'])} "
          f"({human(r['param_bytes'], 'B')})  peak activations {human(r['peak_activation_bytes'], 'B')}")
    if "estimate" in r:
        e, m = r["estimate"], r["estimate"]["memory"]
        print(f"on {e['device']} at {e['precision']}: {e['latency_ms']:.3f} ms roofline lower bound "
              f"({sum(l['bound'] == 'memory' for l in e['layers'])} of {len(e['layers'])} layers memory-bound); "
              f"memory {human(m['total_bytes'], 'B')} of {human(m['device_bytes'], 'B')} "
              f"(weights {human(m['weights_bytes'], 'B')}, activations {human(m['activations_bytes'], 'B')}, "
              f"workspace {human(m['workspace_bytes'], 'B')})")
        for warning in e["warnings"]:
            print(f"warning: {warning}")
    if r["uncounted_ops"]:
        ops = ", ".join(f"{u['op']} x{u['calls']}" for u in r["uncounted_ops"])
        print(f"not counted in MACs: {ops}")
