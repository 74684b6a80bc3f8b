"""``edgeslim.prune``: trace, score, plan, cut, prove."""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .criteria import get_criterion
from .depth import BlocksOvershoot, least_influential_dropped
from .graph import ChannelGraph
from .plan import PruningPlan, make_plan
from .surgery import apply_plan, equivalence_error
from .targets import UnreachableTarget, parse_target, resolve_rounding, solve
from .trace import trace

__all__ = ["prune", "PruneResult", "EQUIVALENCE_TOLERANCE", "ALLOCATIONS"]

EQUIVALENCE_TOLERANCE = 1e-4  # max relative difference between the slim and the masked model


@dataclass
class PruneResult:
    model: nn.Module                     # a new, physically smaller model
    plan: PruningPlan
    graph: ChannelGraph
    scores: dict[str, torch.Tensor]
    # slim / dense: channels, macs, params (macs, params from edgeslim.count); where latencies were
    # measured (allocate="measured", prune_to_latency) also latency_ms and dense_latency_ms (medians)
    achieved: dict[str, float]
    timing: dict[str, float]             # scoring_s (trace + criterion), surgery_s (plan + surgery + proof)
    dense: dict[str, int] = field(default_factory=dict)   # macs, flops, params, param_bytes of the input model
    slim: dict[str, int] = field(default_factory=dict)
    equivalence_error: float | None = None   # relative error of slim vs masked model (None: not checked)
    notes: list[str] = field(default_factory=list)
    # how channels were ranked across groups: importance or latency (allocate="measured": the way
    # kept, with the channel multiple its widths were rounded to, e.g. "latency/16")
    allocation: str = "importance"

    @property
    def dropped(self) -> list[str]:
        """The residual blocks removed whole (``drop_blocks``), as the plan records them."""
        return self.plan.dropped

    def to_dict(self) -> dict[str, Any]:
        return {"achieved": self.achieved, "timing": self.timing, "dense": self.dense, "slim": self.slim,
                "equivalence_error": self.equivalence_error, "notes": self.notes, "allocation": self.allocation,
                "dropped_blocks": self.dropped,
                "groups": len(self.graph.groups), "prunable_groups": len(self.graph.prunable_groups),
                "pruned_groups": len(self.plan.groups)}


def as_loader(data: Dataset | DataLoader | None, batch_size: int = 64) -> DataLoader | None:
    if data is None or isinstance(data, DataLoader):
        return data
    if isinstance(data, Dataset) or hasattr(data, "__getitem__"):
        from ..data import make_loader

        return make_loader(data, batch_size)
    raise ValueError(f"data must be a torch Dataset or DataLoader, not {type(data).__name__}")


def _cost_entry(cost) -> dict[str, int]:
    return {"macs": cost.macs, "flops": cost.flops, "params": cost.params, "param_bytes": cost.param_bytes}


def _cut(model: nn.Module, graph: ChannelGraph, keep: Mapping[str, Any], inputs: tuple, verify: bool):
    """Plan, surgery and (if ``verify``) the equivalence error; a cut that crashes has error inf."""
    plan = make_plan(graph, keep)
    try:
        slim = apply_plan(model, plan)
        error = equivalence_error(model, slim, plan, inputs) if verify else None
    except Exception:
        if not verify:
            raise
        slim, error = None, float("inf")
    return plan, slim, error


