"""Data-parallel training under ``torchrun`` (single node or multi-node).

``torchrun`` starts one process per device and tells each who it is through environment
variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``). The same
command therefore runs unchanged with one process or many: ``init_distributed`` reads those
variables, joins the process group (NCCL on CUDA, gloo on CPU) and returns a ``DistContext``
that the training loop uses for sharding, reductions and rank-0-only writes. Without those
variables (a plain ``python`` / ``edgeslim`` call) the context is a single process and every
collective below is a no-op.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.distributed as tdist

__all__ = ["DistContext", "init_distributed", "current_context", "distributed_session", "resolve_device"]


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes files, prints results and draws progress bars."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.is_distributed:
            tdist.barrier()

    def all_reduce_sum(self, values: list[float]) -> list[float]:
        """Sum a few numbers over all ranks (float64, so that counts stay exact)."""
        if not self.is_distributed:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self._collective_device)
        tdist.all_reduce(t)
        return t.tolist()

    def all_gather_object(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order (small Python objects only)."""
        if not self.is_distributed:
            return [obj]
        out: list[Any] = [None] * self.world_size
        tdist.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        """Rank ``src``'s ``obj`` on every rank (e.g. a data subset chosen on rank 0)."""
        if not self.is_distributed:
            return obj
        box = [obj]
        tdist.broadcast_object_list(box, src=src)
        return box[0]

    def broadcast_tensors_(self, tensors: list[torch.Tensor], src: int = 0) -> None:
        """Overwrite ``tensors`` in place with rank ``src``'s values."""
        if self.is_distributed:
            for t in tensors:
                tdist.broadcast(t, src=src)

    @property
    def _collective_device(self) -> torch.device:
        # NCCL only moves CUDA tensors; gloo moves CPU tensors.
        return self.device if self.backend == "nccl" else torch.device("cpu")


def resolve_device(device: str | torch.device | None = None, local_rank: int = 0) -> torch.device:
    """``auto``/None -> this process's GPU when CUDA is available, else the CPU."""
    if device is None or str(device) == "auto":
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("--train-device cuda was asked for, but this torch build sees no CUDA device; "
                               "use --train-device cpu")
        if device.index is None:
            device = torch.device("cuda", local_rank)
    return device


def _launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_distributed(device: str | torch.device | None = None) -> DistContext:
    """Join the process group that ``torchrun`` describes in the environment (or stay single-process)."""
    if tdist.is_available() and tdist.is_initialized():
        return current_context()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if not _launched_by_torchrun():
        return DistContext(device=dev)
    missing = [v for v in ("RANK", "MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
    if missing:
        raise RuntimeError(f"WORLD_SIZE > 1 but {', '.join(missing)} not set: start the command with torchrun, "
                           "e.g. torchrun --nproc_per_node=2 -m edgeslim finetune ...")
    if not tdist.is_available():
        raise RuntimeError("this torch build has no torch.distributed; multi-process training is not possible")
    backend = "nccl" if dev.type == "cuda" else "gloo"
    # DistributedDataParallel imports torch._dynamo on construction. Imported while a process group
    # exists, it keeps that group alive past destroy_process_group (torch 2.14: the gloo worker
    # threads still run at interpreter exit, and one rank in a few dozen runs aborted there with
    # "terminate called without an active exception"). Imported before, it holds no group.
    import torch._dynamo  # noqa: F401
    if dev.type == "cuda":
        torch.cuda.set_device(dev)  # NCCL and all_gather_object use the current device
    tdist.init_process_group(backend=backend, init_method="env://", device_id=dev if dev.type == "cuda" else None)
    return DistContext(tdist.get_rank(), tdist.get_world_size(), local_rank, dev, backend)


def current_context() -> DistContext:
    """The context of an already initialised process group, or a single CPU/GPU process."""
    if not (tdist.is_available() and tdist.is_initialized()):
        return DistContext(device=resolve_device(None))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    backend = tdist.get_backend()
    dev = torch.device("cuda", local_rank) if backend == "nccl" else torch.device("cpu")
    return DistContext(tdist.get_rank(), tdist.get_world_size(), local_rank, dev, backend)


@contextlib.contextmanager
def distributed_session(device: str | torch.device | None = None) -> Iterator[DistContext]:
    """``init_distributed`` for the duration of a command; leaves the group it created."""
    already = tdist.is_available() and tdist.is_initialized()
    ctx = init_distributed(device)
    leave = ctx.is_distributed and not already
    try:
        yield ctx
    except BaseException:
        if leave:  # no barrier: the other ranks may never reach it
            tdist.destroy_process_group()
        raise
    if leave:
        ctx.barrier()  # nobody tears down its end of the group while another rank still talks to it
        tdist.destroy_process_group()
