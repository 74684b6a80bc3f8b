"""Helpers shared by the benchmark scripts."""
import torch

from edgeslim.models import build_model


def random_model(spec: str, seed: int = 0) -> torch.nn.Module:
    """``spec`` with random weights, in eval mode. Zero-initialised weight matrices (the classifier heads of
    ViT, Swin, ...) are redrawn, otherwise every output is 0 and a parity check compares nothing."""
    torch.manual_seed(seed)
    model = build_model(spec).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1 and not p.any():
                p.normal_(0, 0.02)
    return model
