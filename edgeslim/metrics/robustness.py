"""Calibration and robustness of any classifier, dense or slim: what did compression do to them?

* **Expected calibration error** (MINT's calibration claim, specs/seed-ganesh.md 1.10): predictions
  binned by confidence into ``bins`` equal-width bins; ECE = sum_b (n_b / n) |accuracy_b - confidence_b|.
* **Noise** (deep-LDA robustness protocol, specs/seed-tian.md section 3), applied to the test images
  in pixel space [0, 1] and clipped back: Gaussian (std 5 on the 0-255 scale = 5/255), Poisson
  (photon counts with ``peak`` = 255 photons at full intensity) and speckle (x + 0.05 x n, n ~ N(0, 1)).
* **Attacks**, l-infinity, in pixel space: FGSM (one signed-gradient step of size eps) and PGD (Madry:
  random start in the eps-ball, ``steps`` signed-gradient steps of ``alpha``, projection after each;
  CAPER's PGD-20 setting: 20 steps of eps/4). White-box on the model itself, and *transferred*: the
  adversarial images are crafted on a separate ``source`` model and fed to the model (Tian's protocol).
  Defaults eps = 8/255 (CAPER's attack table); the deep-LDA thesis gives no FGSM eps.

Images reach the model normalised; the attacks and noise work on pixels, so the data set's
normalisation (mean, std) is needed: found on ``TensorImages`` and torchvision ``Normalize``
transforms, else pass ``normalization=(mean, std)``. Accuracies are percentages; ``drop`` is
perturbed minus clean accuracy (negative = worse), the thesis's metric.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset, Subset
from tqdm.auto import tqdm

__all__ = ["Normalization", "normalization_of", "expected_calibration_error", "gaussian_noise", "poisson_noise",
           "speckle_noise", "fgsm", "pgd", "evaluate_robustness", "compare_robustness"]


@dataclass(frozen=True)
class Normalization:
    """x_model = (pixels - mean) / std, per channel."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def _shape(self, x: torch.Tensor, values) -> torch.Tensor:
        return torch.as_tensor(values, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)

    def to_pixels(self, x: torch.Tensor) -> torch.Tensor:
        return x * self._shape(x, self.std) + self._shape(x, self.mean)

    def from_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        return (pixels - self._shape(pixels, self.mean)) / self._shape(pixels, self.std)


def normalization_of(dataset: Dataset) -> Normalization:
    """The (mean, std) a data set normalises its images with."""
    if isinstance(dataset, Subset):
        return normalization_of(dataset.dataset)
    if hasattr(dataset, "mean") and hasattr(dataset, "std") and torch.is_tensor(dataset.mean):
        return Normalization(tuple(dataset.mean.flatten().tolist()), tuple(dataset.std.flatten().tolist()))
    transforms = getattr(getattr(dataset, "transform", None), "transforms", [getattr(dataset, "transform", None)])
    for t in transforms:
        if type(t).__name__ == "Normalize":
            return Normalization(tuple(float(v) for v in t.mean), tuple(float(v) for v in t.std))
    raise ValueError(f"cannot tell how {type(dataset).__name__} normalises its images; pass "
                     "normalization=(mean, std) (per-channel, for pixels in [0, 1])")


# -- calibration ------------------------------------------------------------------------------------
def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> dict[str, Any]:
    """ECE of softmax ``probs`` (n, classes) against ``labels``, with the reliability diagram's bins.

    Bin b holds confidences in (b/bins, (b+1)/bins] (the first also holds 0). Returns ``ece`` (a fraction
    in [0, 1]) and ``bins``: per bin ``lower``, ``upper``, ``count``, ``confidence``, ``accuracy``.
    """
    if probs.dim() != 2 or len(probs) != len(labels) or len(labels) == 0:
        raise ValueError("expected probs of shape (n, classes) and n > 0 labels")
    confidence, prediction = probs.max(1)
    correct = (prediction == labels).double()
    confidence = confidence.double()
    which = (confidence * bins).ceil().long().clamp(1, bins) - 1
    ece, table = 0.0, []
    for b in range(bins):
        inside = which == b
        n = int(inside.sum())
        conf = float(confidence[inside].mean()) if n else None
        acc = float(correct[inside].mean()) if n else None
        if n:
            ece += n / len(labels) * abs(acc - conf)
        table.append({"lower": b / bins, "upper": (b + 1) / bins, "count": n, "confidence": conf, "accuracy": acc})
    return {"ece": ece, "bins": table}


