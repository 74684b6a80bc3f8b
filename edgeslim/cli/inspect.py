"""``edgeslim inspect MODEL``: MACs, FLOPs, params, memory and a per-layer table."""
from __future__ import annotations

import torch

from ..metrics import count
from .common import add_command, add_model_args, human, resolve_model


def add_parser(sub) -> None:
    p = add_command(sub, "inspect", "MACs, FLOPs, params, memory, per-layer table, tracer coverage", run, render)
    add_model_args(p)


def run(args) -> dict:
    loaded = resolve_model(args)
    example = loaded.example_input()
    result = count(loaded.model, example).to_dict()
    result["model"] = args.model
    result["unsupported_ops"] = []  # filled by the slimming engine's coverage report
    return result


def render(r: dict) -> None:
    print(f"{'layer':<40} {'type':<18} {'MACs':>12} {'params':>10}  output")
    for layer in r["layers"]:
        print(f"{layer['name'][:40]:<40} {layer['type'][:18]:<18} {human(layer['macs']):>12} "
              f"{human(layer['params']):>10}  {layer['output_shape']}")
    print(f"\nMACs {human(r['macs'])}  FLOPs {human(r['flops'])}  params {human(r['params'])} "
          f"({human(r['param_bytes'], 'B')})  peak activations {human(r['peak_activation_bytes'], 'B')}")
    if r["uncounted_ops"]:
        ops = ", ".join(f"{u['op']} x{u['calls']}" for u in r["uncounted_ops"])
        print(f"not counted in MACs: {ops}")
