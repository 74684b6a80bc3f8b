import pickle

import numpy as np
import pytest
import torch

from edgeslim.data import calibration_subset, load_data


def test_digits_split_is_deterministic_and_cifar_shaped(digits):
    assert (len(digits.train), len(digits.test)) == (1437, 360)
    again = load_data("digits")
    assert torch.equal(digits.test.targets, again.test.targets)
    x, y = digits.test[0]
    assert x.shape == (3, 32, 32) and 0 <= int(y) < 10
    assert digits.num_classes == 10 and digits.input_shape == (3, 32, 32)


def test_digits_augmentation_is_seeded(digits):
    a, _ = digits.train[5]
    b, _ = digits.train[5]
    assert torch.equal(a, b)  # same (seed, epoch, index) -> same crop
    plain, _ = digits.train_plain[5]
    assert plain.shape == a.shape


def test_calibration_subset_is_balanced(digits):
    sub = calibration_subset(digits.train_plain, per_class=7)
    labels = torch.stack([digits.train_plain[i][1] for i in sub.indices])
    assert torch.bincount(labels).tolist() == [7] * 10


def test_missing_cifar_names_the_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py"):
        load_data(f"cifar10:{tmp_path}")
    with pytest.raises(FileNotFoundError, match="train/ and val/"):
        load_data(f"imagefolder:{tmp_path}")


def test_cifar10_reader(tmp_path):
    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()
    rng = np.random.default_rng(0)
    for name, n in [*[(f"data_batch_{i}", 4) for i in range(1, 6)], ("test_batch", 3)]:
        with open(base / name, "wb") as f:
            pickle.dump({"data": rng.integers(0, 255, (n, 3072), dtype=np.uint8), "labels": list(range(n))}, f)
    bundle = load_data(f"cifar10:{tmp_path}")
    assert (len(bundle.train), len(bundle.test), bundle.num_classes) == (20, 3, 10)
    x, _ = bundle.train[0]
    assert x.shape == (3, 32, 32)
