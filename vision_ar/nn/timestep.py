"""Sinusoidal timestep embedding + MLP (DiT / SiT / xAR `TimestepEmbedder`), for flow-matching generators.

    emb(t) = Linear(D, D)(SiLU(Linear(F, D)([cos(t * w_i), sin(t * w_i)]))),  w_i = 10000^(-i / (F/2)), i < F/2

Keys `mlp.0.*` / `mlp.2.*` as the official module, so checkpoints load as they are. `t` may be fractional; xAR
feeds the integer index floor(t * 1000).
"""
from __future__ import annotations

import math

import torch
from torch import nn


def sinusoidal_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """(N,) -> (N, dim): cos half then sin half (a zero column is appended when dim is odd)."""
    half = dim // 2
    # float32 frequencies as in the official code, so embeddings match to the last bit
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device="cpu") / half)
    args = t[:, None].float() * freqs.to(t.device)[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class TimestepEmbedder(nn.Module):
    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(frequency_embedding_size, hidden_size), nn.SiLU(),
                                 nn.Linear(hidden_size, hidden_size))
        self.frequency_embedding_size = frequency_embedding_size

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(sinusoidal_embedding(t.reshape(-1), self.frequency_embedding_size))
