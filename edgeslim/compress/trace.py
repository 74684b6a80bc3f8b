"""Tracing a model into a :class:`ChannelGraph`.

Why torch.export: it records the model's real computation (Python control flow, helper functions
and all) as a functional graph of ATen operators at the level models are written in
(``conv2d``, ``linear``, ``batch_norm``, ``layer_norm``, ``scaled_dot_product_attention`` are kept
whole), tags every node with the module that ran it (``nn_module_stack``) and names every parameter
and buffer it reads (``graph_signature``), so raw ``nn.Parameter``s such as ViT's class token are
handled like any other. ``torch.fx`` symbolic tracing breaks on data-dependent Python and spells
the same operation many ways (``F.relu``, ``torch.relu``, ``x.relu()``, ``nn.ReLU``); autograd
tracing (Torch-Pruning) needs gradients and silently treats unknown ``grad_fn``s as harmless.
The price is tracing time (about 1-10 s per torchvision model on a small CPU; see
``benchmarks/coverage.py``).

The representation: every channel of every tensor is an *atom*; a tensor carries at most one
channel dimension (``CMap(dim, atoms)``), other dimensions (batch, space, tokens) carry none.
Operators map atoms (identity, concatenation ranges, split ranges, shuffle permutations,
repetition after ``flatten``) and *couple* them (residual additions, SE multiplications, the
rows of a grouped convolution). A union-find over the couplings gives the channel identities
("classes"); a class that also reaches something that cannot change size (the model input or
output, a normalisation over channels, an attention contraction) is *fixed*. Classes with the same
footprint in the parameters form one channel group.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from torch import nn

from .graph import (COMPUTING, ChannelGraph, ChannelGroup, MacTerm, OpRecord, ParamDim, ParamSlice,
                    UnsupportedOpError)

__all__ = ["trace", "CMap", "ParamRef", "Builder"]


@dataclass
class CMap:
    """The channel dimension of a tensor and the atom of each position along it."""

    dim: int
    atoms: np.ndarray


@dataclass
class ParamRef:
    """A parameter or buffer read directly by an operator."""

    name: str
    shape: tuple[int, ...]
    is_buffer: bool


def op_name(target) -> str:
    """``aten.conv2d`` for ``torch.ops.aten.conv2d.default``; ``operator.getitem`` for Python callables."""
    packet = getattr(target, "_overloadpacket", None)
    if packet is not None:
        return str(packet)  # e.g. "aten.conv2d"
    return f"{getattr(target, '__module__', '') or 'builtins'}.{getattr(target, '__name__', str(target))}".replace(
        "_operator.", "operator.")


class Builder:
    """What an operator rule works with: atoms, couplings, fixed atoms, parameter dimensions, costs.

    Rules call ``new``, ``unify``, ``fix``, ``param_atoms``, ``as_map``, ``mac`` and ``record``.
    """

    def __init__(self, model: nn.Module):
        self.model = model
        self.n = 0
        self._edges: list[tuple[np.ndarray, np.ndarray]] = []
        self._fixed: list[tuple[np.ndarray, str]] = []
        self._unsupported: list[tuple[np.ndarray, int]] = []  # atoms, coverage index
        self._param_dims: dict[tuple[str, int], tuple[int, int, str]] = {}  # -> (start, size, role)
        self.param_shapes: dict[str, tuple[int, ...]] = {}
        self.buffers: set[str] = set()
        self.op_records: list[tuple[str, str, int, np.ndarray, dict]] = []
        self.mac_terms: list[tuple[str, str, int, list[np.ndarray]]] = []
        self.coverage: list[dict[str, Any]] = []
        self.phase = "eval"    # "train" while walking the training-mode graph (costs come from eval mode)
        self.node = None       # the node being processed (for messages)
        self.module = ""       # its module path
        self.values: dict[Any, Any] = {}

    # atoms ---------------------------------------------------------------------------------------
    def new(self, k: int) -> np.ndarray:
        atoms = np.arange(self.n, self.n + k, dtype=np.int64)
        self.n += k
        return atoms

    def new_fixed(self, k: int, reason: str) -> np.ndarray:
        atoms = self.new(k)
        self.fix(atoms, reason)
        return atoms

    def unify(self, a: np.ndarray, b: np.ndarray) -> None:
        a, b = np.broadcast_arrays(np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64))
        a, b = a.ravel(), b.ravel()
        keep = (a >= 0) & (b >= 0) & (a != b)
        if keep.any():
            self._edges.append((a[keep], b[keep]))

    def fix(self, atoms: np.ndarray | None, reason: str) -> None:
        if atoms is None:
            return
        atoms = np.asarray(atoms, dtype=np.int64).ravel()
        atoms = atoms[atoms >= 0]
        if atoms.size:
            where = f" ({self.module})" if self.module else ""
            self._fixed.append((atoms, reason + where))

    def unsupported(self, atoms: np.ndarray) -> None:
        atoms = np.asarray(atoms, dtype=np.int64).ravel()
        self._unsupported.append((atoms[atoms >= 0], len(self.coverage) - 1))

    # parameters -----------------------------------------------------------------------------------
    def param_atoms(self, ref: ParamRef | str, dim: int, role: str) -> np.ndarray:
        """The atoms of dimension ``dim`` of a parameter (created on first use)."""
        name = ref.name if isinstance(ref, ParamRef) else ref
        shape = self.param_shapes[name]
        dim = dim % len(shape)
        key = (name, dim)
        if key not in self._param_dims:
            self._param_dims[key] = (self.n, shape[dim], role)
            self.new(shape[dim])
        start, size, _ = self._param_dims[key]
        return np.arange(start, start + size, dtype=np.int64)

    def as_map(self, value: Any) -> CMap | None:
        """A tensor's channel map; a parameter used as a plain tensor gets its last non-trivial
        dimension as channel dimension (class token (1,1,E) -> E, layer scale (C,1,1) -> C)."""
        if isinstance(value, ParamRef):
            dims = [d for d, s in enumerate(value.shape) if s > 1]
            if not dims:
                return None
            return CMap(dims[-1], self.param_atoms(value, dims[-1], "param"))
        return value if isinstance(value, CMap) else None

    # costs and records ------------------------------------------------------------------------------
    def mac(self, macs: int, *factors: np.ndarray | None) -> None:
        """Record ``macs`` dense multiply-accumulates that scale with the kept fraction of each factor."""
        if self.phase != "eval":
            return
        self.mac_terms.append((op_name(self.node.target), self.module, int(macs),
                               [np.asarray(f, dtype=np.int64) for f in factors if f is not None]))

    def record(self, op: str, dim: int, atoms: np.ndarray, **info) -> None:
        """Remember an operator whose constants the enclosing module's surgeon rewrites."""
        self.op_records.append((self.module, op, dim, np.asarray(atoms, dtype=np.int64), info))

    # graph values -----------------------------------------------------------------------------------
    def val(self, arg: Any) -> Any:
        if isinstance(arg, torch.fx.Node):
            return self.values.get(arg)
        if isinstance(arg, (list, tuple)):
            return [self.val(a) for a in arg]
        return None

    # finishing ---------------------------------------------------------------------------------------
    def classes(self) -> np.ndarray:
        from scipy.sparse import coo_matrix
        from scipy.sparse.csgraph import connected_components

        if not self._edges:
            return np.arange(self.n)
        a = np.concatenate([e[0] for e in self._edges])
        b = np.concatenate([e[1] for e in self._edges])
        adjacency = coo_matrix((np.ones(len(a), dtype=np.int8), (a, b)), shape=(self.n, self.n))
        _, labels = connected_components(adjacency, directed=False)
        return labels


