"""``edgeslim`` command line. One module per command; each registers its sub-parser.

Every command returns a JSON-serialisable dict. With ``--json`` exactly that object is printed on
stdout (progress bars and messages go to stderr); without it the command prints a short human
summary. Errors a user can fix are one line on stderr (or ``{"error": ...}`` with ``--json``)
and exit status 2.
"""
from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

# Adding a command = adding a module with add_parser(subparsers) and listing it here.
COMMANDS = ["demo", "train", "inspect", "prune", "finetune", "export", "devices", "bench", "report", "lda_family"]


def to_jsonable(obj: Any) -> Any:
    """Make results printable as strict JSON (paths -> str, tensors -> lists, NaN -> null)."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if hasattr(obj, "tolist"):
        return to_jsonable(obj.tolist())
    if hasattr(obj, "to_dict"):
        return to_jsonable(obj.to_dict())
    return obj


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgeslim", description="Slim, export and benchmark vision models for edge devices.")
    from .. import __version__

    parser.add_argument("--version", action="version", version=f"edgeslim {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))  # under torchrun, rank 0 alone prints results on stdout
    try:
        result = args.run(args)
    except (ValueError, FileNotFoundError, NotImplementedError, RuntimeError) as exc:
        message = str(exc).strip() or type(exc).__name__
        if getattr(args, "json", False) and rank == 0:
            print(json.dumps({"error": message, "type": type(exc).__name__}))
        else:
            where = f" (rank {rank})" if rank else ""
            print(f"edgeslim {args.command}{where}: error: {message}", file=sys.stderr)
        return 2
    if rank != 0:
        return 0
    if args.json:
        print(json.dumps(to_jsonable(result), indent=None))
    else:
        args.render(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
