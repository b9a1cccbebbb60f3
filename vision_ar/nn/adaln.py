"""Adaptive LayerNorm (AdaLN) pieces: a condition vector predicts per-channel scale/shift/gate.

    x_mod = LayerNorm(x) * (1 + scale) + shift          (modulate)
    x     = x + gate * sublayer(x_mod)                  (gated residual, done by the block)

`AdaLNProjection` is SiLU -> Linear(cond_dim, n * C) reshaped to (B, 1, n, C): `n` modulation vectors per
sample, broadcast over the sequence. It subclasses nn.Sequential so its Linear is child "1": the state_dict keys
are `<name>.1.weight` / `<name>.1.bias`, exactly VAR's `ada_lin.1.*` / `shared_ada_lin.1.*`.

"Shared AdaLN" (VAR-d36): one projection for the whole network computes the 6 vectors once, and each block
adds its own learned (1, 1, 6, C) offset (`ada_gss`) instead of owning a projection.
"""
from __future__ import annotations

import torch
from torch import nn


def modulate(x_normed: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """x * (1 + scale) + shift, with the multiply first (same float rounding as the official VAR)."""
    return x_normed.mul(scale.add(1)).add_(shift)


class AdaLNProjection(nn.Sequential):
    """cond (B, D) -> (B, 1, n, C) modulation vectors (SiLU then Linear)."""

    def __init__(self, cond_dim: int, embed_dim: int, n: int):
        super().__init__(nn.SiLU(inplace=False), nn.Linear(cond_dim, n * embed_dim))
        self.n, self.embed_dim = n, embed_dim

    def forward(self, cond_BD: torch.Tensor) -> torch.Tensor:
        return super().forward(cond_BD).view(-1, 1, self.n, self.embed_dim)


class AdaLNHeadNorm(nn.Module):
    """Final AdaLN before the classifier head: LayerNorm without affine, then (1 + scale), + shift."""

    def __init__(self, embed_dim: int, cond_dim: int, eps: float = 1e-6):
        super().__init__()
        self.ln_wo_grad = nn.LayerNorm(embed_dim, eps=eps, elementwise_affine=False)
        self.ada_lin = AdaLNProjection(cond_dim, embed_dim, n=2)

    def modulation(self, cond_BD: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, shift), each (B, 1, C)."""
        return self.ada_lin(cond_BD).unbind(2)

    def forward(self, x_BLC: torch.Tensor, cond_BD: torch.Tensor,
                mod: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        scale, shift = self.modulation(cond_BD) if mod is None else mod
        return modulate(self.ln_wo_grad(x_BLC), scale, shift)
