"""SwiGLU feed-forward block (LLaMA / LlamaGen): w2( silu(w1 x) * w3 x ).

The hidden width follows the LLaMA rule so official checkpoints fit: start from 4*dim, take 2/3 of it
(SwiGLU has three matrices instead of two, this keeps the parameter count of a 4x MLP), optionally scale by
`ffn_dim_multiplier`, then round UP to a multiple of `multiple_of` (hardware-friendly sizes).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError


def round_up_to_multiple(n: int, k: int) -> int:
    return n if n % k == 0 else n + k - (n % k)


def swiglu_hidden_dim(dim: int, multiple_of: int = 256, ffn_dim_multiplier: float | None = None) -> int:
    """LLaMA's hidden size: e.g. dim 768 -> 2048, 1024 -> 2816, 3200 -> 8704 (multiple_of 256)."""
    if multiple_of < 1:
        raise ConfigError(f"multiple_of must be >= 1, got {multiple_of}")
    hidden = int(2 * (4 * dim) / 3)
    if ffn_dim_multiplier is not None:
        hidden = int(ffn_dim_multiplier * hidden)
    return round_up_to_multiple(hidden, multiple_of)


class FeedForward(nn.Module):
    """Key names w1 (gate), w3 (up), w2 (down) as in LLaMA/LlamaGen; no biases."""

    def __init__(self, dim: int, multiple_of: int = 256, ffn_dim_multiplier: float | None = None,
                 dropout: float = 0.0):
        super().__init__()
        hidden = swiglu_hidden_dim(dim, multiple_of, ffn_dim_multiplier)
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)
        self.ffn_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ffn_dropout(self.w2(F.silu(self.w1(x)) * self.w3(x)))
