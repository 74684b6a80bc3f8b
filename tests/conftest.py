import pytest
import torch


@pytest.fixture(scope="session")
def digits():
    from edgeslim.data import load_data

    return load_data("digits")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