def shape_of(node: Any) -> tuple[int, ...] | None:
    val = node.meta.get("val") if isinstance(node, torch.fx.Node) else None
    if isinstance(val, torch.Tensor):
        return tuple(int(s) for s in val.shape)
    return None


def _module_stack(node) -> list[str]:
    stack = node.meta.get("nn_module_stack") or {}
    return [path for path, _ in stack.values()]


def _as_tuple(example_inputs) -> tuple:
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    return tuple(example_inputs)


def _export(model: nn.Module, inputs: tuple):
    try:
        return torch.export.export(model, inputs, strict=False)
    except Exception as exc:  # torch.export raises many exception types; name the cause for the user
        raise UnsupportedOpError(
            f"torch.export could not trace {type(model).__name__}: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}. "
            "edgeslim needs a model that torch.export can trace with the given example inputs."
        ) from exc


def _resolve_ignore(model: nn.Module, ignore: Iterable[Any]) -> set[str]:
    """Module paths to treat as fixed: given as paths, module instances or module types."""
    paths: set[str] = set()
    by_instance = {id(m): n for n, m in model.named_modules()}
    names = dict(model.named_modules())
    for item in ignore or ():
        if isinstance(item, str):
            if item not in names:
                raise ValueError(f"ignore: the model has no module {item!r} (use a path from model.named_modules())")
            paths.add(item)
        elif isinstance(item, type):
            paths |= {n for n, m in names.items() if isinstance(m, item)}
        elif isinstance(item, nn.Module):
            if id(item) not in by_instance:
                raise ValueError(f"ignore: {type(item).__name__} instance is not a submodule of the model")
            paths.add(by_instance[id(item)])
        else:
            raise ValueError(f"ignore: expected module paths, module instances or module types, got {item!r}")
    return paths


