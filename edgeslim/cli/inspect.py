"""``edgeslim inspect MODEL``: MACs, FLOPs, params, memory and a per-layer table."""
from __future__ import annotations

import torch

from ..metrics import count
from .common import add_command, add_model_args, human, resolve_model


def add_parser(sub) -> None:
    p = add_command(sub, "inspect", "MACs, FLOPs, params, memory, per-layer table, tracer coverage", run, render)
    add_model_args(p)
    p.add_argument("--ignore", nargs="+", default=[], metavar="MODULE", help="module paths the engine keeps as they are")


def run(args) -> dict:
    loaded = resolve_model(args)
    example = loaded.example_input()
    result = count(loaded.model, example).to_dict()
    result["model"] = args.model
    result.update(_coverage(loaded.model, example, args.ignore))
    return result


def _coverage(model, example, ignore) -> dict:
    """The slimming engine's view: every operator classified, and the ones it has no rule for."""
    from ..compress import UnsupportedOpError, trace

    try:
        graph = trace(model, example, ignore=ignore, strict=False)
    except UnsupportedOpError as exc:  # torch.export itself could not trace the model
        return {"unsupported_ops": [{"op": "torch.export", "module": "", "reason": str(exc)}], "coverage": {},
                "channel_groups": None}
    prunable = graph.prunable_groups
    return {
        "unsupported_ops": [{k: e[k] for k in ("op", "module", "module_type")} for e in graph.unsupported_ops],
        "coverage": graph.coverage_summary(),
        "channel_groups": {"total": len(graph.groups), "prunable": len(prunable),
                           "prunable_channels": sum(g.size for g in prunable), "trace_s": graph.trace_s,
                           "groups": [g.to_dict() for g in graph.groups]},
    }


def render(r: dict) -> None:
    print(f"{'layer':<40} {'type':<18} {'MACs':>12} {'params':>10}  output")
    for layer in r["layers"]:
        print(f"{layer['name'][:40]:<40} {layer['type'][:18]:<18} {human(layer['macs']):>12} "
              f"{human(layer['params']):>10}  {layer['output_shape']}")
    print(f"\nMACs {human(r['macs'])}  FLOPs {human(r['flops'])}  params {human(r['params'])} "
          f"({human(r['param_bytes'], 'B')})  peak activations {human(r['peak_activation_bytes'], 'B')}")
    groups = r.get("channel_groups")
    if groups:
        print(f"channel groups: {groups['prunable']} of {groups['total']} prunable ({groups['prunable_channels']} "
              f"channels); traced in {groups['trace_s']:.1f} s")
        fixed = [g for g in groups["groups"] if not g["prunable"]]
        for g in fixed[:10]:
            print(f"  kept: {g['id']} ({g['size']} channels): {g['reason']}")
    cats: dict = {}
    for op, c in r.get("coverage", {}).items():
        cats.setdefault(c["category"], []).append(op)
    for cat, ops in sorted(cats.items()):
        print(f"  {cat}: {', '.join(ops)}")
    if r["unsupported_ops"]:
        for u in r["unsupported_ops"]:
            print(f"unsupported: {u['op']} in {u['module'] or 'forward()'} {u.get('module_type', '')}")
    if r["uncounted_ops"]:
        ops = ", ".join(f"{u['op']} x{u['calls']}" for u in r["uncounted_ops"])
        print(f"not counted in MACs: {ops}")
