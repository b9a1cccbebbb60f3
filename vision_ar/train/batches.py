"""The training data: an endless stream of micro-batches that knows its exact (epoch, position)."""
from __future__ import annotations

import math
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from ..data.sampler import ResumableSampler, epoch_seed
from ..errors import ConfigError


def check_enough_samples(num_samples: int, world_size: int, micro_batch: int) -> None:
    per_rank = math.ceil(num_samples / world_size)
    if per_rank < micro_batch:
        raise ConfigError(f"the dataset has {num_samples} samples, {per_rank} per process, fewer than one "
                          f"micro-batch of {micro_batch}: lower batch_size or raise grad_accum.")


class BatchStream:
    """Micro-batches from a ResumableSampler, epoch after epoch, counting what the loop really consumed.

    The position saved in checkpoints is (micro-batches consumed this epoch) x micro_batch_size, not the
    sampler's own counter, because DataLoader workers read the sampler ahead. The last incomplete batch
    of an epoch is dropped so every step sees the same batch size.
    """

    def __init__(self, dataset: Dataset, micro_batch: int, seed: int, num_workers: int, rank: int = 0,
                 world_size: int = 1, pin_memory: bool = False):
        self.dataset, self.micro_batch, self.seed, self.num_workers = dataset, micro_batch, seed, num_workers
        self.sampler = ResumableSampler(len(dataset), seed=seed, shuffle=True, rank=rank, world_size=world_size)
        check_enough_samples(len(dataset), world_size, micro_batch)
        self.pin = pin_memory
        self.epoch, self.consumed = 0, 0
        self._it = None

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.consumed * self.micro_batch,
                "micro_batch": self.micro_batch, "n": len(self.dataset), "world_size": self.sampler.world_size}

    def load_state_dict(self, state: dict) -> None:
        if state.get("n") != len(self.dataset) or state.get("micro_batch") != self.micro_batch or \
                state.get("world_size") != self.sampler.world_size:
            print(f"warning: data state saved with n={state.get('n')}, micro_batch={state.get('micro_batch')}, "
                  f"world_size={state.get('world_size')}; this run has n={len(self.dataset)}, micro_batch="
                  f"{self.micro_batch}, world_size={self.sampler.world_size}: the batch order will differ.")
        self.epoch, self.consumed = int(state["epoch"]), int(state["position"]) // self.micro_batch
        self._it = None

    def _start_iterator(self) -> None:
        if (self.consumed + 1) * self.micro_batch > self.sampler.per_rank:  # no full batch left in this epoch
            self.epoch, self.consumed = self.epoch + 1, 0
        self.sampler.set_state(self.epoch, self.consumed * self.micro_batch)
        # A private generator for the DataLoader's worker seeds: creating an iterator must not draw from the
        # global torch RNG (which drives dropout), or a resumed run would diverge from an uninterrupted one.
        g = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch) + self.consumed)
        loader = DataLoader(self.dataset, batch_size=self.micro_batch, sampler=self.sampler, drop_last=True,
                            num_workers=self.num_workers, pin_memory=self.pin, generator=g)
        self._it = iter(loader)

    def next(self) -> Any:
        if self._it is None:
            self._start_iterator()
        try:
            batch = next(self._it)
        except StopIteration:
            self.epoch, self.consumed, self._it = self.epoch + 1, 0, None
            return self.next()
        self.consumed += 1
        return batch


def to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch
