"""LlamaGen's flavour of the shared conv body (`vision_ar/nn/conv_blocks.py`), for its VQ tokenizer
(`tokenizer/tokenizer_image/vq_model.py`).

The body (widths, block order, GroupNorm, down/upsamplers, construction order) is the shared one; LlamaGen differs
in three things, all in `LLAMAGEN_CONV_BODY`:

  * module names, so official checkpoints load key for key:
        encoder: conv_in, conv_blocks.{level}.res.{i}, conv_blocks.{level}.attn.{i} (last level only),
                 conv_blocks.{level}.downsample.conv (all but the last level), mid.{0: res, 1: attn, 2: res},
                 norm_out, conv_out
        decoder: conv_in, mid.{0,1,2}, conv_blocks.{j}.res.{i} (num_res_blocks + 1 per level, deepest level
                 first, i.e. in run order), conv_blocks.{j}.attn.{i} (deepest level only),
                 conv_blocks.{j}.upsample.conv (all but the last), norm_out, conv_out
  * the nonlinearity `x * sigmoid(x)`, which rounds differently from `F.silu` (1 ulp), and
  * an attention block with three separate q/k/v convs and explicit bmm's in the official order (VAR fuses q/k/v
    into one conv and uses SDPA).
With the last two, encoder outputs, codes and reconstructions are bit-identical to the official ones on CPU
instead of ~1e-6 apart, which keeps nearest-code near-ties falling the same way (the codes feed an argmin).
"""
from __future__ import annotations

import torch
from torch import nn

from ..nn.conv_blocks import ConvBodyStyle, group_norm


def swish(x: torch.Tensor) -> torch.Tensor:
    """The official nonlinearity, written as LlamaGen writes it (see the module docstring)."""
    return x * torch.sigmoid(x)


class AttnBlock(nn.Module):
    """Single-head self-attention over the h*w positions: x + proj_out(softmax(q k^T / sqrt(C)) v)."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = group_norm(channels)
        self.q = nn.Conv2d(channels, channels, kernel_size=1)
        self.k = nn.Conv2d(channels, channels, kernel_size=1)
        self.v = nn.Conv2d(channels, channels, kernel_size=1)
        self.proj_out = nn.Conv2d(channels, channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        n = self.norm(x)
        q, k, v = (conv(n).reshape(b, c, h * w) for conv in (self.q, self.k, self.v))
        # Explicit matmuls in the official order (not SDPA): the encoder output feeds an argmin, so we keep
        # its rounding as close to the official one as possible.
        weights = torch.softmax(torch.bmm(q.transpose(1, 2), k) * (c ** -0.5), dim=2)  # (B, HW_q, HW_k)
        out = torch.bmm(v, weights.transpose(1, 2))  # (B, C, HW_q)
        return x + self.proj_out(out.reshape(b, c, h, w))


LLAMAGEN_CONV_BODY = ConvBodyStyle(activation=swish, attn_block=AttnBlock, encoder_stages="conv_blocks",
                                   decoder_stages="conv_blocks", decoder_stages_by_level=False, res_blocks="res",
                                   mid=("0", "1", "2"))
