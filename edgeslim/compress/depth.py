"""Depth pruning: remove whole residual blocks, not only channels.

Why: a runtime pays a fixed cost per node, and on a multi-core CPU small nodes barely use the second
core (ONNX Runtime splits a node's work across threads and joins them again). A MobileNetV2 cut
to a tenth of its MACs by channels alone keeps all of its ~50 convolutions, most of them too small
to gain from a second thread, so its speed-up lags its MACs reduction. Removing residual blocks
removes their nodes, and the MACs they held go to wider, better-parallelised layers elsewhere
(``benchmarks/speedup.py --drop-blocks``).

What: a block computes ``x + branch(x)`` (torchvision's MobileNetV2/V3 inverted residuals and
EfficientNet's MBConv, recognised by their ``use_res_connect`` and checked on the example inputs).
Dropping it replaces ``branch(x)`` by its mean output per channel over the calibration inputs (the
constant closest to it in squared error) and folds that constant into the bias of the batch norm
that ends the block before, which feeds only this block: the block itself becomes ``Identity``.
Blocks go in order of *influence*: the variance the branch adds to the stream, relative to the
stream's energy, ``||branch(x) - mean||^2 / ||x||^2`` (the squared error its removal causes, as a
fraction of its input). This changes the function, unlike channel surgery: fine-tune afterwards.
"""
from __future__ import annotations

import copy
from typing import Iterable, Sequence

import torch
from torch import nn

__all__ = ["residual_blocks", "drop_blocks", "least_influential_dropped", "BlocksOvershoot", "remove_block"]


class BlocksOvershoot(ValueError):
    """Dropping the blocks asked for would alone cut the model below the pruning target."""


BRANCH_ATTRIBUTES = ("conv", "block")  # torchvision: MobileNetV2 .conv, MobileNetV3 / EfficientNet .block


def _body(block: nn.Module) -> nn.Module:
    """An inverted-residual block's layers (with or without a skip), or the module itself."""
    return next((getattr(block, a) for a in BRANCH_ATTRIBUTES if isinstance(getattr(block, a, None), nn.Module)),
                block)


def _branch(block: nn.Module) -> nn.Module | None:
    """The branch of a block that adds it to a skip connection."""
    body = _body(block)
    return body if getattr(block, "use_res_connect", False) and body is not block else None


def _output_norm(block: nn.Module) -> nn.BatchNorm2d | None:
    """The batch norm whose output (plus the skip, if any) is the block's output, if the block ends in one."""
    m = _body(block)
    while isinstance(m, nn.Sequential) and len(m):
        m = m[-1]
    return m if isinstance(m, nn.BatchNorm2d) and m.affine else None


def _previous_sibling(model: nn.Module, path: str) -> tuple[nn.Module, str] | None:
    """The module that runs just before ``path`` in its parent ``nn.Sequential``, and so feeds only it."""
    parent_path, _, attr = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    if not isinstance(parent, nn.Sequential) or not attr.isdigit() or int(attr) == 0:
        return None
    prev = f"{parent_path}.{int(attr) - 1}" if parent_path else str(int(attr) - 1)
    return model.get_submodule(prev), prev


@torch.no_grad()
def _branch_statistics(model: nn.Module, batches: Iterable[Sequence[torch.Tensor]],
                       candidates: dict[str, nn.Module]) -> dict[str, dict]:
    """Per block: the branch output's per-channel mean, its variance around it and the stream's energy,
    and whether the block's output really was input + branch output."""
    stats = {p: {"sum": 0.0, "sq": 0.0, "energy": 0.0, "count": 0, "residual": True} for p in candidates}
    hooks = []
    for path, block in candidates.items():
        branch_out: dict[str, torch.Tensor] = {}
        hooks.append(_branch(block).register_forward_hook(lambda m, a, out, _s=branch_out: _s.update(f=out)))

        def after(module, args, out, _path=path, _s=branch_out):
            x, f, s = args[0], _s.pop("f", None), stats[_path]
            if f is None or f.dim() != 4 or f.shape != x.shape or not torch.allclose(out, x + f, rtol=1e-4,
                                                                                     atol=1e-5):
                s["residual"] = False
                return
            s["sum"] = s["sum"] + f.sum(dim=(0, 2, 3))
            s["sq"] = s["sq"] + (f * f).sum(dim=(0, 2, 3))
            s["energy"] += float((x * x).sum())
            s["count"] += f.numel() // f.shape[1]

        hooks.append(block.register_forward_hook(after))
    was_training = model.training
    model.eval()
    try:
        for inputs in batches:
            model(*inputs)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return stats


