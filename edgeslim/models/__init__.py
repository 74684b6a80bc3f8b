"""Naming, building, saving and loading models (see INTERFACE.md, "Naming a model").

Spellings: ``zoo:NAME`` (edgeslim's own CIFAR-style models), ``torchvision:NAME``,
``path/to/file.py:function`` (a user's builder) and an edgeslim checkpoint ``run/model.pt``.

A checkpoint never pickles a module: it stores the model's spelling and keyword arguments, the
state_dict and, for slim models, the pruning plan that turns the freshly built architecture into
the slim one. It therefore loads with ``torch.load(..., weights_only=True)``.
"""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from .cifar import CifarResNet, CifarVGG16, MCifarNet, PadShortcut
from .vit import VisionTransformer

__all__ = [
    "ZOO", "register_zoo", "build_model", "default_input_shape", "load_model", "LoadedModel",
    "save_checkpoint", "load_checkpoint", "CifarResNet", "CifarVGG16", "MCifarNet", "PadShortcut",
    "VisionTransformer",
]

CHECKPOINT_FORMAT = "edgeslim-checkpoint/1"

ZOO: dict[str, Callable[..., nn.Module]] = {}
ZOO_INPUT: dict[str, tuple[int, ...]] = {}  # zoo models whose natural input is not 1x3x32x32
# Modules that register zoo models next to the method they belong to; imported when the zoo is first used.
ZOO_MODULES = ["edgeslim.compress.fbs_condconv", "edgeslim.models.inception"]


def _zoo() -> dict[str, Callable[..., nn.Module]]:
    for module in ZOO_MODULES:
        importlib.import_module(module)
    return ZOO


def register_zoo(name: str, input_shape: tuple[int, ...] | None = None
                 ) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register a builder under ``zoo:NAME``; builders take ``num_classes`` and keyword options."""

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        ZOO[name] = fn
        if input_shape is not None:
            ZOO_INPUT[name] = tuple(input_shape)
        return fn

    return deco


for _depth in (20, 32, 44, 56, 110):
    register_zoo(f"resnet{_depth}")(lambda num_classes=10, _d=_depth, **kw: CifarResNet(_d, num_classes, **kw))
register_zoo("vgg16")(lambda num_classes=10, **kw: CifarVGG16(num_classes, **kw))
register_zoo("mcifarnet")(lambda num_classes=10, **kw: MCifarNet(num_classes, **kw))
# a small ViT for 32x32 inputs (patch 4, width 96, 6 blocks): the PatchDrop model
register_zoo("vit_tiny")(lambda num_classes=10, **kw: VisionTransformer(num_classes, **kw))


# torchvision models whose natural input is not 224x224
_TORCHVISION_INPUT = {"inception_v3": 299}


def _split_spec(spec: str) -> tuple[str, str]:
    if spec.startswith(("zoo:", "torchvision:")):
        kind, name = spec.split(":", 1)
        return kind, name
    if ".py:" in spec:
        return "file", spec
    raise ValueError(
        f"cannot understand model {spec!r}: use zoo:NAME ({', '.join(sorted(_zoo()))}), torchvision:NAME, "
        "path/to/file.py:function, or an edgeslim checkpoint (.pt)"
    )


def build_model(spec: str, num_classes: int | None = None, **kwargs: Any) -> nn.Module:
    """Build a freshly initialised model from its spelling (no weights are downloaded)."""
    kind, name = _split_spec(spec)
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if kind == "zoo":
        if name not in _zoo():
            raise ValueError(f"unknown zoo model {name!r}; the zoo has: {', '.join(sorted(ZOO))}")
        return ZOO[name](**kwargs)
    if kind == "torchvision":
        import torchvision

        available = torchvision.models.list_models()
        if name not in available:
            raise ValueError(f"unknown torchvision model {name!r}; see torchvision.models.list_models()")
        return torchvision.models.get_model(name, weights=None, **kwargs)
    path, func = name.rsplit(":", 1)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"model file {path!r} does not exist (spelling: path/to/file.py:function)")
    module_spec = importlib.util.spec_from_file_location(Path(path).stem, path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, func):
        raise ValueError(f"{path} has no function {func!r}")
    model = getattr(module, func)(**kwargs)
    if not isinstance(model, nn.Module):
        raise TypeError(f"{spec} returned {type(model).__name__}, expected an nn.Module")
    return model


def default_input_shape(spec: str) -> tuple[int, ...]:
    """The model's natural input (batch 1): 32x32 for the CIFAR zoo, 224x224 for torchvision."""
    kind, name = _split_spec(spec)
    if kind == "zoo":
        _zoo()  # lazily registered zoo models may declare their input shape
        return ZOO_INPUT.get(name, (1, 3, 32, 32))
    if kind == "torchvision":
        side = _TORCHVISION_INPUT.get(name, 224)
        return (1, 3, side, side)
    raise ValueError(f"no default input shape for {spec}; pass --input, e.g. 1x3x224x224")


