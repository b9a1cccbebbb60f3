"""The convolutional encoder/decoder of the VQ tokenizers (the taming-transformers / latent-diffusion body).

    image (B,in,H,W) ──Encoder──▶ latent (B,z,H/f,W/f) ──Decoder──▶ image (B,out,H,W),   f = 2**(len(ch_mult)-1)

One body for every family. What the official code bases do differently is a `ConvBodyStyle`: the nonlinearity,
the attention block and the module names (so each family's official checkpoints load key for key, strictly,
without renaming). Everything else (widths, block order, GroupNorm(32, eps 1e-6), the asymmetric-pad
downsampler, the nearest-neighbour upsampler, the order in which layers are built and so initialised) is shared.

    VAR_CONV_BODY (FoundationVision/VAR `models/basic_vae.py`, the defaults here):
        encoder: conv_in, down.{level}.block.{i}, down.{level}.attn.{i}, down.{level}.downsample, mid.block_1,
                 mid.attn_1, mid.block_2, norm_out, conv_out
        decoder: conv_in, mid.*, up.{level}.block.{i}, up.{level}.attn.{i}, up.{level}.upsample, norm_out, conv_out
                 (`up` is stored by resolution level, 0 = full resolution, and run from the deepest level)
        F.silu; AttnBlock(norm, qkv, proj_out): one fused q/k/v conv and scaled_dot_product_attention
    LlamaGen's style lives with its tokenizer (tokenizers/llamagen_conv.py).

Blocks: ResnetBlock(norm1, conv1, norm2, conv2, nin_shortcut), AttnBlock, Downsample2x(conv), Upsample2x(conv).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .attention import attend

GROUPS = 32  # GroupNorm(32): every channel count inside the body must be a multiple of 32


def group_norm(channels: int, num_groups: int = GROUPS, eps: float = 1e-6) -> nn.GroupNorm:
    if channels % num_groups:
        raise ConfigError(f"GroupNorm({num_groups}) needs channels divisible by {num_groups}, got {channels}. "
                          f"Choose ch (and ch * every ch_mult) as a multiple of {num_groups}.")
    return nn.GroupNorm(num_groups=num_groups, num_channels=channels, eps=eps, affine=True)


# ----------------------------------------------------------------------------------------------------
# Blocks
# ----------------------------------------------------------------------------------------------------
class ResnetBlock(nn.Module):
    """x + conv(act(norm(conv(act(norm(x)))))), with a 1x1 conv on the skip path when the width changes."""

    def __init__(self, in_channels: int, out_channels: int | None = None, dropout: float = 0.0,
                 activation: Callable[[torch.Tensor], torch.Tensor] = F.silu):
        super().__init__()
        out_channels = in_channels if out_channels is None else out_channels
        self.in_channels, self.out_channels = in_channels, out_channels
        self.activation = activation
        self.norm1 = group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1)
        self.norm2 = group_norm(out_channels)
        # A parameter-free Identity when dropout is off, as in the official VAR code (no key either way; at
        # p = 0 nn.Dropout, LlamaGen's choice, is the identity too and draws no random numbers).
        self.dropout = nn.Dropout(dropout) if dropout > 1e-6 else nn.Identity()
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, stride=1, padding=1)
        self.nin_shortcut = (nn.Conv2d(in_channels, out_channels, kernel_size=1) if in_channels != out_channels
                             else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(self.activation(self.norm1(x)))
        h = self.conv2(self.dropout(self.activation(self.norm2(h))))
        return self.nin_shortcut(x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all h*w positions; q, k, v from one fused 1x1 conv (VAR layout)."""

    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels
        self.norm = group_norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, kernel_size=1)  # output channels ordered [q | k | v]
        self.proj_out = nn.Conv2d(channels, channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        qkv = self.qkv(self.norm(x)).reshape(B, 3, C, H * W).transpose(-1, -2)  # B,3,HW,C
        q, k, v = qkv.unsqueeze(2).unbind(1)  # each B,1(head),HW,C ; softmax(q k^T / sqrt(C)) v
        h = attend(q, k, v, scale=C ** -0.5)
        return x + self.proj_out(h.squeeze(1).transpose(1, 2).reshape(B, C, H, W))


class Downsample2x(nn.Module):
    """Stride-2 3x3 conv after padding one zero row/column at the bottom/right (asymmetric, as in taming)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1), mode="constant", value=0.0))


class Upsample2x(nn.Module):
    """Nearest-neighbour 2x upsampling followed by a 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=1, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


# ----------------------------------------------------------------------------------------------------
# What differs between official bodies
# ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ConvBodyStyle:
    """The nonlinearity, the attention block and the module names of one official conv body."""

    activation: Callable[[torch.Tensor], torch.Tensor] = F.silu
    attn_block: Callable[[int], nn.Module] = AttnBlock
    encoder_stages: str = "down"          # ModuleList of resolution levels in the encoder
    decoder_stages: str = "up"            # ... and in the decoder
    decoder_stages_by_level: bool = True  # True: decoder stage i is level i (run last to first); False: run order
    res_blocks: str = "block"             # ModuleList of ResnetBlocks inside a stage (next to `attn`)
    mid: tuple[str, str, str] = ("block_1", "attn_1", "block_2")  # names of the middle res / attn / res


VAR_CONV_BODY = ConvBodyStyle()


def _attn_levels(num_levels: int, attn_levels: Sequence[int] | None, using_sa: bool) -> set[int]:
    """Which resolution levels carry an AttnBlock after each ResnetBlock. Default (official): the lowest one."""
    if attn_levels is None:
        return {num_levels - 1} if using_sa else set()
    bad = [lv for lv in attn_levels if not 0 <= lv < num_levels]
    if bad:
        raise ConfigError(f"attn_levels {list(attn_levels)} has levels {bad} outside 0..{num_levels - 1} "
                          f"(one level per ch_mult entry, 0 = full resolution).")
    return set(attn_levels)


def _checked_attn_levels(ch: int, ch_mult: Sequence[int], num_res_blocks: int, attn_levels: Sequence[int] | None,
                         using_sa: bool) -> set[int]:
    """Check the body's sizes (before any layer is built) and say which levels carry attention."""
    _check_body(ch, ch_mult, num_res_blocks)
    return _attn_levels(len(ch_mult), attn_levels, using_sa)


def _check_body(ch: int, ch_mult: Sequence[int], num_res_blocks: int) -> None:
    if ch < 1:
        raise ConfigError(f"ch must be >= 1, got {ch}")
    if len(ch_mult) < 1 or any(int(m) < 1 for m in ch_mult):
        raise ConfigError(f"ch_mult must be a non-empty sequence of positive ints, got {tuple(ch_mult)}")
    if num_res_blocks < 1:
        raise ConfigError(f"num_res_blocks must be >= 1, got {num_res_blocks}")
    for m in ch_mult:
        if (ch * m) % GROUPS:
            raise ConfigError(f"ch={ch} with ch_mult {tuple(ch_mult)} gives width {ch * m}, not a multiple of "
                              f"{GROUPS} (GroupNorm). Use ch as a multiple of {GROUPS}.")


def _stage(style: ConvBodyStyle, width: int, out_width: int, num_blocks: int, dropout: float,
           with_attn: bool) -> tuple[nn.Module, int]:
    """One resolution level: num_blocks ResnetBlocks, each followed by an attention block on attention levels."""
    stage = nn.Module()
    blocks, attn = nn.ModuleList(), nn.ModuleList()
    setattr(stage, style.res_blocks, blocks)
    stage.attn = attn
    for _ in range(num_blocks):
        blocks.append(ResnetBlock(width, out_width, dropout, style.activation))
        width = out_width
        if with_attn:
            attn.append(style.attn_block(width))
    return stage, width


def _run_stage(style: ConvBodyStyle, stage: nn.Module, h: torch.Tensor) -> torch.Tensor:
    for i, block in enumerate(getattr(stage, style.res_blocks)):
        h = block(h)
        if len(stage.attn):
            h = stage.attn[i](h)
    return h


def _middle(style: ConvBodyStyle, channels: int, dropout: float, using_mid_sa: bool) -> nn.Module:
    mid = nn.Module()
    res_1, attn_1, res_2 = style.mid
    mid.add_module(res_1, ResnetBlock(channels, channels, dropout, style.activation))
    mid.add_module(attn_1, style.attn_block(channels) if using_mid_sa else nn.Identity())
    mid.add_module(res_2, ResnetBlock(channels, channels, dropout, style.activation))
    return mid


def _run_middle(style: ConvBodyStyle, mid: nn.Module, h: torch.Tensor) -> torch.Tensor:
    for name in style.mid:
        h = getattr(mid, name)(h)
    return h


# ----------------------------------------------------------------------------------------------------
# Encoder
# ----------------------------------------------------------------------------------------------------
class Encoder(nn.Module):
    """(B,in_channels,H,W) -> (B,z_channels (x2 if double_z),H/f,W/f), f = 2**(len(ch_mult)-1).

    Level i works at width ch*ch_mult[i] with `num_res_blocks` ResnetBlocks (each followed by an AttnBlock on the
    attention levels) and ends with a Downsample2x except at the last level.
    """

    def __init__(self, *, ch: int = 128, ch_mult: Sequence[int] = (1, 1, 2, 2, 4), num_res_blocks: int = 2,
                 dropout: float = 0.0, in_channels: int = 3, z_channels: int = 32, double_z: bool = False,
                 using_sa: bool = True, using_mid_sa: bool = True, attn_levels: Sequence[int] | None = None,
                 style: ConvBodyStyle = VAR_CONV_BODY):
        super().__init__()
        attn_at = _checked_attn_levels(ch, ch_mult, num_res_blocks, attn_levels, using_sa)
        self.style = style
        self.num_levels = len(ch_mult)
        self.downsample_ratio = 2 ** (self.num_levels - 1)

        self.conv_in = nn.Conv2d(in_channels, ch, kernel_size=3, stride=1, padding=1)
        stages = nn.ModuleList()
        setattr(self, style.encoder_stages, stages)
        width = ch
        for level, mult in enumerate(ch_mult):
            stage, width = _stage(style, width, ch * mult, num_res_blocks, dropout, level in attn_at)
            if level != self.num_levels - 1:
                stage.downsample = Downsample2x(width)
            stages.append(stage)

        self.mid = _middle(style, width, dropout, using_mid_sa)
        self.norm_out = group_norm(width)
        self.conv_out = nn.Conv2d(width, 2 * z_channels if double_z else z_channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for stage in getattr(self, self.style.encoder_stages):
            h = _run_stage(self.style, stage, h)
            if hasattr(stage, "downsample"):
                h = stage.downsample(h)
        h = _run_middle(self.style, self.mid, h)
        return self.conv_out(self.style.activation(self.norm_out(h)))


# ----------------------------------------------------------------------------------------------------
# Decoder
# ----------------------------------------------------------------------------------------------------
class Decoder(nn.Module):
    """(B,z_channels,h,w) -> (B,out_channels,h*f,w*f): the mirror of Encoder with num_res_blocks+1 blocks per level,
    run from the deepest level to full resolution."""

    def __init__(self, *, ch: int = 128, ch_mult: Sequence[int] = (1, 1, 2, 2, 4), num_res_blocks: int = 2,
                 dropout: float = 0.0, out_channels: int = 3, z_channels: int = 32,
                 using_sa: bool = True, using_mid_sa: bool = True, attn_levels: Sequence[int] | None = None,
                 style: ConvBodyStyle = VAR_CONV_BODY):
        super().__init__()
        attn_at = _checked_attn_levels(ch, ch_mult, num_res_blocks, attn_levels, using_sa)
        self.style = style
        self.num_levels = len(ch_mult)

        width = ch * ch_mult[-1]
        self.conv_in = nn.Conv2d(z_channels, width, kernel_size=3, stride=1, padding=1)
        self.mid = _middle(style, width, dropout, using_mid_sa)

        run_order: list[nn.Module] = []
        for level in reversed(range(self.num_levels)):  # built in execution order (deepest first)
            stage, width = _stage(style, width, ch * ch_mult[level], num_res_blocks + 1, dropout, level in attn_at)
            if level != 0:
                stage.upsample = Upsample2x(width)
            run_order.append(stage)
        # VAR keys up.0 .. up.{n-1} by level (the official state_dict order); LlamaGen keys them in run order.
        setattr(self, style.decoder_stages,
                nn.ModuleList(run_order[::-1] if style.decoder_stages_by_level else run_order))

        self.norm_out = group_norm(width)
        self.conv_out = nn.Conv2d(width, out_channels, kernel_size=3, stride=1, padding=1)

    def _stages_in_run_order(self):
        stages = getattr(self, self.style.decoder_stages)
        return reversed(stages) if self.style.decoder_stages_by_level else iter(stages)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = _run_middle(self.style, self.mid, self.conv_in(z))
        for stage in self._stages_in_run_order():
            h = _run_stage(self.style, stage, h)
            if hasattr(stage, "upsample"):
                h = stage.upsample(h)
        return self.conv_out(self.style.activation(self.norm_out(h)))