# -- noise (pixel space, [0, 1]) ----------------------------------------------------------------------
def gaussian_noise(pixels: torch.Tensor, std: float = 5 / 255, generator: torch.Generator | None = None) -> torch.Tensor:
    noise = torch.randn(pixels.shape, generator=generator, dtype=pixels.dtype).to(pixels.device)
    return (pixels + std * noise).clamp(0, 1)


def poisson_noise(pixels: torch.Tensor, peak: float = 255.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """Shot noise: each pixel becomes Poisson(pixel x peak) / peak photons."""
    rate = (pixels.clamp(0, 1) * peak).cpu()
    return (torch.poisson(rate, generator=generator) / peak).clamp(0, 1).to(pixels.device, pixels.dtype)


def speckle_noise(pixels: torch.Tensor, strength: float = 0.05, generator: torch.Generator | None = None) -> torch.Tensor:
    """Multiplicative noise: x + strength * x * n, n ~ N(0, 1)."""
    noise = torch.randn(pixels.shape, generator=generator, dtype=pixels.dtype).to(pixels.device)
    return (pixels + strength * pixels * noise).clamp(0, 1)


# -- attacks (pixel space, l-infinity) -----------------------------------------------------------------
def _input_gradient(model: nn.Module, norm: Normalization, pixels: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    pixels = pixels.detach().requires_grad_(True)
    loss = F.cross_entropy(model(norm.from_pixels(pixels)), y)
    (grad,) = torch.autograd.grad(loss, pixels)
    return grad


def fgsm(model: nn.Module, norm: Normalization, pixels: torch.Tensor, y: torch.Tensor, eps: float = 8 / 255) -> torch.Tensor:
    """Fast gradient sign method: pixels + eps * sign(grad), clipped to [0, 1]."""
    return (pixels + eps * _input_gradient(model, norm, pixels, y).sign()).clamp(0, 1).detach()


def pgd(model: nn.Module, norm: Normalization, pixels: torch.Tensor, y: torch.Tensor, eps: float = 8 / 255,
        alpha: float | None = None, steps: int = 20, random_start: bool = True,
        generator: torch.Generator | None = None) -> torch.Tensor:
    """Projected gradient descent (Madry et al.) in the l-infinity eps-ball around ``pixels``, inside [0, 1]."""
    alpha = eps / 4 if alpha is None else alpha
    adv = pixels.clone()
    if random_start:
        start = torch.rand(pixels.shape, generator=generator, dtype=pixels.dtype).to(pixels.device)
        adv = (adv + (2 * start - 1) * eps).clamp(0, 1)
    for _ in range(steps):
        adv = adv + alpha * _input_gradient(model, norm, adv, y).sign()
        adv = torch.min(torch.max(adv, pixels - eps), pixels + eps).clamp(0, 1).detach()
    return adv


# -- the report -------------------------------------------------------------------------------------
def evaluate_robustness(model: nn.Module, dataset: Dataset, *, source: nn.Module | None = None,
                        normalization: Normalization | Sequence[Sequence[float]] | None = None,
                        eps: float = 8 / 255, pgd_steps: int = 20, pgd_alpha: float | None = None,
                        gaussian_std: float = 5 / 255, poisson_peak: float = 255.0, speckle: float = 0.05,
                        bins: int = 15, batch_size: int = 128, seed: int = 0, limit: int | None = None,
                        device: str | torch.device = "cpu", progress: bool = True) -> dict[str, Any]:
    """Clean accuracy, ECE, and accuracy under noise and attacks (white-box, and transferred from ``source``).

    ``limit`` evaluates the first ``limit`` samples only. The model (and source) are put in eval mode
    and restored. Returns ``accuracy``, ``ece``, ``nll``, ``reliability`` (bins), ``accuracy_under``
    {gaussian, poisson, speckle, fgsm, pgd[, fgsm_transfer, pgd_transfer]}, ``drop`` (the same keys,
    perturbed - clean, in points) and ``settings``.
    """
    if normalization is None:
        norm = normalization_of(dataset)
    elif isinstance(normalization, Normalization):
        norm = normalization
    else:
        norm = Normalization(tuple(normalization[0]), tuple(normalization[1]))
    if limit is not None:
        dataset = Subset(dataset, range(min(limit, len(dataset))))
    models = [m for m in (model, source) if m is not None]
    modes = [m.training for m in models]
    for m in models:
        m.eval()
    gen = torch.Generator().manual_seed(seed)
    hits: dict[str, int] = {}
    probs, labels = [], []
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size)

    def score(name: str, pixels: torch.Tensor, y: torch.Tensor) -> None:
        with torch.no_grad():
            hits[name] = hits.get(name, 0) + int((model(norm.from_pixels(pixels)).argmax(1) == y).sum())

    try:
        for x, y, *_ in tqdm(loader, desc="robustness", unit="batch", disable=not progress, leave=False):
            x, y = x.to(device), y.to(device)
            pixels = norm.to_pixels(x)
            with torch.no_grad():
                logits = model(x).float()
            probs.append(logits.softmax(1).cpu())
            labels.append(y.cpu())
            score("gaussian", gaussian_noise(pixels, gaussian_std, gen), y)
            score("poisson", poisson_noise(pixels, poisson_peak, gen), y)
            score("speckle", speckle_noise(pixels, speckle, gen), y)
            score("fgsm", fgsm(model, norm, pixels, y, eps), y)
            score("pgd", pgd(model, norm, pixels, y, eps, pgd_alpha, pgd_steps, generator=gen), y)
            if source is not None:
                score("fgsm_transfer", fgsm(source, norm, pixels, y, eps), y)
                score("pgd_transfer", pgd(source, norm, pixels, y, eps, pgd_alpha, pgd_steps, generator=gen), y)
    finally:
        for m, mode in zip(models, modes):
            m.train(mode)
    probs_all, labels_all = torch.cat(probs), torch.cat(labels)
    n = len(labels_all)
    clean = 100.0 * float((probs_all.argmax(1) == labels_all).double().mean())
    calibration = expected_calibration_error(probs_all, labels_all, bins)
    under = {k: 100.0 * v / n for k, v in hits.items()}
    return {
        "accuracy": clean,
        "ece": calibration["ece"],
        "nll": float(F.nll_loss(probs_all.clamp_min(1e-12).log(), labels_all)),
        "reliability": calibration["bins"],
        "accuracy_under": under,
        "drop": {k: v - clean for k, v in under.items()},
        "samples": n,
        "settings": {"eps": eps, "eps_255": eps * 255, "pgd_steps": pgd_steps,
                     "pgd_alpha": eps / 4 if pgd_alpha is None else pgd_alpha, "pgd_random_start": True,
                     "gaussian_std": gaussian_std, "poisson_peak": poisson_peak, "speckle": speckle, "bins": bins,
                     "seed": seed, "space": "pixels in [0, 1], clipped", "transfer_source": source is not None},
    }


def compare_robustness(dense: nn.Module, slim: nn.Module, dataset: Dataset, **options: Any) -> dict[str, Any]:
    """``evaluate_robustness`` of a dense model and its slim version, each attacked with the other's transferred
    examples too (an attacker who knows the public dense model attacks the deployed slim one), plus the
    slim-minus-dense differences of ECE and of every accuracy. ``options`` go to ``evaluate_robustness``."""
    d = evaluate_robustness(dense, dataset, source=slim, **options)
    s = evaluate_robustness(slim, dataset, source=dense, **options)
    change = {"accuracy": s["accuracy"] - d["accuracy"], "ece": s["ece"] - d["ece"]}
    change.update({k: s["accuracy_under"][k] - d["accuracy_under"][k] for k in d["accuracy_under"]})
    return {"dense": d, "slim": s, "slim_minus_dense": change}
