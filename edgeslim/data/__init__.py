"""Data sets (see INTERFACE.md, "Data"): ``digits``, ``cifar10:ROOT``, ``cifar100:ROOT``,
``imagefolder:ROOT``. Nothing is ever downloaded: a missing folder is an error naming the layout.

``digits`` is scikit-learn's bundled set of 1,797 real 8x8 handwritten digits (10 classes), split
deterministically (stratified, 80/20, seed 0) into 1,437 training and 360 test images, upsampled to
32x32 and repeated to 3 channels so that CIFAR-style models take it unchanged.
"""
from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset

__all__ = ["DataBundle", "TensorImages", "load_data", "make_loader", "calibration_subset"]

CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def random_crop(x: torch.Tensor, pad: int, gen: torch.Generator) -> torch.Tensor:
    """Zero-pad by ``pad`` and crop back at a random offset (the CIFAR 'pad 4 + crop' augmentation)."""
    if pad == 0:
        return x
    h, w = x.shape[-2:]
    padded = F.pad(x, (pad, pad, pad, pad))
    i, j = torch.randint(0, 2 * pad + 1, (2,), generator=gen).tolist()
    return padded[..., i:i + h, j:j + w]


def cutout(x: torch.Tensor, size: int, gen: torch.Generator) -> torch.Tensor:
    """Zero a ``size`` x ``size`` square at a random centre (DeVries & Taylor; the Raju thesis uses 18)."""
    h, w = x.shape[-2:]
    cy, cx = torch.randint(0, h, (1,), generator=gen).item(), torch.randint(0, w, (1,), generator=gen).item()
    x = x.clone()
    x[..., max(0, cy - size // 2):cy + (size + 1) // 2, max(0, cx - size // 2):cx + (size + 1) // 2] = 0
    return x


@dataclass(frozen=True)
class Augment:
    """Augmentations applied to [0, 1] images before normalisation."""

    crop_pad: int = 0
    flip: bool = False
    cutout: int = 0

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        x = random_crop(x, self.crop_pad, gen)
        if self.flip and torch.rand((), generator=gen).item() < 0.5:
            x = x.flip(-1)
        if self.cutout:
            x = cutout(x, self.cutout, gen)
        return x


class TensorImages(Dataset):
    """Images held in memory as a uint8/float tensor (N, C, H, W) in [0, 1], with labels.

    Augmentation is done in torch per sample (no PIL); each worker/sample draws from its own
    generator seeded from (seed, epoch, index) so runs are reproducible.
    """

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, mean: Sequence[float], std: Sequence[float],
                 augment: Augment | None = None, seed: int = 0):
        self.images = images
        self.targets = targets.long()
        self.mean = torch.tensor(mean).view(-1, 1, 1)
        self.std = torch.tensor(std).view(-1, 1, 1)
        self.augment = augment
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.targets)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def plain(self) -> "TensorImages":
        """The same images without augmentation (for evaluation and calibration)."""
        return TensorImages(self.images, self.targets, self.mean.flatten().tolist(), self.std.flatten().tolist())

    def __getitem__(self, i: int):
        x = self.images[i]
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x
        if self.augment is not None:
            gen = torch.Generator().manual_seed(hash((self.seed, self.epoch, int(i))) & 0x7FFFFFFF)
            x = self.augment(x, gen)
        return (x - self.mean) / self.std, self.targets[i]


@dataclass
class DataBundle:
    name: str
    train: Dataset        # with the training augmentations
    train_plain: Dataset  # the training split without augmentation (calibration, scoring)
    test: Dataset
    num_classes: int
    input_shape: tuple[int, int, int]


