"""The M-CifarNet family of the thesis's chapter 3 as zoo models (specs/seed-raju.md A.5, A.7).

| spelling                      | model                                                  | options                          |
|-------------------------------|--------------------------------------------------------|----------------------------------|
| ``zoo:mcifarnet``             | dense baseline (defined in edgeslim.models)            | ``width``                        |
| ``zoo:mcifarnet-scp``         | static channel pruning: every conv ceil(width * C) wide | ``width`` (default 0.5)          |
| ``zoo:mcifarnet-fbs``         | FBS on standard convolutions                           | ``density`` (0.5), ``width`` (1) |
| ``zoo:mcifarnet-condconv``    | CondConv, no gating                                    | ``experts`` (4), ``width`` (1)   |
| ``zoo:mcifarnet-fbs-condconv``| FBS-pruned CondConv                                    | ``density``, ``experts``, ``width`` |
| ``zoo:mcifarnet-scp-condconv``| SCP widths with CondConv layers                        | ``width`` (0.5), ``experts`` (4) |

All FBS variants also take ``predictor_activation`` ("relu", the FBS default, or "swish", the thesis's
sigma_n). Every model is freshly initialised (He init, independent experts) for training from scratch.
"""
from __future__ import annotations

from torch import nn

from ...models import MCifarNet, register_zoo
from .convert import to_fbs_condconv

__all__ = ["mcifarnet_dynamic"]


def mcifarnet_dynamic(num_classes: int = 10, width: float = 1.0, density: float | None = None, experts: int = 1,
                      predictor_activation: str = "relu") -> nn.Module:
    """M-CifarNet with every conv-BN-swish as an FBS-CondConv block (all 8 layers, as in the thesis)."""
    return to_fbs_condconv(MCifarNet(num_classes, width=width), density=density, experts=experts,
                           predictor_activation=predictor_activation)


@register_zoo("mcifarnet-scp")
def _scp(num_classes: int = 10, width: float = 0.5) -> nn.Module:
    return MCifarNet(num_classes, width=width)


@register_zoo("mcifarnet-fbs")
def _fbs(num_classes: int = 10, density: float = 0.5, width: float = 1.0, predictor_activation: str = "relu"):
    return mcifarnet_dynamic(num_classes, width, density, 1, predictor_activation)


@register_zoo("mcifarnet-condconv")
def _condconv(num_classes: int = 10, experts: int = 4, width: float = 1.0) -> nn.Module:
    return mcifarnet_dynamic(num_classes, width, None, experts)


@register_zoo("mcifarnet-fbs-condconv")
def _fbs_condconv(num_classes: int = 10, density: float = 0.5, experts: int = 4, width: float = 1.0,
                  predictor_activation: str = "relu") -> nn.Module:
    return mcifarnet_dynamic(num_classes, width, density, experts, predictor_activation)


@register_zoo("mcifarnet-scp-condconv")
def _scp_condconv(num_classes: int = 10, width: float = 0.5, experts: int = 4) -> nn.Module:
    return mcifarnet_dynamic(num_classes, width, None, experts)
