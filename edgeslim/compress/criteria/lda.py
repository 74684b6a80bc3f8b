"""Deep-LDA pruning (Tian 2020, ch. 3; specs/seed-tian.md section 1).

Where the usefulness of a channel comes from:

1. **Latent LDA** (thesis eq. 3.1-3.8). Every image gives one firing vector of the *final hidden layer*
   (the input of the linear decision layer, post-ReLU and globally pooled). Neurons that never vary or
   that duplicate another neuron are set aside; every other neuron j gets its Fisher ratio
   ``v_j = sigma_b^2(j) / sigma_w^2(j)`` (between- over within-class scatter).
2. **Top-M' selection** (L404): the smallest number of top-ranked neurons whose frozen features, fed to
   a re-fitted linear classifier, keep validation accuracy within ``tolerance`` points of all neurons
   (the thesis's sensitivity sweep), or Otsu's threshold on the ratios.
3. **Deconvnet tracing** (eq. 3.9-3.12). Each image's latent vector, with the non-selected neurons
   zeroed, is projected back through the network with Zeiler-Fergus rules: max-pools unpool through
   their forward switches, rectifiers rectify the *reconstruction* (not the forward mask),
   convolutions and linear layers apply their transposed trained weights. This is autograd with one
   changed rule (the activations'), so it works on any network: residual additions copy the signal to
   both addends, concatenations split it, fan-out nodes sum what comes back from all their readers.
   A channel's utility is the mean over images of |reconstruction| of its feature map (read after
   the BatchNorm that follows its layer), maxed over space; ``at="input"`` reads the thesis's U_i at
   the layers' inputs instead (see :func:`deconv_utilities`).
4. **Per-layer threshold** (eq. 3.13): channel c of layer i goes when ``u_c < eta * std(u_i != 0)``.
   :func:`normalized_utilities` divides every layer's (group's) utilities by that std, so
   ``score >= eta`` is the thesis rule; ``edgeslim.compress.lda_family`` applies it step by step.
   ``edgeslim.prune(method="lda", target=...)`` hands the same scores to the engine's target
   solver, which divides each group's scores by their mean before ranking all channels together:
   still a per-layer relative threshold, but scaled by the mean instead of the std.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils.data import DataLoader, Dataset

from .activations import modules_called

__all__ = [
    "scatter_matrices", "fisher_ratios", "clean_neurons", "otsu_threshold", "linear_probe_accuracy",
    "select_top_neurons", "LatentSelection", "find_decision_layer", "latent_features", "deconv_utilities",
    "normalized_utilities", "threshold_keep", "lda_utilities", "group_utilities", "LdaUtilities",
]


# ----------------------------------------------------------------------------------------------
# 1. LDA in the final latent space
# ----------------------------------------------------------------------------------------------

def scatter_matrices(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Within-, between- and total scatter (eq. 3.2-3.5) of the rows of ``x`` (n, d) with labels ``y``.

    Unnormalised sums, as in the thesis; ``Sb = Sa - Sw``. Differentiable (the push loss uses it).
    """
    xc = x - x.mean(0, keepdim=True)
    total = xc.T @ xc
    within = torch.zeros_like(total)
    for c in torch.unique(y):
        xi = x[y == c]
        xi = xi - xi.mean(0, keepdim=True)
        within = within + xi.T @ xi
    return within, total - within, total


