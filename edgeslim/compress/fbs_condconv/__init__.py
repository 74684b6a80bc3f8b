"""FBS-pruned CondConv (Raju 2022, chapter 3; specs/seed-raju.md section A and E).

Dynamic channel pruning (Feature Boosting and Suppression) on conditionally parameterised
convolutions: per example, a saliency predictor keeps the top ceil(d C) output channels of every layer
(boosted by their saliency, the rest exactly zero) and a router mixes E expert kernels.

* ``FBSCondConv``: the layer (conv with E experts -> BN -> gate -> activation); ``execution(model,
  "skip")`` switches inference to the per-example gather path that computes only surviving slices.
* ``to_fbs_condconv``: converts the conv(-BN)(-act) chains of any torch.fx-traceable CNN;
  ``to_static``: back to plain conv-BN-act (for usage-based slimming).
* zoo models ``zoo:mcifarnet-{scp,fbs,condconv,fbs-condconv,scp-condconv}`` (see ``zoo``).
* ``fbs_cost``: exact and thesis-convention MACs; ``thesis_table_macs`` reproduces Table 3.1.
* ``SaliencyLasso``, ``THESIS_RECIPE``, ``DIGITS_RECIPE``, ``train_fbs``: the training recipe.
* ``channel_usage`` / ``plot_usage``: the under-utilisation diagnostic of section 3.4.3;
  ``slim_by_usage``: removes never (or rarely) used channels through the slimming engine.
"""
from .convert import ZERO_PRESERVING_ACTIVATIONS, to_fbs_condconv, to_static
from .counting import FBSCost, fbs_cost, thesis_table_macs
from .layer import FBSCondConv, execution, fbs_layers, gate_width
from . import zoo  # noqa: F401  (registers the zoo models)
from .training import DIGITS_RECIPE, THESIS_RECIPE, FBSRecipe, SaliencyLasso, train_fbs
from .usage import LayerUsage, UsageReport, UsageSlimResult, channel_usage, plot_usage, slim_by_usage