def trace(model: nn.Module, example_inputs: torch.Tensor | Sequence[torch.Tensor], *, ignore: Iterable[Any] = (),
          strict: bool = True) -> ChannelGraph:
    """Build the channel graph of ``model`` from its real computation on ``example_inputs``.

    ``ignore``: modules (paths, instances or types) whose channels are kept as they are; use it for a
    module whose operators have no rule. With ``strict=False`` unsupported operators are reported in
    ``graph.unsupported_ops`` (their channels kept) instead of raising :class:`UnsupportedOpError`.

    The model is traced in eval mode. If some parameters are not used in eval mode (GoogLeNet's and
    Inception's auxiliary classifiers run only in training), it is traced in training mode as well,
    so that the slim model also trains. The model is not modified (its mode is restored).
    """
    inputs = _as_tuple(example_inputs)
    start = time.perf_counter()
    ignored = _resolve_ignore(model, ignore)
    b = Builder(model)
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        b.param_shapes[name] = tuple(t.shape)
    b.buffers = {name for name, _ in model.named_buffers()}

    exported = _export_in_mode(model, inputs, training=False)
    _walk(b, exported, ignored)
    unused = _unused_parameters(exported)
    if unused:
        b.phase = "train"
        try:
            trained = _export_in_mode(model, _batch_of_two(inputs), training=True)
        except UnsupportedOpError as exc:
            raise UnsupportedOpError(
                f"{type(model).__name__} uses some parameters only in training mode ({', '.join(unused[:3])}"
                f"{' ...' if len(unused) > 3 else ''}), so edgeslim traces it in training mode too, and that failed "
                f"with these example inputs ({exc}). Pass example inputs of the size the model trains at "
                "(e.g. 299x299 for Inception v3).") from exc
        _walk(b, trained, ignored)

    result = _finish(b, model, inputs, time.perf_counter() - start)
    if strict and result.unsupported_ops:
        raise UnsupportedOpError(_unsupported_message(result.unsupported_ops), result.unsupported_ops, result)
    return result


def _export_in_mode(model: nn.Module, inputs: tuple, training: bool):
    was_training = model.training
    model.train(training)
    try:
        with torch.set_grad_enabled(training):
            return _export(model, inputs)
    finally:
        model.train(was_training)


def _batch_of_two(inputs: tuple) -> tuple:
    """Training-mode BatchNorm refuses a batch of one sample per channel."""
    return tuple(torch.cat([t, t]) if isinstance(t, torch.Tensor) and t.dim() > 0 and t.shape[0] == 1 else t
                 for t in inputs)


def _unused_parameters(exported) -> list[str]:
    sig = exported.graph_signature
    used = {n.name for n in exported.graph.nodes if n.op == "placeholder" and n.users}
    return [name for ph, name in sig.inputs_to_parameters.items() if ph not in used]


def _walk(b: Builder, exported, ignored: set[str]) -> None:
    """Run every node of one exported graph through its rule."""
    from . import rules

    sig = exported.graph_signature
    placeholder_state = {**sig.inputs_to_parameters, **sig.inputs_to_buffers}
    modules = dict(b.model.named_modules())
    boxes = _module_boxes(exported.graph, modules, ignored)
    b.values = {}
    for node in exported.graph.nodes:
        b.node = node
        stack = _module_stack(node)
        b.module = stack[-1] if stack else ""
        if node.op == "placeholder":
            name = placeholder_state.get(node.name)
            if name is not None and name in b.param_shapes:
                b.values[node] = ParamRef(name, b.param_shapes[name], name in b.buffers)
            else:
                b.values[node] = None  # model inputs and constants carry no prunable channels
            continue
        if node.op == "output":
            for out in torch.utils._pytree.tree_leaves(node.args[0]):
                m = b.as_map(b.val(out)) if isinstance(out, torch.fx.Node) else None
                if m is not None:
                    b.fix(m.atoms, "model output")
            continue
        if node.op != "call_function":
            raise UnsupportedOpError(f"unexpected graph node {node.op} {node.target} in the exported graph")
        box = boxes.get(node)
        if box is not None:
            if node is box.first:
                rules.run_box(b, box)
            continue
        rules.run_op(b, node)