def residual_blocks(model: nn.Module, batches: Iterable[Sequence[torch.Tensor]]) -> dict[str, float]:
    """The blocks :func:`drop_blocks` can remove, ``{path: influence}``, least influential first.

    ``batches``: inputs to run the model on (tuples of tensors), e.g. the calibration data.
    A block qualifies when it computes ``x + branch(x)`` on these inputs, is 4-D (convolutional) and
    the module before it in its ``nn.Sequential`` ends in an affine batch norm to fold into.
    """
    influence = {}
    for path, s in _removable(model, batches).items():
        mean = s["sum"] / s["count"]
        variance = float((s["sq"] - s["count"] * mean * mean).sum())
        influence[path] = variance / max(s["energy"], 1e-12)
    return dict(sorted(influence.items(), key=lambda kv: kv[1]))


def _removable(model: nn.Module, batches: Iterable[Sequence[torch.Tensor]]) -> dict[str, dict]:
    """The branch statistics of every block that qualifies (see :func:`residual_blocks`), one pass."""
    candidates = {path: m for path, m in model.named_modules() if _branch(m) is not None}
    candidates = {p: m for p, m in candidates.items()
                  if (prev := _previous_sibling(model, p)) is not None and _output_norm(prev[0]) is not None}
    stats = _branch_statistics(model, batches, candidates)
    return {path: s for path, s in stats.items() if s["residual"] and s["count"]}


def drop_blocks(model: nn.Module, paths: Sequence[str], batches: Iterable[Sequence[torch.Tensor]]) -> nn.Module:
    """A copy of ``model`` without the residual blocks at ``paths`` (from :func:`residual_blocks`): each
    block's branch is replaced by its mean output on ``batches``, folded into the batch norm that ends
    the block before it, and the block becomes ``nn.Identity``."""
    stats = _removable(model, batches) if paths else {}
    unknown = [p for p in paths if p not in stats]
    if unknown:
        raise ValueError(f"not removable residual blocks of this model: {', '.join(unknown)}")
    slim = copy.deepcopy(model)
    # Later blocks first: a block's constant goes to the block before it, which may itself be dropped
    # next and pass both constants further back.
    order = sorted(paths, key=lambda p: _position(model, p), reverse=True)
    carried: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for path in order:
            shift = stats[path]["sum"] / stats[path]["count"] + carried.pop(path, 0)
            prev, prev_path = _previous_sibling(slim, path)
            if prev_path in paths:
                carried[prev_path] = carried.get(prev_path, 0) + shift
            else:
                _output_norm(prev).bias += shift.to(_output_norm(prev).bias.dtype)
            remove_block(slim, path)
    return slim


def remove_block(model: nn.Module, path: str) -> None:
    """Replace the block at ``path`` by ``nn.Identity`` in place (its constant is already folded)."""
    parent, _, attr = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, nn.Identity())


def _position(model: nn.Module, path: str) -> int:
    return [p for p, _ in model.named_modules()].index(path)


def least_influential_dropped(model: nn.Module, inputs: tuple, loader: Iterable | None,
                              drop: int | str) -> tuple[nn.Module, list[str]]:
    """The model without its ``drop`` (a number or ``"all"``) least influential residual blocks, and
    their paths; branch means from a few calibration batches if ``loader`` is given, else ``inputs``."""
    batches = [inputs]
    if loader is not None:  # a few calibration batches give better branch means than the example alone
        batches = [tuple(b) if isinstance(b, (tuple, list)) else (b,) for b, _ in zip(loader, range(4))]
        batches = [b[:1] if len(b) > 1 else b for b in batches]  # (inputs, labels) -> (inputs,)
    blocks = residual_blocks(model, batches)
    if not blocks:
        raise ValueError("drop_blocks: this model has no residual block edgeslim can remove (x + branch(x) after a "
                         "block that ends in a batch norm, e.g. MobileNetV2/V3, EfficientNet)")
    if drop == "all":
        drop = len(blocks)
    if not isinstance(drop, int) or drop < 0:
        raise ValueError(f"drop_blocks must be a number of blocks or 'all', not {drop!r}")
    if drop > len(blocks):
        raise ValueError(f"drop_blocks={drop}, but the model has {len(blocks)} residual blocks edgeslim can remove")
    chosen = list(blocks)[:drop]
    return drop_blocks(model, chosen, batches), chosen
