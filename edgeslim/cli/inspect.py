"""``edgeslim inspect MODEL``: MACs, FLOPs, params, memory and a per-layer table."""
from __future__ import annotations

from ..compress.fbs_condconv import fbs_cost, fbs_layers, to_fbs_condconv
from ..metrics import count
from .common import add_command, add_model_args, human, resolve_model


def add_parser(sub) -> None:
    p = add_command(sub, "inspect", "MACs, FLOPs, params, memory, per-layer table, tracer coverage", run, render)
    add_model_args(p)
    p.add_argument("--device", metavar="P", help="add a roofline latency and memory estimate on this device profile")
    p.add_argument("--precision", choices=["fp32", "fp16", "int8"], help="precision of the estimate (device default)")
    p.add_argument("--fbs-condconv", type=float, metavar="D", dest="fbs_density",
                   help="inspect MODEL with its convolutions turned into FBS-pruned CondConv at gate density D "
                        "(adds macs_thesis; macs becomes the exact per-example cost of the skip inference path)")
    p.add_argument("--experts", type=int, default=4, help="CondConv experts per layer with --fbs-condconv (default 4)")
    p.add_argument("--ignore", nargs="+", default=[], metavar="MODULE", help="module paths the engine keeps as they are")


def run(args) -> dict:
    loaded = resolve_model(args)
    example = loaded.example_input()
    model = loaded.model
    if args.fbs_density is not None:
        model = to_fbs_condconv(model, density=args.fbs_density, experts=args.experts)
    cost = count(model, example)
    result = cost.to_dict()
    result["model"] = args.model
    if args.device:
        from ..devices import estimate_model

        result["estimate"] = estimate_model(model, example, args.device, precision=args.precision,
                                            cost=cost).to_dict()
    if fbs_layers(model):
        # Dynamic models: macs = what the gathering inference computes per example, beside the thesis convention.
        cost = fbs_cost(model, example).to_dict()
        result.update(macs=cost["macs"], flops=2 * cost["macs"], macs_thesis=cost["macs_thesis"],
                      macs_dense_path=cost["macs_dense_path"],
                      fbs_condconv={k: cost[k] for k in ("layers", "convention", "other_macs", "other_macs_thesis")})
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
    if "macs_thesis" in r:
        print(f"\nFBS-CondConv: exact MACs per example {human(r['macs'])}, thesis convention "
              f"{human(r['macs_thesis'])}, batched mask path {human(r['macs_dense_path'])}")
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
