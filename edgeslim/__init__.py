"""edgeslim: physically slim trained PyTorch vision models, export them for the target device,
and measure that they are faster."""
from __future__ import annotations

__version__ = "0.1.0"

from .metrics import count  # noqa: E402

__all__ = ["__version__", "count", "trace", "prune", "UnsupportedOpError"]

_ENGINE = {"trace", "prune", "UnsupportedOpError"}


def __getattr__(name: str):
    # The slimming engine is imported on first use: `import edgeslim` stays light for the CLI.
    if name in _ENGINE:
        from . import compress

        return getattr(compress, name)
    raise AttributeError(f"module 'edgeslim' has no attribute {name!r}")
