"""Convolutional encoder/decoder of LlamaGen's VQ tokenizer (`tokenizer/tokenizer_image/vq_model.py`).

Same computation as the taming/VAR body, but LlamaGen names the modules differently, so its checkpoints need
this layout (keys below are exactly the official ones):

    encoder: conv_in, conv_blocks.{level}.res.{i}, conv_blocks.{level}.attn.{i} (last level only),
             conv_blocks.{level}.downsample.conv (all but the last level), mid.{0: res, 1: attn, 2: res},
             norm_out, conv_out
    decoder: conv_in, mid.{0,1,2}, conv_blocks.{j}.res.{i} (num_res_blocks + 1 per level, deepest level first),
             conv_blocks.{j}.attn.{i} (deepest level only), conv_blocks.{j}.upsample.conv (all but the last), ...
    AttnBlock: norm, q, k, v, proj_out  (three separate 1x1 convs; VAR fuses them into one `qkv`)

The (asymmetric-pad) downsampler, the nearest-neighbour upsampler and GroupNorm(32, eps 1e-6) are exactly the
shared ones in `vision_ar/nn/conv_blocks.py` and are reused. The residual block is re-stated here because
LlamaGen's swish is `x * sigmoid(x)`, which rounds differently from `F.silu` (1 ulp); with it the encoder output,
codes and reconstructions are bit-identical to the official ones on CPU instead of ~1e-6 apart, which keeps
nearest-code near-ties falling the same way.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..errors import ConfigError
from ..nn.conv_blocks import Downsample2x, Upsample2x, group_norm


def swish(x: torch.Tensor) -> torch.Tensor:
    """The official nonlinearity, written as LlamaGen writes it (see the module docstring)."""
    return x * torch.sigmoid(x)


class ResnetBlock(nn.Module):
    """x + conv2(dropout(swish(norm2(conv1(swish(norm1(x))))))); a 1x1 `nin_shortcut` when the width changes."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.norm2 = group_norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)
        self.nin_shortcut = (nn.Conv2d(in_channels, out_channels, kernel_size=1) if in_channels != out_channels
                             else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(swish(self.norm1(x)))
        h = self.conv2(self.dropout(swish(self.norm2(h))))
        return self.nin_shortcut(x) + h


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


def _check_widths(ch: int, ch_mult: Sequence[int], num_res_blocks: int) -> None:
    if not ch_mult or num_res_blocks < 1 or ch < 1:
        raise ConfigError(f"need a non-empty ch_mult, ch >= 1 and num_res_blocks >= 1 (got ch={ch}, "
                          f"ch_mult={list(ch_mult)}, num_res_blocks={num_res_blocks}).")
    bad = [ch * m for m in ch_mult if (ch * m) % 32]
    if bad:
        raise ConfigError(f"GroupNorm(32) needs every width ch*ch_mult to be a multiple of 32; got widths {bad}. "
                          f"Choose ch as a multiple of 32.")


def _middle(channels: int, dropout: float) -> nn.ModuleList:
    return nn.ModuleList([ResnetBlock(channels, channels, dropout), AttnBlock(channels),
                          ResnetBlock(channels, channels, dropout)])


class Encoder(nn.Module):
    """image (B, in_channels, H, W) -> latent (B, z_channels, H/f, W/f), f = 2 ** (len(ch_mult) - 1)."""

    def __init__(self, in_channels: int = 3, ch: int = 128, ch_mult: Sequence[int] = (1, 1, 2, 2, 4),
                 num_res_blocks: int = 2, dropout: float = 0.0, z_channels: int = 256):
        super().__init__()
        _check_widths(ch, ch_mult, num_res_blocks)
        last = len(ch_mult) - 1
        self.conv_in = nn.Conv2d(in_channels, ch, kernel_size=3, padding=1)
        self.conv_blocks = nn.ModuleList()
        width = ch
        for level, mult in enumerate(ch_mult):
            stage = nn.Module()
            stage.res = nn.ModuleList()
            stage.attn = nn.ModuleList()
            for _ in range(num_res_blocks):
                stage.res.append(ResnetBlock(width, ch * mult, dropout))
                width = ch * mult
                if level == last:  # self-attention only at the lowest resolution
                    stage.attn.append(AttnBlock(width))
            if level != last:
                stage.downsample = Downsample2x(width)
            self.conv_blocks.append(stage)
        self.mid = _middle(width, dropout)
        self.norm_out = group_norm(width)
        self.conv_out = nn.Conv2d(width, z_channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for stage in self.conv_blocks:
            for i, res in enumerate(stage.res):
                h = res(h)
                if len(stage.attn):
                    h = stage.attn[i](h)
            if hasattr(stage, "downsample"):
                h = stage.downsample(h)
        for block in self.mid:
            h = block(h)
        return self.conv_out(swish(self.norm_out(h)))


class Decoder(nn.Module):
    """latent (B, z_channels, h, w) -> image (B, out_channels, h*f, w*f)."""

    def __init__(self, z_channels: int = 256, ch: int = 128, ch_mult: Sequence[int] = (1, 1, 2, 2, 4),
                 num_res_blocks: int = 2, dropout: float = 0.0, out_channels: int = 3):
        super().__init__()
        _check_widths(ch, ch_mult, num_res_blocks)
        last = len(ch_mult) - 1
        width = ch * ch_mult[last]
        self.conv_in = nn.Conv2d(z_channels, width, kernel_size=3, padding=1)
        self.mid = _middle(width, dropout)
        self.conv_blocks = nn.ModuleList()
        for level in reversed(range(len(ch_mult))):  # deepest level first
            stage = nn.Module()
            stage.res = nn.ModuleList()
            stage.attn = nn.ModuleList()
            for _ in range(num_res_blocks + 1):
                stage.res.append(ResnetBlock(width, ch * ch_mult[level], dropout))
                width = ch * ch_mult[level]
                if level == last:
                    stage.attn.append(AttnBlock(width))
            if level != 0:
                stage.upsample = Upsample2x(width)
            self.conv_blocks.append(stage)
        self.norm_out = group_norm(width)
        self.conv_out = nn.Conv2d(width, out_channels, kernel_size=3, padding=1)

    @property
    def last_layer(self) -> torch.Tensor:
        """Weight used by the adaptive GAN-loss weighting during tokenizer training."""
        return self.conv_out.weight

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(z)
        for block in self.mid:
            h = block(h)
        for stage in self.conv_blocks:
            for i, res in enumerate(stage.res):
                h = res(h)
                if len(stage.attn):
                    h = stage.attn[i](h)
            if hasattr(stage, "upsample"):
                h = stage.upsample(h)
        return self.conv_out(swish(self.norm_out(h)))
