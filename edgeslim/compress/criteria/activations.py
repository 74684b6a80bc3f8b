"""Per-filter activations for the connectivity criteria (specs/seed-ganesh.md §1.5, §6.3).

MINT and SNACS describe every filter on every sample by ONE number: the spatial mean of its
activation map, on m un-augmented samples per class. ``collect_activations`` gathers these with
forward hooks: the hook reduces each feature map to (batch, channels) right away, so the memory used
is samples x channels (never a feature map per sample), written batch by batch into preallocated
arrays -- or into ``np.memmap`` files under ``store`` when even that does not fit in memory.

For a convolution the hook can also record the spatial means of its input *patches*
(``patch_means``): the spatial mean of a convolution's output is linear in them, so the output of a
layer whose kernels are masked is ``patch_means @ (weight * mask)`` exactly, without running the
model again (the SVM operating curves of SNACS use this).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ...data import calibration_subset, make_loader

__all__ = ["Activations", "collect_activations", "execution_order", "modules_called", "spatial_mean", "channel_dim", "prunable_layers"]

KINDS = ("input", "output", "patch_means")


def channel_dim(module: nn.Module) -> int:
    """Where the channels of ``module``'s input/output live: 1 for convolutions, -1 for linear layers."""
    return -1 if isinstance(module, nn.Linear) else 1


def spatial_mean(t: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """(batch, channels): the mean over every other axis (H x W for a feature map, tokens for a linear layer)."""
    t = t.detach()
    if t.dim() <= 2:
        return t.float().reshape(t.shape[0], -1) if t.dim() == 2 else t.float()[:, None]
    t = t.movedim(dim, 1)
    return t.float().flatten(2).mean(2)


def _patch_means(module: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """(batch, C_in * kh * kw): the mean over output positions of every input patch element."""
    if not isinstance(module, nn.Conv2d) or module.padding_mode != "zeros" or isinstance(module.padding, str):
        raise NotImplementedError(f"patch means are implemented for zero-padded Conv2d only, not {module}")
    cols = F.unfold(x.detach().float(), module.kernel_size, module.dilation, module.padding, module.stride)
    return cols.mean(2)


def prunable_layers(model: nn.Module) -> list[str]:
    """Paths of the convolution and linear layers (the layers whose kernels the criteria score), in definition order."""
    return [name for name, m in model.named_modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear))]


@dataclass
class Activations:
    """Spatially averaged activations of the same N samples: ``arrays[(module_path, kind)]`` -> (N, channels)."""

    arrays: dict[tuple[str, str], np.ndarray]
    targets: np.ndarray
    order: list[str] = field(default_factory=list)  # modules in the order of their first call (execution order)

    def __len__(self) -> int:
        return len(self.targets)

    def input(self, module: str) -> np.ndarray:
        return self._get(module, "input")

    def output(self, module: str) -> np.ndarray:
        return self._get(module, "output")

    def patch_means(self, module: str) -> np.ndarray:
        return self._get(module, "patch_means")

    def _get(self, module: str, kind: str) -> np.ndarray:
        try:
            return self.arrays[(module, kind)]
        except KeyError:
            raise KeyError(f"no {kind} activations were collected for {module!r}") from None

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays.values())


def _as_loader(data: Dataset | DataLoader, per_class: int | None, seed: int, batch_size: int) -> DataLoader:
    if isinstance(data, DataLoader):
        if per_class is None:
            return data  # the caller chose the calibration samples
        try:  # draw m per class from the loader's data set when its labels can be read
            return make_loader(calibration_subset(data.dataset, per_class, seed), data.batch_size or batch_size)
        except (AttributeError, TypeError):
            return data
    if per_class is not None:
        data = calibration_subset(data, per_class, seed)
    if len(data) == 0:
        raise ValueError("the calibration data is empty")
    return make_loader(data, batch_size)