@dataclass
class LoadedModel:
    model: nn.Module
    spec: str
    kwargs: dict[str, Any]
    input_shape: tuple[int, ...] | None
    plan: dict[str, Any] | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    masks: dict[str, torch.Tensor] | None = None  # connection masks {param_name: 0/1 tensor}, kept while fine-tuning

    def example_input(self, batch: int = 1) -> torch.Tensor:
        if self.input_shape is None:
            raise ValueError(f"no input shape known for {self.spec}; pass one, e.g. 1x3x224x224")
        return torch.randn(batch, *self.input_shape[1:])


def save_checkpoint(path: str | os.PathLike, model: nn.Module, spec: str, kwargs: dict[str, Any] | None = None,
                    input_shape: tuple[int, ...] | None = None, plan: dict[str, Any] | None = None,
                    meta: dict[str, Any] | None = None, masks: dict[str, torch.Tensor] | None = None,
                    training: dict[str, Any] | None = None) -> Path:
    """Write ``model`` as architecture spelling + state_dict (+ plan), loadable with weights_only=True.

    ``masks``: connection masks to keep fixed while fine-tuning; ``training``: the state needed to
    resume a run exactly (see ``edgeslim.training.checkpoint``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "spec": spec,
        "kwargs": dict(kwargs or {}),
        "input_shape": list(input_shape) if input_shape else None,
        "plan": plan,
        "meta": dict(meta or {}),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    if masks:  # stored as booleans (a quarter of the bytes); loaded back as 0/1 floats
        payload["masks"] = {k: torch.as_tensor(v).detach().to("cpu", torch.bool) for k, v in masks.items()}
    if training is not None:
        payload["training"] = training
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)  # never leave a half-written checkpoint behind
    return path


def load_checkpoint(path: str | os.PathLike) -> LoadedModel:
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not an edgeslim checkpoint (a plain state_dict needs MODEL --weights FILE)")
    model = build_model(payload["spec"], **payload["kwargs"])
    if payload["plan"] is not None:
        from ..compress import apply_plan  # the engine rebuilds the slim architecture from the plan

        model = apply_plan(model, payload["plan"])
    model.load_state_dict(payload["state_dict"])
    shape = tuple(payload["input_shape"]) if payload["input_shape"] else None
    masks = payload.get("masks")
    masks = {k: v.float() for k, v in masks.items()} if masks else None
    return LoadedModel(model, payload["spec"], payload["kwargs"], shape, payload["plan"], payload["meta"], masks)


def load_model(spec: str, weights: str | None = None, num_classes: int | None = None,
               input_shape: tuple[int, ...] | None = None) -> LoadedModel:
    """Resolve any MODEL spelling of INTERFACE.md into a model plus what is known about it."""
    if spec.endswith((".pt", ".pth")) and ":" not in spec:
        if not os.path.isfile(spec):
            raise FileNotFoundError(f"checkpoint {spec!r} does not exist")
        loaded = load_checkpoint(spec)
        if input_shape:
            loaded.input_shape = tuple(input_shape)
        return loaded
    kwargs = {"num_classes": num_classes} if num_classes is not None else {}
    model = build_model(spec, **kwargs)
    if weights:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and state.get("format") == CHECKPOINT_FORMAT:
            state = state["state_dict"]
        model.load_state_dict(state)
    if input_shape is None:
        try:
            input_shape = default_input_shape(spec)
        except ValueError:
            input_shape = None
    return LoadedModel(model, spec, kwargs, tuple(input_shape) if input_shape else None)
