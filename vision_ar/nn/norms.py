"""Normalisation layers shared by the AR transformers."""
from __future__ import annotations

import torch
from torch import nn


class RMSNorm(nn.Module):
    """Root-mean-square norm (LLaMA / LlamaGen): x / rms(x) * weight, no mean subtraction, no bias.

    The statistic is computed in float32 and cast back before the weight is applied, as in LlamaGen, so
    bf16/fp16 models normalise exactly like the official ones.
    """

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        normed = xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.weight

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


def fp32_layer_norm(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """LayerNorm without weight or bias over the last dim, computed in float32 and cast back (FlexTok's norm
    everywhere: pre-norms, QK-norm, output heads), so bf16 models normalise like fp32 ones."""
    return torch.nn.functional.layer_norm(x.float(), x.shape[-1:], None, None, eps).type_as(x)