def _digits(image_size: int = 32) -> DataBundle:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (1797, 1, 8, 8) in [0, 1]
    images = F.interpolate(images, size=(image_size, image_size), mode="bilinear", align_corners=False)
    images = images.clamp(0, 1).repeat(1, 3, 1, 1)
    targets = torch.tensor(digits.target)
    idx_train, idx_test = train_test_split(np.arange(len(targets)), test_size=0.2, random_state=0,
                                           stratify=digits.target)
    mean = images[idx_train].mean(dim=(0, 2, 3)).tolist()
    std = images[idx_train].std(dim=(0, 2, 3)).tolist()
    # No flips: a mirrored digit is a different symbol. Small shifts are label-preserving.
    aug = Augment(crop_pad=image_size // 16)
    train = TensorImages(images[idx_train], targets[idx_train], mean, std, aug)
    test = TensorImages(images[idx_test], targets[idx_test], mean, std)
    return DataBundle("digits", train, train.plain(), test, 10, (3, image_size, image_size))


def _unpickle(path: Path) -> dict:
    with open(path, "rb") as f:
        return pickle.load(f, encoding="latin1")


def _cifar(root: str, classes: int, augment: str) -> DataBundle:
    folder_name, files = (("cifar-10-batches-py", ([f"data_batch_{i}" for i in range(1, 6)], ["test_batch"]))
                          if classes == 10 else ("cifar-100-python", (["train"], ["test"])))
    base = Path(root)
    if (base / folder_name).is_dir():
        base = base / folder_name
    missing = [f for f in files[0] + files[1] if not (base / f).is_file()]
    if missing:
        raise FileNotFoundError(
            f"CIFAR-{classes} not found under {root!r} (missing {', '.join(missing)}). Expected the python "
            f"version of the data set: ROOT/{folder_name}/{{{', '.join(files[0] + files[1])}}} "
            f"(cifar-{classes}-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html, unpacked). "
            "edgeslim never downloads data."
        )
    key = "labels" if classes == 10 else "fine_labels"

    def read(names):
        parts = [_unpickle(base / n) for n in names]
        x = np.concatenate([p["data"] for p in parts]).reshape(-1, 3, 32, 32)
        y = np.concatenate([p[key] for p in parts])
        return torch.from_numpy(x), torch.from_numpy(y)

    (xtr, ytr), (xte, yte) = read(files[0]), read(files[1])
    mean, std = (CIFAR10_MEAN, CIFAR10_STD) if classes == 10 else (CIFAR100_MEAN, CIFAR100_STD)
    aug = {"standard": Augment(4, True), "cutout": Augment(4, True, 18), "none": None}[augment]
    train = TensorImages(xtr, ytr, mean, std, aug)
    return DataBundle(f"cifar{classes}", train, train.plain(), TensorImages(xte, yte, mean, std), classes, (3, 32, 32))


def _imagefolder(root: str, image_size: int, augment: str) -> DataBundle:
    import torchvision.transforms as T
    from torchvision.datasets import ImageFolder

    base = Path(root)
    if not (base / "train").is_dir() or not (base / "val").is_dir():
        raise FileNotFoundError(
            f"image folder {root!r} must contain train/ and val/, each with one sub-folder per class "
            "(ROOT/train/CLASS/*.jpg, ROOT/val/CLASS/*.jpg), as ImageNet is usually laid out"
        )
    norm = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    resize = int(round(image_size * 256 / 224))
    test_tf = T.Compose([T.Resize(resize), T.CenterCrop(image_size), T.ToTensor(), norm])
    train_tf = test_tf if augment == "none" else T.Compose(
        [T.RandomResizedCrop(image_size), T.RandomHorizontalFlip(), T.ToTensor(), norm])
    train = ImageFolder(str(base / "train"), train_tf)
    plain = ImageFolder(str(base / "train"), test_tf)
    test = ImageFolder(str(base / "val"), test_tf)
    return DataBundle("imagefolder", train, plain, test, len(train.classes), (3, image_size, image_size))


def load_data(spec: str, image_size: int | None = None, augment: str = "standard") -> DataBundle:
    """Open a data set by its spelling. ``augment``: ``standard`` | ``cutout`` | ``none``."""
    if augment not in ("standard", "cutout", "none"):
        raise ValueError(f"augment must be standard, cutout or none, not {augment!r}")
    kind, _, root = spec.partition(":")
    if kind == "digits":
        bundle = _digits(image_size or 32)
        if augment == "none":
            bundle.train = bundle.train_plain
        return bundle
    if kind in ("cifar10", "cifar100"):
        if not root:
            raise ValueError(f"{kind} needs a folder: {kind}:ROOT")
        return _cifar(root, 10 if kind == "cifar10" else 100, augment)
    if kind == "imagefolder":
        if not root:
            raise ValueError("imagefolder needs a folder: imagefolder:ROOT (with train/ and val/ inside)")
        return _imagefolder(root, image_size or 224, augment)
    raise ValueError(f"unknown data {spec!r}: use digits, cifar10:ROOT, cifar100:ROOT or imagefolder:ROOT")


def targets_of(dataset: Dataset) -> torch.Tensor:
    """Labels of a data set (or a Subset of one) without loading images."""
    if isinstance(dataset, Subset):
        return targets_of(dataset.dataset)[torch.as_tensor(dataset.indices)]
    return torch.as_tensor(dataset.targets)


def calibration_subset(dataset: Dataset, per_class: int, seed: int = 0) -> Subset:
    """``per_class`` samples of every class (fewer where a class is smaller), drawn without replacement."""
    targets = targets_of(dataset)
    gen = torch.Generator().manual_seed(seed)
    chosen = []
    for c in targets.unique().tolist():
        idx = (targets == c).nonzero().flatten()
        chosen.append(idx[torch.randperm(len(idx), generator=gen)[:per_class]])
    return Subset(dataset, torch.cat(chosen).sort().values.tolist())


def make_loader(dataset: Dataset, batch_size: int, shuffle: bool = False, seed: int = 0, num_workers: int = 0,
                sampler=None, drop_last: bool = False, collate_fn: Callable | None = None) -> DataLoader:
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle if sampler is None else False,
                      sampler=sampler, generator=gen, num_workers=num_workers, drop_last=drop_last,
                      collate_fn=collate_fn, persistent_workers=num_workers > 0)
