"""A deterministic, resumable (and DDP-aware) sampler: the batches of a resumed run are the batches it lost.

Epoch e is the permutation drawn by a torch.Generator seeded from (seed, e), so any epoch can be rebuilt
from two integers without replaying the ones before it. Under DDP each epoch's permutation is padded to a
multiple of world_size (by repeating its head, like torch's DistributedSampler) and rank r takes every
world_size-th index starting at r. The state is (epoch, position): position = indices of this rank's share of
the epoch already handed out. Iterating yields the rest of the current epoch and then moves to the next.

A DataLoader with worker processes reads the sampler ahead of the training loop; the loop therefore records
how much it has really consumed and sets the state itself before each new iterator (see train/loop.py).
"""
from __future__ import annotations

import math
from typing import Iterator

import torch
from torch.utils.data import Sampler

from ..errors import ConfigError

_MIX = 0x9E3779B97F4A7C15  # golden-ratio constant: (seed, epoch) pairs map to distinct generator seeds


def epoch_seed(seed: int, epoch: int) -> int:
    return (seed * _MIX + epoch) % (2**63 - 1)


class ResumableSampler(Sampler[int]):
    def __init__(self, n: int, seed: int = 0, shuffle: bool = True, rank: int = 0, world_size: int = 1):
        if n <= 0:
            raise ConfigError(f"ResumableSampler needs a non-empty dataset, got n={n}")
        if not 0 <= rank < world_size:
            raise ConfigError(f"rank {rank} is outside world_size {world_size}")
        self.n, self.seed, self.shuffle = n, int(seed), shuffle
        self.rank, self.world_size = rank, world_size
        self.epoch, self.position = 0, 0

    # ---- the index order ------------------------------------------------------------------------
    @property
    def per_rank(self) -> int:
        """Indices this rank sees per epoch (the epoch is padded so every rank sees the same number)."""
        return math.ceil(self.n / self.world_size)

    def indices_for_epoch(self, epoch: int) -> torch.Tensor:
        if self.shuffle:
            g = torch.Generator().manual_seed(epoch_seed(self.seed, epoch))
            order = torch.randperm(self.n, generator=g)
        else:
            order = torch.arange(self.n)
        total = self.per_rank * self.world_size
        if total > self.n:  # pad by wrapping around so every rank gets per_rank indices
            order = torch.cat([order, order[: total - self.n]])
        return order[self.rank: total: self.world_size]

    def __len__(self) -> int:
        return self.per_rank - self.position

    def __iter__(self) -> Iterator[int]:
        epoch, start = self.epoch, self.position
        order = self.indices_for_epoch(epoch).tolist()
        for i in range(start, len(order)):
            self.position = i + 1
            yield order[i]
        self.epoch, self.position = epoch + 1, 0

    # ---- state ----------------------------------------------------------------------------------
    def set_state(self, epoch: int, position: int) -> None:
        if not 0 <= position <= self.per_rank:
            raise ConfigError(f"sampler position {position} is outside this epoch's {self.per_rank} indices")
        self.epoch, self.position = int(epoch), int(position)
        if self.position == self.per_rank:  # an exactly finished epoch: start the next one
            self.epoch, self.position = self.epoch + 1, 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed, "n": self.n,
                "world_size": self.world_size, "shuffle": self.shuffle}

    def load_state_dict(self, state: dict) -> None:
        for key in ("seed", "n", "world_size", "shuffle"):
            if key in state and state[key] != getattr(self, key):
                raise ConfigError(f"sampler state was saved with {key}={state[key]!r} but this run has "
                                  f"{key}={getattr(self, key)!r}: the data order would not match. Use the same "
                                  f"dataset, seed and number of processes, or start a fresh run folder.")
        self.set_state(state["epoch"], state["position"])
