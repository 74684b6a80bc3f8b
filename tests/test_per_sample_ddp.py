"""Under torch.distributed (2 CPU ranks, gloo) every rank scores its share and all ranks select the same subset."""
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import Subset

from edgeslim.data import load_data
from edgeslim.models import build_model
from edgeslim.training.caper import Caper
from edgeslim.training.data_pruning import DynamicDataPruning


def _selections(plain):
    torch.manual_seed(0)
    model = build_model("zoo:mcifarnet", num_classes=10, width=0.125)
    pruning = DynamicDataPruning("ucb", prune=0.6, score_set=plain)
    pruning.attach(plain)
    caper = Caper(remove=7, score_set=plain)
    return {"ucb": pruning.select(model, 0), "ema": pruning.ema, "caper": caper.select(model),
            "xi": caper.instability_of(model)}


def _rank(rank, world, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        plain = Subset(load_data("digits").train_plain, range(101))  # not divisible by the world size
        torch.save(_selections(plain), os.path.join(out, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two spawned interpreters: about 10 s on a quiet machine, minutes on a busy one
def test_ranks_agree_with_a_single_process(digits, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_rank, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    alone = _selections(Subset(digits.train_plain, range(101)))
    for key in ("ucb", "caper"):
        assert torch.equal(ranks[0][key], ranks[1][key]) and torch.equal(ranks[0][key], alone[key])
    for key in ("ema", "xi"):
        assert torch.allclose(ranks[0][key], alone[key], atol=1e-5) and torch.equal(ranks[0][key], ranks[1][key])
