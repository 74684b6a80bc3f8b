"""The slimming engine: trace a model into coupled channel groups, score them, plan, cut, prove.

    graph = edgeslim.trace(model, example)              # ChannelGraph; raises UnsupportedOpError
    result = edgeslim.prune(model, example, method="l1", target={"macs": 0.5})
    result.model                                         # a new, physically smaller model
    masked_equivalent(model, result.plan)                # computes exactly what result.model computes
    apply_plan(build_model(...), result.plan.to_dict())  # rebuilds the slim model from JSON
"""
from __future__ import annotations

from .graph import ChannelGraph, ChannelGroup, ParamSlice, UnsupportedOpError
from .trace import trace
from .rules import ModuleRule, register_module_rule, register_op_rule
from . import modules as _modules  # noqa: F401  (registers the built-in module rules)
from .modules import SlimMultiheadAttention
from .plan import PruningPlan, compose, make_plan
from .surgery import apply_plan, equivalence_error, masked_equivalent
from .criteria import Criterion, activation_sites, available_criteria, get_criterion, register_criterion
from .targets import parse_target, register_cost_model
from .prune import PruneResult, prune

__all__ = [
    "trace", "prune", "PruneResult", "ChannelGraph", "ChannelGroup", "ParamSlice", "UnsupportedOpError",
    "PruningPlan", "make_plan", "compose", "apply_plan", "masked_equivalent", "equivalence_error",
    "Criterion", "register_criterion", "get_criterion", "available_criteria", "activation_sites",
    "register_op_rule", "register_module_rule", "ModuleRule", "register_cost_model", "parse_target",
    "SlimMultiheadAttention",
]