@torch.no_grad()
def collect_activations(model: nn.Module, data: Dataset | DataLoader, requests: dict[str, Iterable[str]], *,
                        per_class: int | None = None, seed: int = 0, batch_size: int = 128,
                        device: str | torch.device = "cpu", store: str | Path | None = None,
                        progress: bool = True) -> Activations:
    """Run ``model`` (eval mode, no gradients) over the calibration data and keep per-filter spatial means.

    ``requests`` maps a module path to the kinds to keep: ``"input"``, ``"output"``, ``"patch_means"``.
    ``data``: a Dataset of (x, y) -- ``per_class`` samples of each class are drawn from it (the thesis's
    m; None = all) -- or a DataLoader used as is. ``store``: a folder for memory-mapped arrays.
    The model is returned to its previous train/eval mode and keeps no hooks.
    """
    modules = dict(model.named_modules())
    for name, kinds in requests.items():
        if name not in modules:
            raise ValueError(f"model has no module {name!r}")
        bad = set(kinds) - set(KINDS)
        if bad:
            raise ValueError(f"unknown activation kind(s) {sorted(bad)} for {name!r}; use {', '.join(KINDS)}")
    loader = _as_loader(data, per_class, seed, batch_size)
    total = len(loader.dataset) if hasattr(loader, "dataset") else None
    arrays: dict[tuple[str, str], np.ndarray] = {}
    order: list[str] = []
    cursor = {"start": 0, "stop": 0}

    def allocate(key: tuple[str, str], width: int) -> np.ndarray:
        if total is None:
            raise ValueError("the calibration loader must have a dataset with a length")
        if store is not None:
            path = Path(store) / f"{key[0] or 'model'}.{key[1]}.npy"
            path.parent.mkdir(parents=True, exist_ok=True)
            return np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(total, width))
        return np.empty((total, width), dtype=np.float32)

    def write(key: tuple[str, str], value: torch.Tensor) -> None:
        value = value.reshape(value.shape[0], -1).cpu().numpy()
        if key not in arrays:
            arrays[key] = allocate(key, value.shape[1])
        arrays[key][cursor["start"]:cursor["stop"]] = value

    def make_hook(name: str, kinds: frozenset[str]):
        module = modules[name]
        dim = channel_dim(module)

        def hook(mod, args, output):
            if name not in order:
                order.append(name)
            if "input" in kinds:
                write((name, "input"), spatial_mean(args[0], dim))
            if "output" in kinds:
                write((name, "output"), spatial_mean(output, dim))
            if "patch_means" in kinds:
                write((name, "patch_means"), _patch_means(mod, args[0]))

        return hook

    handles = [modules[n].register_forward_hook(make_hook(n, frozenset(k))) for n, k in requests.items()]
    was_training = model.training
    model.eval()
    targets = []
    try:
        bar = tqdm(loader, desc="activations", unit="batch", disable=not progress, leave=False)
        for x, y in bar:
            cursor["start"], cursor["stop"] = cursor["stop"], cursor["stop"] + len(x)
            model(x.to(device))
            targets.append(torch.as_tensor(y).cpu())
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    n = cursor["stop"]
    missing = [n_ for n_ in requests if not any(k[0] == n_ for k in arrays)]
    if missing:
        raise ValueError(f"module(s) {missing} were never called in the forward pass")
    arrays = {k: v[:n] for k, v in arrays.items()}
    return Activations(arrays, torch.cat(targets).numpy(), order)


def modules_called(model: nn.Module, example: torch.Tensor, accept: Callable[[str, nn.Module, Any], bool]) -> list[str]:
    """Paths of the modules for which ``accept(path, module, output)`` holds, in the order one forward
    pass (eval mode, no gradients) calls them; a module called twice is listed twice."""
    calls: list[str] = []

    def hook(path: str):
        return lambda module, _inputs, output: calls.append(path) if accept(path, module, output) else None

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules()]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return calls


def execution_order(model: nn.Module, example: torch.Tensor, names: Sequence[str] | None = None) -> list[str]:
    """The conv/linear layers (or ``names``) in the order a forward pass first calls them."""
    wanted = set(names) if names is not None else set(prunable_layers(model))
    return list(dict.fromkeys(modules_called(model, example, lambda path, _m, _o: path in wanted)))