def _unsupported_message(entries: list[dict[str, Any]]) -> str:
    lines = []
    for e in entries[:8]:
        where = f"module {e['module']!r} ({e['module_type']})" if e["module"] else "the model's own forward()"
        lines.append(f"  {e['op']} in {where}")
    more = f"\n  ... and {len(entries) - 8} more" if len(entries) > 8 else ""
    first = entries[0]
    example_module = first["module"] or "<module path>"
    return (
        "edgeslim cannot tell how these operators move or mix channels, so it refuses to prune through them:\n"
        + "\n".join(lines) + more + "\n"
        f"Fix: register a rule, e.g. edgeslim.compress.register_op_rule({first['op']!r}, 'elementwise') if it acts on "
        f"each channel separately, or keep that module's channels as they are with "
        f"ignore=[{example_module!r}] (CLI: --ignore {example_module})."
    )


@dataclass
class Box:
    """The nodes of one module call that a module rule (or ``ignore``) handles as a whole."""

    path: str
    module: nn.Module
    rule: Any  # a ModuleRule, or None for an ignored module
    nodes: list
    first: Any = None

    def inputs(self) -> list:
        inside = set(self.nodes)
        seen: dict = {}
        for n in self.nodes:
            for arg in n.all_input_nodes:
                if arg not in inside:
                    seen.setdefault(arg, None)
        return list(seen)

    def outputs(self) -> list:
        inside = set(self.nodes)
        return [n for n in self.nodes if any(u not in inside for u in n.users)]


def _module_boxes(graph, modules: dict[str, nn.Module], ignored: set[str]) -> dict:
    """Map every node inside an ignored module or a module with a whole-module rule to its box."""
    from .rules import module_rule_for

    boxes: dict[str, Box] = {}
    node_box: dict = {}
    for node in graph.nodes:
        if node.op != "call_function":
            continue
        for path in _module_stack(node):
            module = modules.get(path)
            if module is None:
                continue
            rule = None if path in ignored else module_rule_for(module)
            if path in ignored or (rule is not None and rule.whole_module):
                box = boxes.get(path)
                if box is None:
                    box = boxes[path] = Box(path, module, rule, [], node)
                box.nodes.append(node)
                node_box[node] = box
                break
    return node_box


def _finish(b: Builder, model: nn.Module, inputs: tuple, elapsed: float) -> ChannelGraph:
    labels = b.classes()
    n_classes = int(labels.max()) + 1 if labels.size else 0

    # why a class cannot be pruned (first reason wins)
    reason = np.full(n_classes, -1, dtype=np.int64)
    reasons: list[str] = []
    for atoms, text in b._fixed:
        cls = labels[atoms]
        free = cls[reason[cls] < 0]
        if free.size:
            reasons.append(text)
            reason[free] = len(reasons) - 1

    # coverage entries whose unsupported operator touched channels that could otherwise be pruned
    param_dims = []
    computing = np.zeros(n_classes, dtype=bool)
    for (name, dim), (start, size, role) in b._param_dims.items():
        cls = labels[start:start + size]
        param_dims.append(ParamDim(name, dim, role, cls, name in b.buffers))
        if role in COMPUTING:
            computing[cls] = True
    # An operator without a rule that touches channels which could otherwise be pruned is reported
    # (and makes a strict trace fail); one that only sees the input image or the logits is listed only.
    for atoms, cov_index in b._unsupported:
        touches = computing[labels[atoms]].any()
        b.coverage[cov_index]["category"] = "unsupported" if touches else "unsupported (no prunable channels reach it)"

    groups = _groups(param_dims, computing, reason, reasons, n_classes)
    graph = ChannelGraph(
        groups=groups,
        param_dims=param_dims,
        op_records=[OpRecord(m, op, d, labels[a], info) for m, op, d, a, info in b.op_records],
        mac_terms=[MacTerm(op, m, macs, [labels[f] for f in factors]) for op, m, macs, factors in b.mac_terms],
        param_shapes=b.param_shapes,
        buffers=b.buffers,
        coverage=b.coverage,
        input_shapes=[list(t.shape) for t in inputs if isinstance(t, torch.Tensor)],
        trace_s=elapsed,
        num_classes=n_classes,
        model_type=type(model).__name__,
    )
    return graph