def _diag_scatter(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Diagonals of Sw and Sb without forming d x d matrices (d can be 4096)."""
    mu = x.mean(0)
    within = torch.zeros_like(mu)
    between = torch.zeros_like(mu)
    for c in torch.unique(y):
        xi = x[y == c]
        mu_c = xi.mean(0)
        within += ((xi - mu_c) ** 2).sum(0)
        between += len(xi) * (mu_c - mu) ** 2
    return within, between


def fisher_ratios(x: torch.Tensor, y: torch.Tensor, mode: str = "diagonal", ridge: float = 1e-9) -> torch.Tensor:
    """Discriminant power of every neuron (column of ``x``).

    ``mode="diagonal"``: eq. 3.8, ``v_j = Sb[j,j] / Sw[j,j]`` (ch. 3, decorrelated latent space).
    ``mode="full"``: eq. 4.13, ``v_j = diag(Sw^-1 Sb)_j`` (ch. 4, after pushing).
    ``ridge`` (times the mean within-class scatter) guards the division: a neuron that is constant
    inside every class gets a large finite ratio instead of infinity ("diagonal": a floor on Sw[j,j];
    "full": added to the diagonal of Sw, which also makes a singular Sw solvable).
    """
    x = x.double()
    if mode == "diagonal":
        within, between = _diag_scatter(x, y)
        return (between / within.clamp_min(ridge * within.mean().clamp_min(1e-30))).float()
    if mode == "full":
        within, between, _ = scatter_matrices(x, y)
        d = within.shape[0]
        eps = ridge * torch.trace(within).clamp_min(1e-30) / d
        return torch.diagonal(torch.linalg.solve(within + eps * torch.eye(d, dtype=x.dtype), between)).float()
    raise ValueError(f"fisher ratio mode must be 'diagonal' (eq. 3.8) or 'full' (eq. 4.13), not {mode!r}")


def clean_neurons(x: torch.Tensor, var_tol: float = 1e-10, dup_tol: float = 1e-6) -> torch.Tensor:
    """Boolean mask of the neurons LDA should look at (thesis L371: 0-variance and duplicate columns
    are removed first). A neuron is dead when its variance is below ``var_tol`` times the largest
    neuron variance; it duplicates an earlier neuron when their correlation is above ``1 - dup_tol``
    (a scaled copy carries no new information). The first of a set of duplicates is kept."""
    x = x.double()
    var = x.var(0, unbiased=False)
    keep = var > var_tol * var.max().clamp_min(1e-30)
    idx = keep.nonzero().flatten()
    if len(idx) > 1:
        z = x[:, idx] - x[:, idx].mean(0)
        z = z / z.norm(dim=0)
        corr = (z.T @ z).abs().triu(diagonal=1)
        duplicate = (corr > 1 - dup_tol).any(0)  # column k duplicates some earlier column
        keep[idx[duplicate]] = False
    return keep


def otsu_threshold(values: torch.Tensor, bins: int = 256) -> float:
    """Otsu's threshold: the cut that maximises the between-class variance of the 1-D histogram."""
    v = values.double().flatten()
    v = v[torch.isfinite(v)]
    if v.numel() < 2 or v.max() == v.min():
        return float(v.min()) if v.numel() else 0.0
    hist = torch.histc(v, bins=bins, min=float(v.min()), max=float(v.max()))
    edges = torch.linspace(float(v.min()), float(v.max()), bins + 1, dtype=torch.float64)
    centres = (edges[:-1] + edges[1:]) / 2
    p = hist / hist.sum()
    w0 = p.cumsum(0)
    m0 = (p * centres).cumsum(0)
    total = m0[-1]
    between = (total * w0 - m0) ** 2 / (w0 * (1 - w0)).clamp_min(1e-30)
    between[w0 >= 1 - 1e-12] = -1  # a cut must leave something on both sides
    best = (between >= between.max() * (1 - 1e-9)).nonzero().flatten()
    return float(edges[1:][best[len(best) // 2]])  # the middle of a flat optimum (an empty gap)


def linear_probe_accuracy(x_fit: torch.Tensor, y_fit: torch.Tensor, x_val: torch.Tensor, y_val: torch.Tensor,
                          shrinkage: float = 1e-3) -> float:
    """Validation accuracy (percent) of a linear classifier fitted in closed form on frozen features.

    The classifier is Fisher's LDA rule (class means, pooled within-class covariance with a small
    ``shrinkage`` towards its mean variance): the thesis's "comparable accuracies based on frozen
    top latent space features" (L404), re-fitting only the linear decision, in milliseconds.
    """
    x_fit, x_val = x_fit.double(), x_val.double()
    classes = torch.unique(y_fit)
    means = torch.stack([x_fit[y_fit == c].mean(0) for c in classes])
    within = scatter_matrices(x_fit, y_fit)[0] / max(1, len(x_fit) - len(classes))
    d = within.shape[0]
    within = within + shrinkage * torch.trace(within).clamp_min(1e-12) / d * torch.eye(d, dtype=within.dtype)
    w = torch.linalg.solve(within, means.T)                                    # (d, C): Sigma^-1 mu_c
    prior = torch.log(torch.stack([(y_fit == c).double().mean() for c in classes]))
    scores = x_val @ w - 0.5 * (means * w.T).sum(1) + prior
    return 100.0 * (classes[scores.argmax(1)] == y_val).double().mean().item()


@dataclass
class LatentSelection:
    """Outcome of steps 1-2: which latent neurons carry the task (indices into the latent vector)."""

    ratios: torch.Tensor              # (M,) Fisher ratio per latent neuron, 0 for cleaned-out neurons
    active: torch.Tensor              # (M,) bool: not dead, not a duplicate
    selected: torch.Tensor            # indices of the top-M' neurons, best first
    method: str                       # "sweep" | "otsu" | "fixed"
    curve: list[dict[str, float]] = field(default_factory=list)  # sweep: [{k, accuracy}]

    @property
    def mask(self) -> torch.Tensor:
        m = torch.zeros_like(self.active)
        m[self.selected] = True
        return m

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "m_prime": int(len(self.selected)), "latent_size": int(len(self.ratios)),
                "active": int(self.active.sum()), "selected": self.selected.tolist(), "curve": self.curve}


def _sweep_sizes(n: int) -> list[int]:
    """Candidate M' values: every k up to 16, then about 12 per doubling up to n."""
    sizes = set(range(1, min(n, 16) + 1))
    k = 16.0
    while k < n:
        k *= 2 ** (1 / 12)
        sizes.add(min(n, int(round(k))))
    sizes.add(n)
    return sorted(sizes)


def _stratified_split(y: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    fit, val = [], []
    for c in torch.unique(y):
        idx = (y == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        n_val = int(round(len(idx) * fraction)) if len(idx) > 1 else 0
        val.append(idx[:n_val])
        fit.append(idx[n_val:])
    return torch.cat(fit), torch.cat(val)


def select_top_neurons(x: torch.Tensor, y: torch.Tensor, method: str = "sweep", ratio_mode: str = "diagonal",
                       tolerance: float = 1.0, m_prime: int | None = None, x_val: torch.Tensor | None = None,
                       y_val: torch.Tensor | None = None, val_fraction: float = 0.3, seed: int = 0) -> LatentSelection:
    """Clean the latent neurons, rank them by Fisher ratio and choose M' (thesis L371-404).

    ``method``: ``"sweep"`` (default; smallest top-k whose re-fitted linear probe is within
    ``tolerance`` accuracy points of the probe on all active neurons; validation rows are ``x_val``
    or, when absent, a stratified ``val_fraction`` of ``x``), ``"otsu"`` (keep ratios above Otsu's
    threshold) or ``"fixed"`` (``m_prime`` neurons).
    """
    if x.ndim != 2 or len(x) != len(y):
        raise ValueError(f"latent features must be (n, M) with one label per row; got {tuple(x.shape)} and {len(y)} labels")
    if len(torch.unique(y)) < 2:
        raise ValueError("LDA needs at least two classes in the calibration data")
    active = clean_neurons(x)
    if not active.any():
        raise ValueError("every latent neuron is constant on the calibration data: nothing to rank (is the model trained?)")
    ratios = torch.zeros(x.shape[1])
    ratios[active] = fisher_ratios(x[:, active], y, mode=ratio_mode)
    order = active.nonzero().flatten()[ratios[active].argsort(descending=True)]
    curve: list[dict[str, float]] = []
    if method == "fixed":
        if not m_prime or m_prime < 1:
            raise ValueError("method='fixed' needs m_prime >= 1 (the number of latent neurons to keep)")
        k = min(m_prime, len(order))
    elif method == "otsu":
        k = max(1, int((ratios[order] >= otsu_threshold(ratios[order])).sum()))
    elif method == "sweep":
        if x_val is None:
            fit_idx, val_idx = _stratified_split(y, val_fraction, seed)
            x_fit, y_fit, x_val, y_val = x[fit_idx], y[fit_idx], x[val_idx], y[val_idx]
        else:
            x_fit, y_fit = x, y
        probe = lambda cols: linear_probe_accuracy(x_fit[:, cols], y_fit, x_val[:, cols], y_val)
        reference = probe(order)
        k = len(order)
        for size in _sweep_sizes(len(order)):
            acc = probe(order[:size])
            curve.append({"k": size, "accuracy": acc})
            if acc >= reference - tolerance:
                k = size
                break
        curve.append({"k": len(order), "accuracy": reference})
    else:
        raise ValueError(f"M' selection must be 'sweep', 'otsu' or 'fixed', not {method!r}")
    return LatentSelection(ratios, active, order[:k], method, curve)


# ----------------------------------------------------------------------------------------------
# Capturing the latent layer
# ----------------------------------------------------------------------------------------------

def find_decision_layer(model: nn.Module, example: torch.Tensor) -> str:
    """Path of the decision layer: the last ``nn.Linear`` that runs in a forward pass.

    Its input is the "final hidden layer" of the thesis. Models that end otherwise (a 1x1-conv
    classifier) must name their decision layer explicitly.
    """
    order = modules_called(model, example, lambda _path, module, _out: isinstance(module, nn.Linear))
    if not order:
        raise ValueError(f"{type(model).__name__} runs no nn.Linear, so its decision layer cannot be found: "
                         "pass decision='path.of.module' (the layer whose input is the final latent space)")
    return order[-1]


class _LatentTap:
    """Forward pre-hook on the decision layer that keeps its (flattened) input."""

    def __init__(self, module: nn.Module):
        self.value: torch.Tensor | None = None
        self.handle = module.register_forward_pre_hook(self._hook)

    def _hook(self, _module, args):
        self.value = args[0].flatten(1)

    def remove(self) -> None:
        self.handle.remove()


def _loader(data: Dataset | DataLoader, batch_size: int) -> DataLoader:
    if isinstance(data, DataLoader):
        return data
    from ...data import make_loader

    return make_loader(data, batch_size)


@torch.no_grad()
def latent_features(model: nn.Module, data: Dataset | DataLoader, decision: str, batch_size: int = 256,
                    device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Final-latent firing vectors (n, M) and labels (n,) of ``data`` (eval mode)."""
    tap = _LatentTap(model.get_submodule(decision))
    was_training = model.training
    feats, labels = [], []
    try:
        model.eval()
        for x, y in _loader(data, batch_size):
            model(x.to(device))
            feats.append(tap.value.float().cpu())
            labels.append(torch.as_tensor(y).cpu())
    finally:
        tap.remove()
        model.train(was_training)
    if not feats:
        raise ValueError("the calibration data is empty")
    return torch.cat(feats), torch.cat(labels).long()


# ----------------------------------------------------------------------------------------------
# 3. Deconvnet tracing
# ----------------------------------------------------------------------------------------------

class _Rectified(torch.autograd.Function):
    """Forward: the activation's real output. Backward: the Zeiler-Fergus rule, ReLU of the signal."""

    @staticmethod
    def forward(ctx, x, value):
        return value.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad.clamp_min(0), None


# Rectifying activations: the deconvnet passes their reconstruction through a ReLU. (For the smooth
# ReLU relatives this is the natural extension; the thesis nets only use ReLU.)
_ACTIVATIONS = {
    F.relu, torch.relu, torch.relu_, F.relu_, torch.Tensor.relu, torch.Tensor.relu_, F.relu6, F.hardtanh,
    F.leaky_relu, F.elu, F.selu, F.celu, F.gelu, F.silu, F.hardswish, F.mish,
}
_INPLACE = {torch.relu_: torch.relu, F.relu_: F.relu, torch.Tensor.relu_: torch.Tensor.relu}


class _DeconvMode(TorchFunctionMode):
    """While active, every rectifying activation back-propagates with the deconvnet rule.

    In-place activations run out of place so the tensors autograd needs stay intact.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func in _ACTIVATIONS and args and isinstance(args[0], torch.Tensor) and args[0].requires_grad:
            func = _INPLACE.get(func, func)
            if "inplace" in kwargs:
                kwargs["inplace"] = False
            if func in (F.relu, F.relu6, F.hardtanh, F.leaky_relu, F.elu, F.selu, F.celu, F.silu, F.hardswish,
                        F.mish) and len(args) > 1 and isinstance(args[-1], bool):
                args = (*args[:-1], False)  # positional inplace flag
            with torch.no_grad():
                value = func(*args, **kwargs)
            return _Rectified.apply(args[0], value)
        return func(*args, **kwargs)


class _Tap(torch.autograd.Function):
    """Identity whose backward hands the reconstruction arriving at a module's output to ``sink``."""

    @staticmethod
    def forward(ctx, x, sink):
        ctx.sink = sink
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        ctx.sink(grad)
        return grad, None


def _layers(model: nn.Module) -> dict[str, nn.Module]:
    """Convolutions and linear layers: the modules whose channels the deconvnet scores."""
    return {name: m for name, m in model.named_modules() if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))}


def _channel_layout(t: torch.Tensor, channel_last: bool) -> torch.Tensor:
    """|t| summed over the batch, laid out (channels, positions)."""
    g = t.detach().abs().sum(0)
    return g.reshape(-1, g.shape[-1]).T if channel_last else g.reshape(g.shape[0], -1)


def deconv_utilities(model: nn.Module, data: Dataset | DataLoader, selected: torch.Tensor, decision: str,
                     at: str = "output", batch_size: int = 64, device: str | torch.device = "cpu",
                     progress: bool = False) -> dict[str, torch.Tensor]:
    """Deconvnet utilities (eq. 3.11-3.12) of the channels of every conv / linear layer.

    ``selected``: indices of the latent neurons whose response starts the trace (the rest are zeroed,
    L410). Where the reconstruction is read:

    * ``at="output"`` (default): the reconstruction of each layer's *feature map*, i.e. at the
      output of the BatchNorm that directly follows the layer (else at the layer's output). Autograd
      has already summed there what came back from every reader of the map, through every pooling
      and residual path, so maps read in many places (fan-out, residual streams) are scored
      consistently. It is the thesis's U of the next layer after unpooling and rectification.
    * ``at="input"`` (the thesis's literal reading): ``U_i``, the reconstruction of each layer's
      *input* right after its transposed convolution, one value per input channel; the decision
      layer's input is the masked latent response itself.

    Returns ``{module path: utilities}`` (one per output, resp. input, channel): the mean over images
    of |reconstruction|, maxed over space. A module that runs several times adds up its calls; a
    module no selected neuron depends on scores zeros.
    """
    if at not in ("input", "output"):
        raise ValueError(f"at must be 'output' (feature maps) or 'input' (the thesis's U_i), not {at!r}")
    layers = _layers(model)
    sums: dict[tuple[str, int], torch.Tensor] = {}
    calls: dict[str, int] = {}
    written: dict[int, tuple[torch.Tensor, tuple[str, int]]] = {}  # layer outputs a BatchNorm may read
    superseded: set[tuple[str, int]] = set()                        # layer outputs read after their BN

    def tap(key: tuple[str, int], t, channel_last: bool):
        def sink(grad):
            g = _channel_layout(grad, channel_last)
            sums[key] = g if key not in sums else sums[key] + g

        return _Tap.apply(t, sink)

    def new_key(name: str) -> tuple[str, int]:
        calls[name] = calls.get(name, 0) + 1
        return name, calls[name] - 1

    def on_input(name):
        def hook(module, args):
            if args and isinstance(args[0], torch.Tensor) and args[0].requires_grad:
                return (tap(new_key(name), args[0], isinstance(module, nn.Linear)), *args[1:])
            return None

        return hook

    def on_output(name):
        def hook(module, _args, out):
            if not isinstance(out, torch.Tensor) or not out.requires_grad:
                return None
            key = new_key(name)
            out = tap(key, out, isinstance(module, nn.Linear))
            written[id(out)] = (out, key)
            return out

        return hook

    def on_batchnorm(module, args, out):
        entry = written.pop(id(args[0]), None) if args else None
        if entry is None or entry[0] is not args[0] or not out.requires_grad:
            return None
        superseded.add(entry[1])
        return tap((*entry[1], "bn"), out, False)  # read the feature map, after the per-channel BN scale

    latent_tap = _LatentTap(model.get_submodule(decision))
    traced = {n: m for n, m in layers.items() if n != decision}
    if at == "input":
        handles = [m.register_forward_pre_hook(on_input(n)) for n, m in traced.items()]
    else:
        handles = [m.register_forward_hook(on_output(n)) for n, m in traced.items()]
        handles += [m.register_forward_hook(on_batchnorm) for m in model.modules()
                    if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    was_training = model.training
    n_images = 0
    latent_sum = None
    from tqdm.auto import tqdm

    try:
        model.eval()
        for x, _y in tqdm(_loader(data, batch_size), desc="deconv trace", unit="batch", disable=not progress,
                          leave=False):
            calls.clear()
            written.clear()
            superseded.clear()
            x = x.to(device).requires_grad_(True)  # guarantees a graph even when the weights are frozen
            with torch.enable_grad(), _DeconvMode():
                model(x)
                latent = latent_tap.value
                mask = torch.zeros(latent.shape[1], dtype=latent.dtype, device=latent.device)
                mask[selected.to(latent.device)] = 1
                signal = latent.detach() * mask  # Z_final: the latent response, non-selected neurons zeroed
                torch.autograd.grad(latent, x, grad_outputs=signal, allow_unused=True)
            latent_sum = signal.abs().sum(0) if latent_sum is None else latent_sum + signal.abs().sum(0)
            n_images += len(x)
    finally:
        latent_tap.remove()
        for h in handles:
            h.remove()
        written.clear()
        model.train(was_training)
    if n_images == 0:
        raise ValueError("the calibration data is empty")
    utilities = {}
    if at == "input":
        utilities[decision] = (latent_sum / n_images).cpu().float()
    for name, module in traced.items():
        if at == "input":
            channels = module.in_channels if hasattr(module, "in_channels") else module.in_features
        else:
            channels = module.out_channels if hasattr(module, "out_channels") else module.out_features
        u = torch.zeros(channels)
        for key, total in sums.items():
            if key[0] == name and key not in superseded:
                u += (total / n_images).amax(1).cpu()  # eq. 3.11 mean over images, eq. 3.12 max over space
        utilities[name] = u
    return utilities


# ----------------------------------------------------------------------------------------------
# 4. Threshold (eq. 3.13)
# ----------------------------------------------------------------------------------------------

def _nonzero_std(u: torch.Tensor) -> float:
    nz = u[u > 0]
    if len(nz) >= 2 and float(nz.std()) > 0:
        return float(nz.std())  # ddof = 1, as eq. 3.13
    return float(nz.mean()) if len(nz) else 0.0


def normalized_utilities(utilities: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each layer's utilities divided by the sample std of its non-zero utilities (eq. 3.13).

    ``normalized >= eta`` is then exactly the thesis's per-layer threshold ``u >= eta * std``.
    A layer with one non-zero utility is divided by that value; an all-zero layer stays zero.
    """
    out = {}
    for name, u in utilities.items():
        scale = _nonzero_std(u)
        out[name] = u / scale if scale > 0 else torch.zeros_like(u)
    return out


def threshold_keep(utilities: dict[str, torch.Tensor], eta: float, min_keep: int = 1) -> dict[str, torch.Tensor]:
    """Boolean keep-masks of eq. 3.13 (``u >= eta * std(non-zero u)``), keeping at least ``min_keep``
    channels (the highest) per layer so that no layer disappears."""
    keep = {}
    for name, z in normalized_utilities(utilities).items():
        mask = (z >= eta) & (z > 0)
        if int(mask.sum()) < min_keep:
            mask = torch.zeros_like(mask)
            mask[z.argsort(descending=True)[:min_keep]] = True
        keep[name] = mask
    return keep


# ----------------------------------------------------------------------------------------------
# From layers to the engine's channel groups
# ----------------------------------------------------------------------------------------------

_COMPUTING = ("out", "inout")


def group_utilities(graph, utilities: dict[str, torch.Tensor], combine: str = "sum",
                    at: str = "output") -> dict[str, torch.Tensor]:
    """Utility of every channel of every prunable group of the engine's channel ``graph``.

    ``utilities`` come from :func:`deconv_utilities`, read ``at`` the layers' feature maps
    (``"output"``, default) or inputs. A group is what one keep/remove decision covers; in a plain
    or concatenating net (VGG, Inception) it is one layer's filters. A residual addition couples the
    channels of every block of a stage into one group: channel c is one feature that several layers
    write and many read. With ``at="output"`` its utility adds up the reconstructions of every map
    it lives in (the group's producers); with ``at="input"`` it adds up what every reader
    reconstructs (the group's consumers: the thesis's fan-out sum, L441, L1290). A channel read at
    several positions (an FC layer after ``flatten``) takes the max over them (eq. 3.12's max over
    space). ``combine="max"`` takes the most useful producer / reader instead of the sum. A group with
    no traced producer / reader (e.g. attention heads) gets a flat score of 1.
    """
    if combine not in ("sum", "max"):
        raise ValueError(f"combine must be 'sum' or 'max', not {combine!r}")
    out = {}
    for group in graph.prunable_groups:
        slices = group.consumers if at == "input" else [s for s in group.producers if s.role in _COMPUTING]
        parts = []
        for s in slices:
            if s.module not in utilities or s.role not in ("in", *_COMPUTING):
                continue
            u = utilities[s.module]
            index = torch.arange(group.size) if s.index is None else s.index.reshape(group.size, -1)
            parts.append(u[index].reshape(group.size, -1).amax(1))
        if not parts:
            out[group.id] = torch.ones(group.size)
        elif combine == "sum":
            out[group.id] = torch.stack(parts).sum(0)
        else:
            out[group.id] = torch.stack(parts).amax(0)
    return out


# ----------------------------------------------------------------------------------------------
# Steps 1-3 together
# ----------------------------------------------------------------------------------------------

@dataclass
class LdaUtilities:
    decision: str
    selection: LatentSelection
    utilities: dict[str, torch.Tensor]      # per module path, raw (eq. 3.12)
    at: str = "output"                      # read at the layers' feature maps or inputs

    @property
    def normalized(self) -> dict[str, torch.Tensor]:
        return normalized_utilities(self.utilities)


def lda_utilities(model: nn.Module, data: Dataset | DataLoader, decision: str | None = None,
                  selection: str = "sweep", ratio_mode: str = "diagonal", tolerance: float = 1.0,
                  m_prime: int | None = None, val_data: Dataset | DataLoader | None = None,
                  trace_data: Dataset | DataLoader | None = None, at: str = "output", batch_size: int = 64,
                  device: str | torch.device = "cpu", progress: bool = False) -> LdaUtilities:
    """Latent LDA, M' selection and deconvnet tracing on ``data`` (labelled calibration images).

    ``trace_data`` (default ``data``) is what the deconvnet averages over; the thesis finds a
    class-balanced subset enough (L676-687). ``decision`` defaults to the last ``nn.Linear`` run.
    ``at``: where the reconstruction is read (see :func:`deconv_utilities`).
    """
    if decision is None:
        x0, _ = next(iter(_loader(data, 2)))
        decision = find_decision_layer(model, x0.to(device))
    x, y = latent_features(model, data, decision, batch_size=max(batch_size, 128), device=device)
    xv = yv = None
    if val_data is not None:
        xv, yv = latent_features(model, val_data, decision, batch_size=max(batch_size, 128), device=device)
    sel = select_top_neurons(x, y, method=selection, ratio_mode=ratio_mode, tolerance=tolerance, m_prime=m_prime,
                             x_val=xv, y_val=yv)
    utilities = deconv_utilities(model, trace_data if trace_data is not None else data, sel.selected, decision,
                                 at=at, batch_size=batch_size, device=device, progress=progress)
    return LdaUtilities(decision, sel, utilities, at)


# ----------------------------------------------------------------------------------------------
# The engine's criterion: edgeslim.prune(..., method="lda"), edgeslim prune --method lda
# ----------------------------------------------------------------------------------------------

from . import Criterion, register_criterion  # noqa: E402  (the engine's registry; imported last on purpose)


@register_criterion("lda")
class DeepLDA(Criterion):
    """Deep-LDA utilities (Tian 2020, ch. 3) as channel scores: latent LDA, top-M' selection and
    deconvnet tracing on the labelled calibration data, mapped onto the channel groups
    (:func:`group_utilities`) and divided by each group's std of non-zero utilities (eq. 3.13), so
    that ``score >= eta`` is the thesis's per-layer threshold.

    Options (``criterion_options``): ``decision`` (path of the decision layer; default the last
    ``nn.Linear``), ``selection`` (``"sweep"`` | ``"otsu"`` | ``"fixed"``), ``tolerance`` (accuracy
    points for the sweep, default 1), ``m_prime`` (for ``"fixed"``), ``trace_per_class`` (trace with
    that many images per class instead of all the data), ``at`` (``"output"`` | ``"input"``),
    ``combine`` (``"sum"`` | ``"max"``), ``progress``. After scoring, ``self.last`` holds the
    :class:`LdaUtilities` (the selected latent neurons, the raw utilities).
    """

    needs_data = True
    OPTIONS = ("decision", "selection", "tolerance", "m_prime", "trace_per_class", "at", "combine", "progress")

    def score(self, model, graph, data=None, **options):
        unknown = sorted(set(options) - set(self.OPTIONS))
        if unknown:
            raise ValueError(f"unknown lda option(s) {', '.join(unknown)}; known: {', '.join(self.OPTIONS)}")
        if data is None:
            raise ValueError("method 'lda' needs labelled calibration data (data=a Dataset or DataLoader; CLI: --data)")
        combine = options.pop("combine", "sum")
        per_class = options.pop("trace_per_class", None)
        if per_class:
            from ...data import calibration_subset

            options["trace_data"] = calibration_subset(data.dataset if isinstance(data, DataLoader) else data, per_class)
        device = next(model.parameters()).device
        self.last = lda_utilities(model, data, device=device, **options)
        utilities = group_utilities(graph, self.last.utilities, combine, self.last.at)
        return normalized_utilities(utilities)