def _broken_groups(model: nn.Module, graph: ChannelGraph, keep: Mapping[str, Any], inputs: tuple) -> list[str]:
    """The pruned groups whose cut fails the equivalence check, found by bisection."""

    def fails(ids: list[str]) -> bool:
        _, _, error = _cut(model, graph, {g: keep[g] for g in ids}, inputs, True)
        return not error < EQUIVALENCE_TOLERANCE

    def search(ids: list[str]) -> list[str]:
        if len(ids) == 1:
            return ids
        first, second = ids[: len(ids) // 2], ids[len(ids) // 2:]
        found = (search(first) if fails(first) else []) + (search(second) if fails(second) else [])
        return found or ids  # only the combination fails: blame all of it

    return search(list(keep))


ALLOCATIONS = ("importance", "latency", "measured")


def _allocation(allocate: str, rounding: Any, target: Mapping[str, float]):
    """The solver's ``channel_cost`` for ``allocate`` (None: rank by importance alone)."""
    if allocate not in ALLOCATIONS:
        raise ValueError(f"allocate must be one of {', '.join(ALLOCATIONS)}, not {allocate!r}")
    if allocate == "importance":
        return None
    needs = ("channel_cost", "time_models", "coarser") if allocate == "measured" else ("channel_cost",)
    if not all(callable(getattr(rounding, name, None)) for name in needs):
        raise ValueError(f"allocate={allocate!r} needs measured channel costs: pass round_to='device' with "
                         "device='cpu' (ONNX Runtime on this host) or round_to=edgeslim.runtime.channels.DeviceRounding(...)")
    # A latency target buys ms: rank by importance per ms a channel costs. Any other target buys
    # channels, MACs or parameters, whose reduction users read as a promise of speed: rank by
    # importance per ms per MAC, so the MACs removed are those the runtime is slowest on and the
    # measured speed-up keeps up with the MACs reduction.
    per = "channel" if "latency" in target else "macs"
    return lambda group: rounding.channel_cost(group, per=per)


def _fastest(cuts: Mapping[str, tuple[Any, nn.Module]], rounding: Any, model: nn.Module,
             inputs: tuple) -> tuple[str, dict[str, float], str]:
    """``allocate="measured"``: of the slim models cut in different ways (label -> (solution, model),
    in order of preference), the one that runs fastest, timed whole on the rounding's runtime,
    interleaved with the dense ``model`` so the result carries its measured speed-up.

    Each way's model of the runtime misses something: importance ignores it; the latency ranking and
    the rounding price each group among dense neighbours, so they miss what a width costs beside
    narrow ones. Timing the candidates settles it. Among those within the rounding's tolerance of
    the fastest the first is kept: importance before latency (it keeps the more important
    channels), finer widths before coarser. Returns the label kept, the measured medians
    (``latency_ms`` of the kept model, ``dense_latency_ms``) and a note saying why."""
    distinct: dict[tuple, tuple[str, nn.Module]] = {}  # cuts with the same widths run alike: time the first
    for label, (solution, slim) in cuts.items():
        widths = tuple(sorted((g, len(k)) for g, k in solution.keep.items()))
        distinct.setdefault(widths, (label, slim))
    ms = rounding.time_models({"dense": model, **dict(distinct.values())}, inputs)
    dense_ms = ms.pop("dense")
    tolerance = getattr(rounding, "tolerance", 0.0)
    chosen = next(label for label in ms if ms[label] <= min(ms.values()) * (1 + tolerance))
    timed = ", ".join(f"{label} {v:.3f} ms" for label, v in ms.items())
    same = "; the other cuts have the same widths" if len(distinct) == 1 < len(cuts) else ""
    note = (f"allocate='measured': {chosen} kept ({timed}{same}; dense {dense_ms:.3f} ms; median, "
            f"{rounding.runtime} on {rounding.device}, timed interleaved)")
    return chosen, {"latency_ms": ms[chosen], "dense_latency_ms": dense_ms}, note


def prune(model: nn.Module, example_inputs: torch.Tensor | Sequence[torch.Tensor], method: str = "l1",
          target: Mapping[str, float] | str | None = None, data: Dataset | DataLoader | None = None,
          round_to: int | str | Any = None, device: str | None = None, ignore: Iterable[Any] = (),
          criterion_options: Mapping[str, Any] | None = None, progress: bool = True, min_keep: float = 0.1,
          verify: bool = True, allocate: str = "importance", drop_blocks: int | str = 0) -> PruneResult:
    """Compress ``model`` to ``target`` by removing whole channels, and prove the cut.

    ``target``: ``{"channels"|"macs"|"params": ratio}`` (or ``"macs=0.5"``), the slim/dense ratio to
    reach (within 2 % below it); default ``{"macs": 0.5}``. ``data``: calibration data for
    data-driven criteria. ``round_to``: None, N (channel counts in multiples of N), ``"device"``
    (needs ``device``: on ``"cpu"`` the widths ONNX Runtime runs fastest, measured; elsewhere the
    device profile's preferred multiple) or ``f(group, n) -> n``. ``target={"latency": ms}`` (device
    ``"cpu"``) is estimated from measured probes; ``edgeslim.runtime.target.prune_to_latency`` also
    measures the slim model and tightens until the measurement meets the target.
    ``allocate``: ``"importance"`` ranks all channels by normalised score alone; ``"latency"``
    (needs measured rounding: ``round_to="device"`` with ``device="cpu"``, or a ``DeviceRounding``)
    ranks them by score per measured ms per MAC they cost on the runtime (per ms for a latency
    target), so channels go first where the runtime is slowest for the arithmetic they carry (e.g.
    depthwise and memory-bound layers at high resolution) and speed-up keeps up with the MACs cut;
    ``"measured"`` (same rounding) cuts four ways, both allocations with the rounding and with its
    coarser twin (``DeviceRounding.coarser``: multiples of 16 instead of 8), times the slim models
    whole on the rounding's runtime, interleaved with the dense model, and keeps the fastest
    (``allocation`` and a note say which; a way that cannot reach the target is left out; the
    medians are in ``achieved["latency_ms"]`` and ``achieved["dense_latency_ms"]``).
    ``ignore``: modules whose channels stay as they are. ``min_keep``: every group keeps at least
    this fraction (and one channel). ``verify``: check that the slim model computes what the masked
    original computes (relative error < 1e-4) and raise if not.
    ``drop_blocks``: first remove this many residual blocks whole (``"all"``: every one that
    qualifies), least influential first (``edgeslim.compress.depth``; calibration statistics from
    ``data`` if given, else from the example inputs). Fewer, wider nodes use a multi-core runtime
    better than many small ones. Ratio targets still count against the model as given (a latency
    target is in ms: the same for the smaller model, whose probes the estimate uses), the proof is
    against the model without those blocks, and unlike channel surgery this changes the function
    (a note gives by how much): fine-tune afterwards.
    """
    from ..metrics import count

    inputs = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
    target = parse_target(target)
    criterion = get_criterion(method)
    loader = as_loader(data)
    if criterion.needs_data and loader is None:
        raise ValueError(f"method {criterion.name!r} needs calibration data (data=a Dataset or DataLoader; CLI: --data)")
    original, dropped, channel_scale, notes = model, [], 1.0, []
    if drop_blocks:
        model, dropped, target, channel_scale, depth_note = _without_blocks(model, inputs, loader, drop_blocks,
                                                                            target, ignore)
        notes.append(depth_note)
    # after the drop: measured widths and a latency estimate describe the model that is cut
    rounding = resolve_rounding(round_to, device, model, inputs)
    channel_cost = _allocation(allocate, rounding, target)

    bar = tqdm(total=3, desc="prune", disable=not progress, file=sys.stderr, leave=False)
    t0 = time.perf_counter()
    bar.set_postfix_str("tracing")
    graph = trace(model, inputs, ignore=ignore)
    bar.update()
    bar.set_postfix_str(f"scoring ({criterion.name})")
    was_training = model.training
    try:
        scores = criterion.score(model, graph, loader, **dict(criterion_options or {}))
    finally:
        model.train(was_training)
    scoring_s = time.perf_counter() - t0
    bar.update()

    t0 = time.perf_counter()
    bar.set_postfix_str("planning, cutting, proving")
    context = {"model": model, "example_inputs": inputs, "device": device, "rounding": rounding}

    def plan_and_cut(channel_cost, rounding):
        """solution, plan, slim model, equivalence error and the notes that belong to this cut alone."""
        context["rounding"] = rounding  # a latency target's estimate reads the probes of the rounding in use
        own_notes = []
        try:
            solution = solve(graph, scores, target, rounding, min_keep, context=context, channel_cost=channel_cost)
        except UnreachableTarget:
            # A measured rounding keeps channels its probes found free (within its tolerance, or
            # faster on a noisy machine); the target comes first: round up to plain multiples.
            if not getattr(rounding, "alignments", None):
                raise
            step = rounding.alignments[0]
            rounding = resolve_rounding(step, device)
            solution = solve(graph, scores, target, rounding, min_keep, context=context, channel_cost=channel_cost)
            own_notes.append(f"the measured widths cannot reach the target: channel counts rounded up to "
                             f"multiples of {step} instead")
        plan, slim, error = _cut(model, graph, solution.keep, inputs, verify)
        for _ in range(3 if verify else 0):
            if error < EQUIVALENCE_TOLERANCE:
                break
            # Some cut is wrong, usually because a Python constant in forward() pins a channel count
            # (e.g. x.view(-1, 16 * 5 * 5)). Find the groups to blame, keep them whole, plan again.
            broken = _broken_groups(model, graph, solution.keep, inputs)
            for gid in broken:
                g = graph.group(gid)
                g.prunable = False
                g.reason = ("cutting it breaks the model (failed the equivalence check; a Python constant in "
                            "forward() probably pins its channel count)")
            # Marking the groups holds for every later cut too, so this note is not the cut's own.
            notes.append(f"kept whole because cutting them failed the equivalence check: {', '.join(broken)}")
            solution = solve(graph, scores, target, rounding, min_keep, context=context, channel_cost=channel_cost)
            plan, slim, error = _cut(model, graph, solution.keep, inputs, verify)
        if verify and not error < EQUIVALENCE_TOLERANCE:
            raise RuntimeError(
                f"surgery check failed: the slim model differs from the masked original by {error:.2e} (relative). "
                "A Python constant in forward() probably pins a channel count that edgeslim cut; keep that part "
                "with ignore=[module path] or register a module rule that rewrites it.")
        return solution, plan, slim, error, own_notes

    allocation = allocate
    if allocate == "measured":
        bar.set_postfix_str("cutting four ways, timing them")
        roundings = (rounding, rounding.coarser())
        ways = {f"{a}/{r.alignments[0]}": (a, r) for a in ("importance", "latency") for r in roundings}
        cuts, unreachable = {}, {}
        for label, (a, r) in ways.items():
            try:
                cuts[label] = plan_and_cut(_allocation(a, r, target), r)
            except UnreachableTarget as exc:  # e.g. 16-channel groups cannot shrink in multiples of 16
                unreachable[label] = exc
        if not cuts:
            raise next(iter(unreachable.values()))
        allocation, measured, note = _fastest({label: (c[0], c[2]) for label, c in cuts.items()}, rounding,
                                              original, inputs)
        notes.append(note + "".join(f"; {label} cannot reach the target" for label in unreachable))
        solution, plan, slim, error, cut_notes = cuts[allocation]
    else:
        solution, plan, slim, error, cut_notes = plan_and_cut(channel_cost, rounding)
        measured = {}
    if dropped and not solution.removed:  # only a latency target gets here: ratio targets were checked
        goal = ", ".join(f"{key}={value:g}" for key, value in target.items())
        raise BlocksOvershoot(f"without the {len(dropped)} blocks it drops, the model already meets {goal} "
                              "(estimated): nothing is left to cut; drop fewer")
    notes += cut_notes
    surgery_s = time.perf_counter() - t0
    bar.update()
    bar.close()

    dense_cost, slim_cost = count(original, inputs), count(slim, inputs)
    plan.dropped = dropped
    achieved = {"channels": solution.achieved["channels"] * channel_scale,
                "macs": slim_cost.macs / dense_cost.macs if dense_cost.macs else 1.0,
                "params": slim_cost.params / dense_cost.params if dense_cost.params else 1.0, **measured}
    notes += solution.notes
    for key in ("macs", "params") if not dropped else ():  # the graph predicts ratios to the reduced model
        if abs(achieved[key] - solution.achieved[key]) > 1e-3:
            notes.append(f"{key}: counted {achieved[key]:.4f} on the slim model, the graph predicted "
                         f"{solution.achieved[key]:.4f}")
    return PruneResult(
        model=slim, plan=plan, graph=graph, scores=scores, achieved=achieved,
        timing={"scoring_s": scoring_s, "surgery_s": surgery_s},
        dense=_cost_entry(dense_cost), slim=_cost_entry(slim_cost),
        equivalence_error=error, notes=notes, allocation=allocation,
    )


def _prunable_channels(model: nn.Module, inputs: tuple, ignore: Iterable[Any]) -> int:
    return sum(g.size for g in trace(model, inputs, ignore=ignore).prunable_groups)


def _without_blocks(model: nn.Module, inputs: tuple, loader: DataLoader | None, drop: int | str,
                    target: dict[str, float], ignore: Iterable[Any]) -> tuple[nn.Module, list[str], dict, float, str]:
    """``prune(drop_blocks=...)``: the model without its ``drop`` least influential residual blocks,
    the blocks dropped, the target restated for the smaller model, the smaller model's share of the
    prunable channels (to restate what channel pruning achieves) and a note."""
    from ..metrics import count

    reduced, chosen = least_influential_dropped(model, inputs, loader, drop)
    drop = len(chosen)
    before, after = count(model, inputs), count(reduced, inputs)
    channel_share = _prunable_channels(reduced, inputs, ignore) / _prunable_channels(model, inputs, ignore)
    restated = {}
    for key, value in target.items():
        if key in ("macs", "params"):
            value = value * getattr(before, key) / getattr(after, key)
        elif key == "channels":
            value = value / channel_share
        if value >= 1 and key != "latency":  # a latency target is in ms, the same for the smaller model
            raise BlocksOvershoot(f"dropping {drop} blocks alone already cuts {key} below the target; drop fewer")
        restated[key] = value
    change = equivalence_error(model, reduced, PruningPlan([], []), inputs)  # no channel cut: just the drop
    note = (f"dropped {drop} residual block(s) whole ({', '.join(chosen)}), each replaced by its mean branch output: "
            f"{after.macs / before.macs:.1%} of the MACs left for channel pruning; the output moved by "
            f"{change:.2e} (relative, worst of the example and a random input) before any channel was cut: "
            "fine-tune. The equivalence proof is against the model without these blocks")
    return reduced, chosen, restated, channel_share, note
