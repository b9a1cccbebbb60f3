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

    def append_rows(self, k: torch.Tensor, v: torch.Tensor, starts: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-row variant of `append` for samplers whose rows advance at different speeds (speculative
        decoding keeps each row's own accepted length).

        Row b writes its T entries at positions starts[b] .. starts[b]+T-1; whatever that row held from
        starts[b] on is forgotten (its rollback). Returns the keys/values of positions [0, length) and a boolean
        mask (B, 1, T, length), True = attend: query t of row b sees keys 0 .. starts[b]+t, so each row ignores
        its own stale entries. `length` becomes max(starts) + T (the longest row); use `append_rows` for every
        later write of that generation, since rows now differ.
        """
        t = k.shape[2]
        starts = starts.to(device=self.k.device, dtype=torch.long)
        if starts.shape != (k.shape[0],) or int(starts.min()) < 0:
            raise ConfigError(f"starts must hold one non-negative position per row ({k.shape[0]}), "
                              f"got {tuple(starts.shape)}")
        end = int(starts.max()) + t
        if end > self.max_len:
            raise ConfigError(f"sequence of length {end} does not fit the KV cache of {self.max_len} positions; "
                              f"allocate a longer cache (max_len) or shorten the sequence.")
        pos = starts[:, None] + torch.arange(t, device=starts.device)  # (B, T)
        rows = torch.arange(k.shape[0], device=starts.device)[:, None]
        # Advanced indices around a slice put their dims first: self.k[rows, :, pos] is (B, T, H, D).
        self.k[rows, :, pos] = k.transpose(1, 2).to(self.k.dtype)
        self.v[rows, :, pos] = v.transpose(1, 2).to(self.v.dtype)
        self.length = end
        mask = torch.arange(end, device=starts.device)[None, None, None, :] <= pos[:, None, :, None]
        return self.k[:, :, :end], self.v[:, :, :end], mask

    def write_at(self, pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Static-shape variant for compiled decode steps (CUDA graphs): write `k, v` (B, H, T, D) at positions
        pos[0] .. pos[0]+T-1 given as a tensor, return the WHOLE cache (B, H, max_len, D); the caller masks the
        positions after its own and sets `length` afterwards (no Python number changes inside the graph)."""
        idx = pos.reshape(-1)[:1] + torch.arange(k.shape[2], device=pos.device)
        self.k.index_copy_(2, idx, k.to(self.k.dtype))
        self.v.index_copy_(2, idx, v.to(self.v.dtype))
        return self.k, self.v

    def truncate(self, length: int) -> None:
        """Forget every position from `length` on (e.g. rejected speculative tokens)."""
        if not 0 <= length <= self.length:
            raise ConfigError(f"cannot roll the KV cache back to {length}: it holds {self.length} positions")
        self.length = length

    def reset(self) -> None:
        self.length = 0

    def select_rows(self, rows: torch.Tensor) -> None:
        """Row b becomes a copy of row rows[b] (over the valid prefix): particle resampling while editing."""
        n = self.length
        self.k[:, :, :n] = self.k[rows, :, :n]
        self.v[:, :, :n] = self.v[rows, :, :n]
