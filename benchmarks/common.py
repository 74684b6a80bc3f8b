"""Helpers shared by the benchmark scripts."""
import torch

from edgeslim.models import build_model


def random_model(spec: str, seed: int = 0) -> torch.nn.Module:
    """``spec`` with random weights, in eval mode, whose output depends on its input: a parity check on
    constant outputs compares nothing. Zero-initialised weight matrices (the classifier heads of ViT,
    Swin, ...) are redrawn; a model whose signal still vanishes (GoogLeNet's std-0.01 init) gets
    He-initialised weights."""
    from edgeslim.models import default_input_shape

    torch.manual_seed(seed)
    model = build_model(spec).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1 and not p.any():
                p.normal_(0, 0.02)
        shape = default_input_shape(spec)
        if torch.equal(model(torch.randn(shape)), model(torch.randn(shape))):
            for m in model.modules():
                if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
                    torch.nn.init.kaiming_normal_(m.weight)
    return model
