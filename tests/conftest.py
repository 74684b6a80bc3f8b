import pytest
import torch


@pytest.fixture(scope="session")
def digits():
    from edgeslim.data import load_data

    return load_data("digits")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread: on a small shared host, two threads fighting over busy cores make small
    forward passes many times slower. Test modules opt in with
    ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``; module scope, so that the module's
    own fixtures (models trained once per module) run with one thread too."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
