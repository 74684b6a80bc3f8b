"""Named training recipes: the theses' published setups, and a short one for digits.

``--recipe NAME`` fills every training option from the recipe; flags given on the command line
override single options. Each recipe cites the table / lines of the thesis it comes from (see
``/shared/specs``) and lists, in ``notes``, every value the thesis does not give and that
edgeslim had to choose. ``targets`` holds the thesis's own numbers for the model that recipe
produces, for the "ours vs thesis" tables printed by the reproduction scripts in ``benchmarks/``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .loop import TrainConfig

__all__ = ["Recipe", "RECIPES", "get_recipe", "register_recipe"]


@dataclass(frozen=True)
class Recipe:
    name: str
    summary: str
    source: str                       # where the numbers come from
    options: dict[str, Any]           # TrainConfig fields
    augment: str = "standard"         # load_data(augment=...): standard | cutout | none
    data: str = ""                    # the data set the thesis used
    model: str = ""                   # the model spelling closest to the thesis's model
    notes: tuple[str, ...] = ()       # values not given by the thesis, deviations, doubts
    targets: dict[str, float] = field(default_factory=dict)  # thesis numbers, e.g. {"top1": 93.98}

    def config(self, **overrides: Any) -> TrainConfig:
        """The recipe as a TrainConfig, with ``overrides`` (None values are ignored)."""
        options = dict(self.options)
        options.update({k: v for k, v in overrides.items() if v is not None})
        return TrainConfig.from_dict(options)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "summary": self.summary, "source": self.source, "options": self.options,
                "augment": self.augment, "data": self.data, "model": self.model, "notes": list(self.notes),
                "targets": self.targets}


RECIPES: dict[str, Recipe] = {}


def register_recipe(recipe: Recipe) -> Recipe:
    TrainConfig.from_dict(recipe.options).validate()  # a typo in a recipe fails at import, not in a run
    RECIPES[recipe.name] = recipe
    return recipe


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; recipes: {', '.join(sorted(RECIPES))}")
    return RECIPES[name]


def _sgd_steps(epochs: int, batch: int, lr: float, milestones: tuple[int, ...], weight_decay: float, gamma: float,
               **extra: Any) -> dict[str, Any]:
    return {"epochs": epochs, "batch_size": batch, "lr": lr, "optimizer": "sgd", "momentum": 0.9,
            "weight_decay": weight_decay, "schedule": "step", "milestones": milestones, "gamma": gamma, **extra}


_MOMENTUM = "momentum 0.9 (from the MINT code, specs/seed-ganesh.md 1.6 [code])"
_BEST = "the thesis reports the best test accuracy over epochs: compare with `best_accuracy`"
_RN50_CROP = ("the thesis trains on random 224 crops + flip; edgeslim's imagefolder training transform is "
              "RandomResizedCrop(224) + flip")

# --- digits: the embedded data set (seconds on a CPU) ---------------------------------------------
register_recipe(Recipe(
    "digits", "short recovery fine-tune on the embedded digits data (a few seconds per epoch on a CPU)",
    "edgeslim default, tuned on digits (benchmarks/finetune_kd.py)",
    {"epochs": 6, "batch_size": 64, "lr": 0.02, "optimizer": "sgd", "momentum": 0.9, "weight_decay": 5e-4,
     "schedule": "cosine"},
    data="digits", model="zoo:resnet20"))

# --- MINT (Ganesh thesis ch. 3): training the dense models, Table 3.1 (T L601-609) ----------------------
register_recipe(Recipe(
    "mint-cifar10-vgg16-train", "train the dense CIFAR-10 VGG16 that MINT prunes",
    "Ganesh thesis Table 3.1 (T L601-609); specs/seed-ganesh.md 1.6",
    _sgd_steps(300, 128, 0.1, (90, 180, 260), 5e-4, 0.2), data="cifar10", model="zoo:vgg16",
    notes=(_MOMENTUM, _BEST), targets={"top1": 93.98}))
register_recipe(Recipe(
    "mint-cifar10-resnet56-train", "train the dense CIFAR-10 ResNet-56 that MINT prunes",
    "Ganesh thesis Table 3.1 (T L601-609); specs/seed-ganesh.md 1.6",
    _sgd_steps(300, 128, 0.01, (150, 225), 2e-4, 0.1), data="cifar10", model="zoo:resnet56",
    notes=(_MOMENTUM, _BEST), targets={"top1": 92.55}))
# --- MINT retraining after pruning, Tables 3.2 / 3.3 (T L612-631) -------------------------------------------
register_recipe(Recipe(
    "mint-cifar10-vgg16", "retrain a MINT-pruned CIFAR-10 VGG16",
    "Ganesh thesis Table 3.2 (T L612-620); specs/seed-ganesh.md 1.6",
    _sgd_steps(300, 128, 0.1, (90, 180, 260), 5e-4, 0.2), data="cifar10", model="zoo:vgg16",
    notes=(_MOMENTUM, _BEST), targets={"top1": 93.43, "params_pruned_pct": 83.46}))
register_recipe(Recipe(
    "mint-cifar10-resnet56", "retrain a MINT-pruned CIFAR-10 ResNet-56",
    "Ganesh thesis Table 3.3 (T L623-631); specs/seed-ganesh.md 1.6",
    _sgd_steps(300, 128, 0.1, (90, 180, 260), 2e-4, 0.1), data="cifar10", model="zoo:resnet56",
    notes=(_MOMENTUM, _BEST), targets={"top1": 93.02, "params_pruned_pct": 57.01}))
register_recipe(Recipe(
    "mint-imagenet-resnet50", "retrain a MINT-pruned ImageNet ResNet-50",
    "Ganesh thesis Table 3.3 (T L623-631); specs/seed-ganesh.md 1.6",
    _sgd_steps(130, 64, 0.1, (30, 60, 90, 100), 1e-4, 0.1), data="imagefolder", model="torchvision:resnet50",
    notes=(_MOMENTUM, _BEST, _RN50_CROP, "about one GPU-week in the thesis (T L642): run it under torchrun"),
    targets={"top1": 71.05, "params_pruned_pct": 49.62}))

# --- SNACS (Ganesh thesis ch. 4): dense training Table 4.1 (T L937-945) -----------------------------------
register_recipe(Recipe(
    "snacs-cifar10-vgg16-train", "train the dense CIFAR-10 VGG16 that SNACS prunes",
    "Ganesh thesis Table 4.1 (T L937-945); specs/seed-ganesh.md 2.8",
    _sgd_steps(300, 128, 0.1, (90, 180, 260), 5e-4, 0.2), data="cifar10", model="zoo:vgg16",
    notes=(_MOMENTUM, _BEST), targets={"top1": 93.98}))
register_recipe(Recipe(
    "snacs-cifar10-resnet56-train", "train the dense CIFAR-10 ResNet-56 that SNACS prunes",
    "Ganesh thesis Table 4.1 (T L937-945); specs/seed-ganesh.md 2.8",
    _sgd_steps(300, 128, 0.01, (150, 225), 2e-4, 0.1), data="cifar10", model="zoo:resnet56",
    notes=(_MOMENTUM, _BEST), targets={"top1": 92.55}))
register_recipe(Recipe(
    "snacs-cifar10-mobilenetv2-train", "train the dense CIFAR-10 MobileNetV2 that SNACS prunes",
    "Ganesh thesis Table 4.1 (T L937-945); specs/seed-ganesh.md 2.8",
    _sgd_steps(350, 128, 0.1, (150, 250), 4e-5, 0.1), data="cifar10", model="torchvision:mobilenet_v2",
    notes=(_MOMENTUM, _BEST, "the thesis's CIFAR MobileNetV2 variant is not specified; torchvision's at 32x32 "
           "downsamples 32x and is not the same network"), targets={"top1": 93.66}))
# --- SNACS retraining after pruning, Tables 4.2 / 4.3 (T L948-977) -------------------------------------------
_LS = ("label smoothing as stated by the thesis, read with the Szegedy/PyTorch convention it cites (T L1276): "
       "eps spread uniformly over the classes")
register_recipe(Recipe(
    "snacs-cifar10-vgg16", "retrain a SNACS-pruned CIFAR-10 VGG16",
    "Ganesh thesis Table 4.2 (T L948-957); specs/seed-ganesh.md 2.8",
    _sgd_steps(300, 128, 0.1, (90, 180, 260), 5e-4, 0.1, label_smoothing=0.35), data="cifar10",
    model="zoo:vgg16", notes=(_MOMENTUM, _BEST, _LS),
    targets={"top1": 91.06, "params_pruned_pct": 96.16, "flops_reduced_pct": 67.85}))
register_recipe(Recipe(
    "snacs-cifar10-resnet56", "retrain a SNACS-pruned CIFAR-10 ResNet-56",
    "Ganesh thesis Table 4.2 (T L948-957); specs/seed-ganesh.md 2.8",
    _sgd_steps(300, 128, 0.1, (90, 180, 260), 5e-4, 0.2, label_smoothing=0.15), data="cifar10",
    model="zoo:resnet56", notes=(_MOMENTUM, _BEST, _LS),
    targets={"top1": 93.38, "params_pruned_pct": 68.59, "flops_reduced_pct": 36.89}))
register_recipe(Recipe(
    "snacs-cifar10-mobilenetv2", "retrain a SNACS-pruned CIFAR-10 MobileNetV2",
    "Ganesh thesis Table 4.3 (T L968-977); specs/seed-ganesh.md 2.8",
    _sgd_steps(350, 128, 0.1, (150, 250), 4e-5, 0.1, label_smoothing=0.7), data="cifar10",
    model="torchvision:mobilenet_v2", notes=(_MOMENTUM, _BEST, _LS),
    targets={"top1": 94.28, "params_pruned_pct": 55.00, "flops_reduced_pct": 28.52}))
register_recipe(Recipe(
    "snacs-imagenet-resnet50", "retrain a SNACS-pruned ImageNet ResNet-50 (tau = 0.75 row)",
    "Ganesh thesis Table 4.2 (T L948-957); specs/seed-ganesh.md 2.8",
    _sgd_steps(100, 64, 0.1, (30, 60, 90), 1e-4, 0.1, label_smoothing=0.8), data="imagefolder",
    model="torchvision:resnet50",
    notes=(_MOMENTUM, _BEST, _RN50_CROP,
           "the thesis gives weight decay '0.0001/0.00003' without saying which run used which: 1e-4 here",
           "the thesis gives label smoothing 0.8, 0.85, 0.8, 0.8 (one per tau = 0.60 ... 0.75): 0.8 here. Under "
           "the Szegedy convention this is extreme smoothing; the thesis may mean the true-class confidence "
           "(LILAC's convention, ch. 5). Verify before relying on it; override with --label-smoothing"),
    targets={"top1": 72.60, "params_pruned_pct": 68.93, "flops_reduced_pct": 51.52}))

# --- FBS-pruned CondConv (Raju thesis ch. 3, A.4, L661-683) ----------------------------------------------------
register_recipe(Recipe(
    "fbs-cifar10-mcifarnet", "train M-CifarNet (dense, SCP or FBS-CondConv) on CIFAR-10",
    "Raju thesis L661, L669-671, L683; specs/seed-raju.md A.4",
    {"epochs": 480, "batch_size": 256, "lr": 0.01, "optimizer": "rmsprop", "momentum": 0.9, "weight_decay": 1e-4,
     "schedule": "cosine", "grad_clip": 5.0},
    augment="cutout", data="cifar10", model="zoo:mcifarnet",
    notes=("RMSProp momentum, rho and eps are not given: torch defaults (alpha 0.99, eps 1e-8) and momentum 0.9",
           "gradient clipping is used but its norm is not given: 5.0 here",
           "L2 weight decay 1e-4 is applied as the optimiser's weight_decay",
           "data whitening is not reproduced: per-channel mean/std normalisation instead",
           "SGDR warm restarts are not stated: a single cosine decay",
           "the FBS gate Lasso term (lambda 1e-8) belongs to the FBS-CondConv model's own loss"),
    targets={"top1": 94.84}))

# --- Raju thesis ch. 4: dynamic data pruning base schedule (B.6, L846-848) -------------------------------------
register_recipe(Recipe(
    "datapruning-cifar10-resnet18", "the base schedule of the dynamic data-pruning experiments",
    "Raju thesis L846-848, L869; specs/seed-raju.md B.6",
    _sgd_steps(200, 128, 0.1, (60, 120, 160), 5e-4, 0.2, nesterov=True), data="cifar10",
    model="CIFAR ResNet-18 (3x3 stem, no max-pool)",
    notes=("milestones count epochs over the selected subset (an epoch is one pass over the kept samples)",)))

# --- Tian thesis (deep-LDA pruning): no recipe published --------------------------------------------------------
register_recipe(Recipe(
    "tian-lda", "retraining between deep-LDA pruning iterations (NOT from the thesis)",
    "Tian thesis: 'same recipe as pre-training' (T L361); no learning rate, epochs, batch size or schedule is "
    "given anywhere (specs/seed-tian.md 1.7)",
    {"epochs": 30, "batch_size": 128, "lr": 0.01, "optimizer": "sgd", "momentum": 0.9, "weight_decay": 5e-4,
     "schedule": "cosine"},
    notes=("every value here is an edgeslim default: the thesis publishes none",
           "the thesis only says a few epochs bring ImageNet within 5 % of the trained model (T L1075)")))
