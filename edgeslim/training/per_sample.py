"""Per-sample bookkeeping shared by the training-efficiency methods (data pruning, CAPER, LILAC, PatchDrop).

* ``IndexedDataset`` makes a data set yield ``(x, y, index)``; ``fit`` then exposes the batch's
  sample indices as ``state.batch_indices``, which is how a callback ties a batch to per-sample state.
* ``per_sample_pass`` runs a model over a whole data set once (eval mode, no gradients) and returns
  one row of results per sample. Under ``torch.distributed`` every rank scores its share of the
  samples and the results are all-gathered, so every rank ends with the same full table.
* ``same_on_all_ranks`` makes a decision (a subset, a mask) identical on every rank by taking rank
  0's: selections must agree or DDP ranks would train on different data.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset, Subset

from ..data import make_loader, targets_of

__all__ = ["IndexedDataset", "LabelledView", "EpochSubset", "Resumable", "unwrap", "yields_indices", "with_indices",
           "plain_view", "per_sample_pass", "same_on_all_ranks", "max_on_all_ranks", "rank_and_world"]


class IndexedDataset(Dataset):
    """``dataset[i]`` as ``(x, y, i)``; a ``Subset`` of it keeps yielding the indices of this data set."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        x, y = self.dataset[i][:2]
        return x, y, i

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    @property
    def targets(self) -> torch.Tensor:
        return targets_of(self.dataset)


class LabelledView(Dataset):
    """Samples ``indices`` of ``dataset`` with the labels ``labels`` (one per entry), yielding ``(x, label, index)``.

    Entries may repeat (resampling). Used for relabelled training sets such as LILAC's pseudo-label.
    """

    def __init__(self, dataset: Dataset, indices: torch.Tensor, labels: torch.Tensor):
        if len(indices) != len(labels):
            raise ValueError(f"{len(indices)} indices but {len(labels)} labels")
        self.dataset, self.indices, self.labels = dataset, indices.long(), labels.long()

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, j: int):
        i = int(self.indices[j])
        return self.dataset[i][0], self.labels[j], i

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)


class Resumable:
    """``state_dict``/``load_state_dict`` of the attributes named in ``resumable`` (tensors and plain values),
    so that a resumed run continues with the same selections, statistics and records."""

    resumable: tuple[str, ...] = ()

    def state_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.resumable}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name in self.resumable:
            if name in state:
                setattr(self, name, state[name])


class EpochSubset(Subset):
    """A ``Subset`` that passes ``set_epoch`` on, so per-epoch augmentation keeps changing on a pruned set."""

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel / DataParallel wrapper (scoring must not run collectives)."""
    return model.module if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)) else model


def yields_indices(dataset: Dataset) -> bool:
    """Whether items are ``(x, y, index)`` with the index into the original training set."""
    if isinstance(dataset, Subset):
        return yields_indices(dataset.dataset)
    return isinstance(dataset, (IndexedDataset, LabelledView))


def with_indices(dataset: Dataset) -> Dataset:
    """``dataset`` yielding sample indices (unchanged when it already does)."""
    return dataset if yields_indices(dataset) else IndexedDataset(dataset)


def plain_view(dataset: Dataset) -> Dataset:
    """The same samples without training augmentation, where the data set knows how (``TensorImages.plain``)."""
    if isinstance(dataset, Subset):
        return Subset(plain_view(dataset.dataset), dataset.indices)
    if isinstance(dataset, IndexedDataset):
        return IndexedDataset(plain_view(dataset.dataset))
    return dataset.plain() if hasattr(dataset, "plain") else dataset


def rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@torch.no_grad()
def per_sample_pass(model: nn.Module, dataset: Dataset,
                    fn: Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
                    batch_size: int = 256, device: str | torch.device | None = None, indices: torch.Tensor | None = None,
                    ) -> torch.Tensor:
    """``fn(model, x, y, index)`` for every sample of ``dataset`` (or of ``indices`` of it): one row each, in order.

    The model runs in eval mode (running BN statistics: a sample's score must not depend on its
    batch mates) and its mode is restored. ``fn`` returns a tensor whose first dimension is the batch.
    Under torch.distributed the samples are split over the ranks and the rows all-gathered.
    """
    rank, world = rank_and_world()
    model = unwrap(model)  # a DDP forward may broadcast buffers: ranks with different batch counts would hang
    if device is None:  # where the model is
        device = next(model.parameters(), torch.empty(0)).device
    order = torch.arange(len(dataset)) if indices is None else torch.as_tensor(indices).long()
    mine = order[rank::world]
    was_training = model.training
    model.eval()
    rows = []
    try:
        for x, y, index in make_loader(Subset(IndexedDataset(dataset), mine.tolist()), batch_size):
            rows.append(fn(model, x.to(device), y.to(device), index).detach())
    finally:
        model.train(was_training)
    local = torch.cat(rows) if rows else torch.empty(0)
    if world == 1:
        return local.cpu()
    return _gather_strided(local, len(order), world)


def _gather_strided(local: torch.Tensor, total: int, world: int) -> torch.Tensor:
    """Reassemble rows scored as ``order[rank::world]`` on each rank into the original order."""
    per_rank = -(-total // world)
    padded = torch.zeros((per_rank, *local.shape[1:]), dtype=local.dtype, device=local.device)
    padded[: len(local)] = local
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    full = torch.empty((total, *local.shape[1:]), dtype=local.dtype)
    for r, part in enumerate(parts):
        n = len(range(r, total, world))
        full[r::world] = part[:n].cpu()
    return full


def same_on_all_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """Rank 0's ``tensor`` on every rank (a no-op without torch.distributed)."""
    _, world = rank_and_world()
    if world == 1:
        return tensor
    backend_device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    buf = tensor.to(backend_device).contiguous()
    dist.broadcast(buf, src=0)
    return buf.to(tensor.device)


def max_on_all_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """Element-wise maximum of ``tensor`` over the ranks (merges per-rank records of disjoint samples)."""
    _, world = rank_and_world()
    if world == 1:
        return tensor
    backend_device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    buf = tensor.to(backend_device).contiguous()
    dist.all_reduce(buf, op=dist.ReduceOp.MAX)
    return buf.to(tensor.device)
