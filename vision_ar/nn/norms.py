"""Normalisation layers shared by the AR transformers."""
from __future__ import annotations

import torch
from torch import nn


class RMSNorm(nn.Module):
    """Root-mean-square norm (LLaMA / LlamaGen / xAR): x / rms(x) * weight, no mean subtraction, no bias.

    The statistic is computed in float32 and cast back before the weight is applied, as in LlamaGen, so
    bf16/fp16 models normalise exactly like the official ones. `elementwise_affine=False` drops the weight
    (xAR's pre-AdaLN norms, whose scale comes from the condition): no parameter, no state_dict key.
    """

    def __init__(self, dim: int, eps: float = 1e-5, elementwise_affine: bool = True):
        super().__init__()
        self.eps, self.dim = eps, dim
        self.weight = nn.Parameter(torch.ones(dim)) if elementwise_affine else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        normed = (xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + self.eps)).type_as(x)
        return normed if self.weight is None else normed * self.weight

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps}, elementwise_affine={self.weight is not None}"


def fp32_layer_norm(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """LayerNorm without weight or bias over the last dim, computed in float32 and cast back (FlexTok's norm
    everywhere: pre-norms, QK-norm, output heads), so bf16 models normalise like fp32 ones."""
    return torch.nn.functional.layer_norm(x.float(), x.shape[-1:], None, None, eps).type_as(x)