def _groups(param_dims: list[ParamDim], computing: np.ndarray, reason: np.ndarray, reasons: list[str],
            n_classes: int) -> list[ChannelGroup]:
    """Classes with the same footprint (parameter dimensions and multiplicities) form one group."""
    if not param_dims:
        return []
    n_pd = len(param_dims)
    cls_all = np.concatenate([pd.classes for pd in param_dims])
    pd_all = np.concatenate([np.full(len(pd.classes), i) for i, pd in enumerate(param_dims)])
    mask = computing[cls_all]
    keys, counts = np.unique(cls_all[mask] * n_pd + pd_all[mask], return_counts=True)  # sorted by class, then pd
    key_cls, key_pd = keys // n_pd, keys % n_pd
    bounds = np.nonzero(np.diff(key_cls))[0] + 1
    by_signature: dict[tuple, list[int]] = {}
    for pds, ks, cls in zip(np.split(key_pd, bounds), np.split(counts, bounds), np.split(key_cls, bounds)):
        c = int(cls[0])
        signature = (tuple(zip(pds.tolist(), ks.tolist())), bool(reason[c] >= 0))
        by_signature.setdefault(signature, []).append(c)

    # order the channels of a group by their first position along the group's anchor dimension
    first_pos_cache: dict[int, np.ndarray] = {}

    def first_positions(pd_index: int) -> np.ndarray:
        if pd_index not in first_pos_cache:
            uniq, idx = np.unique(param_dims[pd_index].classes, return_index=True)
            table = np.zeros(n_classes, dtype=np.int64)
            table[uniq] = idx
            first_pos_cache[pd_index] = table
        return first_pos_cache[pd_index]

    members, anchors, fixed_text = [], [], []
    for (fp, _fixed), classes in by_signature.items():
        anchor = min(pd for pd, _ in fp if param_dims[pd].role in COMPUTING)
        cls = np.asarray(classes)
        cls = cls[np.argsort(first_positions(anchor)[cls], kind="stable")]
        members.append(cls)
        anchors.append(anchor)
        r = int(reason[cls[0]])
        fixed_text.append(reasons[r] if r >= 0 else None)

    group_of = np.full(n_classes, -1, dtype=np.int64)
    rank_of = np.zeros(n_classes, dtype=np.int64)
    for gi, cls in enumerate(members):
        group_of[cls] = gi
        rank_of[cls] = np.arange(len(cls))
    slices: list[list[ParamSlice]] = [[] for _ in members]
    for pd in param_dims:
        gids = group_of[pd.classes]
        pos = np.nonzero(gids >= 0)[0]
        if not pos.size:
            continue
        pos = pos[np.lexsort((pos, rank_of[pd.classes[pos]], gids[pos]))]
        cuts = np.nonzero(np.diff(gids[pos]))[0] + 1
        module, _, attr = pd.name.rpartition(".")
        for chunk in np.split(pos, cuts):
            gi = int(gids[chunk[0]])
            size = len(members[gi])
            index = torch.as_tensor(chunk.reshape(size, -1) if len(chunk) > size else chunk)
            slices[gi].append(ParamSlice(module, attr, pd.dim, index, pd.role))

    order = sorted(range(len(members)), key=lambda gi: (anchors[gi], int(first_positions(anchors[gi])[members[gi][0]])))
    groups, used_ids = [], {}
    for gi in order:
        anchor = param_dims[anchors[gi]]
        module_id = anchor.name.rpartition(".")[0] or anchor.name
        count = used_ids.get(module_id, 0)
        used_ids[module_id] = count + 1
        gid = module_id if count == 0 else f"{module_id}#{count}"
        text = fixed_text[gi]
        if text is None and len(members[gi]) == 1:
            text = "a single channel (a layer keeps at least one)"
        producers = [s for s in slices[gi] if s.role != "in"]
        consumers = [s for s in slices[gi] if s.role == "in"]
        groups.append(ChannelGroup(gid, len(members[gi]), text is None, text, producers, consumers, members[gi]))
    return groups
