"""Attention on torch's scaled_dot_product_attention, the one kernel every family calls."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_bias: torch.Tensor | None = None,
           scale: float | None = None, is_causal: bool = False, dropout_p: float = 0.0) -> torch.Tensor:
    """q (B,H,Lq,D), k/v (B,H,Lk,D) -> (B,H,Lq,D).

    `attn_bias` is an additive float mask broadcastable to (B,H,Lq,Lk) (0 = attend, -inf = blocked) or a
    boolean mask (True = attend). SDPA picks the fastest backend available (flash / memory-efficient / math).
    """
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias, dropout_p=dropout_p,
                                          is_causal=is_causal, scale=scale)
