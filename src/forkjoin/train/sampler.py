"""The distributed sampler and the loader around it: a rank's share of the data, in an order
that depends only on ``seed`` and the epoch (not on the number of ranks), with a position that
is saved in checkpoints so a resumed run sees exactly the batches it had not seen yet.

Rank ``r`` of ``W`` takes ``order[r::W]`` (as ``torch.utils.data.DistributedSampler`` does), so
the first ``b`` samples of every rank together are the first ``W*b`` samples of the order: that
is why W ranks with batch b take the same steps as one rank with batch W*b.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, RandomSampler, Sampler

from . import context

__all__ = ["ShardedSampler", "PreparedLoader"]


class ShardedSampler(Sampler[int]):
    """``DistributedSampler`` that can start part-way through an epoch."""

    def __init__(
        self,
        size: int,
        *,
        num_replicas: int,
        rank: int,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
    ) -> None:
        self.size = size
        self.num_replicas = num_replicas
        self.rank = rank
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.epoch = 0
        self.start = 0  # samples of this epoch already consumed by this rank
        if drop_last:
            self.num_samples = size // num_replicas
        else:
            self.num_samples = -(-size // num_replicas)

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch = epoch
            self.start = 0

    def indices(self) -> list[int]:
        """This rank's whole share of the current epoch."""
        if self.shuffle:
            generator = torch.Generator()
            generator.manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.size, generator=generator).tolist()
        else:
            order = list(range(self.size))
        total = self.num_samples * self.num_replicas
        if total <= len(order):
            order = order[:total]
        else:  # pad by repeating from the start, as DistributedSampler does
            order += (order * (-(-total // max(1, len(order)))))[: total - len(order)]
        return order[self.rank : total : self.num_replicas]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices()[self.start :])

    def __len__(self) -> int:
        return self.num_samples - self.start


class PreparedLoader:
    """What ``prepare`` returns for a ``DataLoader``: iterate it as before. It yields this
    rank's batches (on this rank's device), counts what was consumed, and moves to the next
    epoch (a new shuffle) after a full pass; a new ``iter()`` after a ``break`` continues where
    the last one stopped. ``state_dict()`` / ``load_state_dict()`` carry epoch and position."""

    def __init__(self, loader: DataLoader, sampler: ShardedSampler, device: Any) -> None:
        self.loader = loader
        self.sampler = sampler
        self.device = device
        self._move = getattr(device, "type", "cpu") != "cpu"

    def __iter__(self) -> Iterator[Any]:
        sampler = self.sampler
        batch_size = self.loader.batch_size or 1
        for batch in self.loader:
            context.heartbeat()
            sampler.start = min(sampler.num_samples, sampler.start + batch_size)
            yield _to_device(batch, self.device) if self._move else batch
        sampler.epoch += 1
        sampler.start = 0

    def __len__(self) -> int:
        return len(self.loader)

    @property
    def epoch(self) -> int:
        return self.sampler.epoch

    def set_epoch(self, epoch: int) -> None:
        """Start epoch ``epoch`` (keeps the position when it is the epoch being resumed)."""
        self.sampler.set_epoch(epoch)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.sampler.epoch, "position": self.sampler.start}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.sampler.epoch = int(state["epoch"])
        self.sampler.start = int(state["position"])

    def __getattr__(self, name: str) -> Any:  # dataset, batch_size, num_workers, ...
        return getattr(self.__dict__["loader"], name)


def _to_device(batch: Any, device: Any) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        moved = [_to_device(x, device) for x in batch]
        return type(batch)(moved) if not hasattr(batch, "_fields") else type(batch)(*moved)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    return batch


def shard_loader(loader: DataLoader, *, seed: int, device: Any) -> PreparedLoader | DataLoader:
    """Rebuild ``loader`` around a ShardedSampler with the same settings; loaders that cannot
    be resharded (iterable datasets, custom batch samplers) come back unchanged."""
    if not isinstance(loader, DataLoader):
        raise TypeError(f"prepare() takes a torch DataLoader, not {type(loader).__name__}")
    if loader.batch_size is None or isinstance(loader.dataset, torch.utils.data.IterableDataset):
        return loader
    ctx = context.current()
    sampler = ShardedSampler(
        len(loader.dataset),  # type: ignore[arg-type]
        num_replicas=ctx.world_size,
        rank=ctx.rank,
        shuffle=isinstance(loader.sampler, RandomSampler),
        seed=seed,
        drop_last=loader.drop_last,
    )
    options: dict[str, Any] = {
        "batch_size": loader.batch_size,
        "sampler": sampler,
        "num_workers": loader.num_workers,
        "collate_fn": loader.collate_fn,
        "pin_memory": loader.pin_memory,
        "drop_last": loader.drop_last,
        "timeout": loader.timeout,
        "worker_init_fn": loader.worker_init_fn,
        "multiprocessing_context": loader.multiprocessing_context,
        # DataLoader draws its workers' base seed from this generator at every iter(): with
        # the global one, a resumed run's dropout/augmentation stream would shift
        "generator": torch.Generator().manual_seed(seed + 1_000_003 * ctx.rank),
    }
    if loader.num_workers > 0:
        options["prefetch_factor"] = loader.prefetch_factor
        options["persistent_workers"] = loader.persistent_workers
    return PreparedLoader(DataLoader(loader.dataset, **options), sampler, device)
