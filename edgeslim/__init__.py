"""edgeslim: physically slim trained PyTorch vision models, export them for the target device,
and measure that they are faster."""
from __future__ import annotations

__version__ = "0.1.0"

from .metrics import count  # noqa: E402

__all__ = ["__version__", "count"]
