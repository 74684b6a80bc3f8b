"""Arguments and helpers shared by several commands."""
from __future__ import annotations

import argparse
from typing import Any, Callable

from ..models import LoadedModel, load_model


def add_command(sub, name: str, help: str, run: Callable, render: Callable | None = None) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help, description=help)
    p.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
    p.set_defaults(run=run, render=render or render_kv)
    return p


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL", help="zoo:NAME | torchvision:NAME | file.py:function | checkpoint.pt")
    p.add_argument("--weights", help="state_dict file to load into MODEL (loaded with weights_only=True)")
    p.add_argument("--input", type=parse_shape, help="input shape, e.g. 1x3x224x224 (default: the model's own)")
    p.add_argument("--num-classes", type=int, help="classifier width when building MODEL")


def parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(v) for v in text.lower().replace(",", "x").split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"shape {text!r} must look like 1x3x224x224") from None
    if not shape or any(v <= 0 for v in shape):
        raise argparse.ArgumentTypeError(f"shape {text!r} must have positive sizes")
    return shape


def resolve_model(args: argparse.Namespace, num_classes: int | None = None) -> LoadedModel:
    return load_model(args.model, weights=args.weights, num_classes=args.num_classes or num_classes,
                      input_shape=args.input)


def human(n: float, unit: str = "") -> str:
    for factor, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= factor:
            return f"{n / factor:.2f} {suffix}{unit}"
    return f"{n:g} {unit}".strip()


def render_kv(result: dict[str, Any]) -> None:
    for key, value in result.items():
        if isinstance(value, (dict, list)):
            continue
        print(f"{key:>24}: {value}")
