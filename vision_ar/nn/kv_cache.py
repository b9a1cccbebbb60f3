"""A preallocated (static) key/value cache shared by every AR family.

Keys and values for the whole sequence are allocated once, `(B, H, max_len, D)`; each step writes its new
entries in place and attention reads the prefix view `[:, :, :length]`. No per-step reallocation or
concatenation, and rolling back (speculative decoding) is only moving `length` back.

A model owns one `KVCache` per attention layer; samplers talk to the model, never to the caches directly.
"""
from __future__ import annotations

import torch

from ..errors import ConfigError


class KVCache:
    def __init__(self, batch: int, heads: int, max_len: int, head_dim: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"):
        self.k = torch.zeros(batch, heads, max_len, head_dim, dtype=dtype, device=device)
        self.v = torch.zeros_like(self.k)
        self.length = 0  # number of valid positions (shared by every row of the batch)

    @property
    def max_len(self) -> int:
        return self.k.shape[2]

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write `k, v` of shape (B, H, T, D) after the valid prefix; return the keys/values of prefix + new."""
        t = k.shape[2]
        end = self.length + t
        if end > self.max_len:
            raise ConfigError(f"sequence of length {end} does not fit the KV cache of {self.max_len} positions; "
                              f"allocate a longer cache (max_len) or shorten the sequence.")
        self.k[:, :, self.length:end] = k
        self.v[:, :, self.length:end] = v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]

    def truncate(self, length: int) -> None:
        """Forget every position from `length` on (e.g. rejected speculative tokens)."""
        if not 0 <= length <= self.length:
            raise ConfigError(f"cannot roll the KV cache back to {length}: it holds {self.length} positions")
        self.length = length

    def reset(self) -> None:
        self.length = 0
