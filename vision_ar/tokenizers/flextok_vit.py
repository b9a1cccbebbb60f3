"""The ViT pieces of FlexTok's encoder and decoder (apple/ml-flextok `model/`), one image per batch row.

The official code packs every image of a batch (and its registers) into one long sequence with a block-diagonal
FlexAttention mask and pads it to a multiple of 128. Attention never crosses images and padding never reaches a
real token, so here each image is one batch row instead, and rows whose register counts differ are padded
with keys masked out: the same numbers, without the packing bookkeeping.

Map:
  patchify / unpatchify        (B,h,w,C) <-> (B,h/p,w/p,p*p*C), patch vectors ordered (p_row, p_col, channel)
  sincos_2d_table              the fixed 2D sin-cos position table
  PositionalEmbedding          fixed 2D sin-cos or learned (sum/prod of per-axis tables), cropped or interpolated
  FlexAttention, FlexBlock     pre-norm block; optional adaLN-zero with one modulation set per subsequence
  FlexTransformer              the stack; can return hidden states of chosen layers (REPA)
  TimestepEmbedder             sinusoidal t-embedding + MLP (the decoder's adaLN condition)
  attention_mask               'full' / 'causal' / 'causal_last' masks over [prefix, last] subsequences

Numerics follow the official code: attention scale 8 / head_dim (muP), every norm a non-affine LayerNorm in fp32
(QK-norm over head_dim), modulate = x * (1 + scale) + shift.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..nn.adaln import modulate
from ..nn.attention import attend
from ..nn.drop_path import DropPath
from ..nn.mlp import FFN, GatedMLP
from ..nn.norms import fp32_layer_norm

ACTIVATIONS = {"silu": nn.SiLU, "gelu": nn.GELU}


# ----------------------------------------------------------------------------------------------------
# Patches
# ----------------------------------------------------------------------------------------------------
def patchify(x: torch.Tensor, patch_sizes: Sequence[int]) -> torch.Tensor:
    """(B, H, W, C) channels-last -> (B, H/ph, W/pw, ph*pw*C), each patch vector ordered (p_row, p_col, channel)."""
    b, h, w, c = x.shape
    ph, pw = patch_sizes
    if h % ph or w % pw:
        raise ConfigError(f"latent grid {h}x{w} is not divisible by the patch size {ph}x{pw}; use an image size "
                          f"whose latent is a multiple of the patch size")
    x = x.reshape(b, h // ph, ph, w // pw, pw, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h // ph, w // pw, ph * pw * c)


def unpatchify(x: torch.Tensor, patch_sizes: Sequence[int]) -> torch.Tensor:
    """(B, nh, nw, ph*pw*C) -> (B, nh*ph, nw*pw, C), the inverse of `patchify`."""
    b, nh, nw, d = x.shape
    ph, pw = patch_sizes
    c = d // (ph * pw)
    x = x.reshape(b, nh, nw, ph, pw, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, nh * ph, nw * pw, c)


# ----------------------------------------------------------------------------------------------------
# Positions
# ----------------------------------------------------------------------------------------------------
def sincos_2d_table(h: int, w: int, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """(1, dim, h, w) MoCo-v3 sin-cos table, laid out as the official one.

    Channels are [sin(a w_k), cos(a w_k), sin(b w_k), cos(b w_k)] with w_k = temperature^(-k / (dim/4)); table
    entry (r, c) is flat position n = r*w + c, and (a, b) = (n // h, n % h): the official code enumerates a (w, h)
    meshgrid and reshapes it as (h, w), so for square tables (a, b) = (r, c).
    """
    if dim % 4:
        raise ConfigError(f"a 2D sin-cos position table needs a width divisible by 4, got {dim}")
    n = torch.arange(h * w)
    a, b = (n // h).float(), (n % h).float()
    omega = 1.0 / (temperature ** (torch.arange(dim // 4, dtype=torch.float32) / (dim // 4)))
    out_a, out_b = a[:, None] * omega[None], b[:, None] * omega[None]
    table = torch.cat([out_a.sin(), out_a.cos(), out_b.sin(), out_b.cos()], dim=1)  # (h*w, dim)
    return table.T.reshape(1, dim, h, w).contiguous()


class PositionalEmbedding(nn.Module):
    """Position table `posembs` for an n-D grid of tokens, returned channels-last for a given grid shape.

    kinds: 'sincos' (2D, fixed; stored in the state_dict as the official code does), 'learnable_sum' /
    'learnable_prod' (one learned (dim, max) table per axis, broadcast-summed / multiplied; 1D uses axis 0).
    scaling: 'absolute' crops the table to the grid, 'interpolate' resizes it (bilinear, align_corners).
    """

    def __init__(self, dim: int, max_sizes: Sequence[int], kind: str = "sincos", scaling: str = "absolute"):
        super().__init__()
        self.dim, self.max_sizes, self.kind, self.scaling = int(dim), tuple(int(s) for s in max_sizes), kind, scaling
        if scaling not in ("absolute", "interpolate"):
            raise ConfigError(f"posemb_scaling must be 'absolute' or 'interpolate', got {scaling!r}")
        if kind == "sincos":
            if len(self.max_sizes) != 2:
                raise ConfigError(f"sin-cos positions are 2D only, got max_sizes {list(self.max_sizes)}")
            self.posembs = nn.Parameter(sincos_2d_table(*self.max_sizes, self.dim), requires_grad=False)
        elif kind in ("learnable_sum", "learnable_prod"):
            if len(set(self.max_sizes)) != 1 or len(self.max_sizes) not in (1, 2):
                raise ConfigError(f"learned positions need 1 or 2 equal max_sizes, got {list(self.max_sizes)}")
            self.posembs = nn.Parameter(torch.empty(len(self.max_sizes), 1, self.dim, self.max_sizes[0]))
            nn.init.trunc_normal_(self.posembs, std=0.02)
        else:
            raise ConfigError(f"unknown posemb_type {kind!r}; known: 'sincos', 'learnable_sum', 'learnable_prod'")

    def table(self, shape: Sequence[int]) -> torch.Tensor:
        """(1, *shape, dim) positions for a token grid of `shape`."""
        shape = tuple(int(s) for s in shape)
        if len(shape) != len(self.max_sizes):
            raise ConfigError(f"position table is {len(self.max_sizes)}D, the tokens are laid out {shape}")
        if self.kind == "sincos":
            pe = self.posembs
        elif len(self.max_sizes) == 1:
            pe = self.posembs[0]
        else:
            rows, cols = self.posembs[0].unsqueeze(-1), self.posembs[1].unsqueeze(-2)
            pe = rows * cols if self.kind == "learnable_prod" else rows + cols
        if self.scaling == "absolute":
            if any(s > m for s, m in zip(shape, self.max_sizes)):
                raise ConfigError(f"a token grid of {shape} exceeds the position table {self.max_sizes}; use a "
                                  f"smaller image or a model trained for this size")
            pe = pe[(slice(None), slice(None)) + tuple(slice(None, s) for s in shape)]
        else:
            mode = "bilinear" if len(shape) == 2 else "linear"
            pe = F.interpolate(pe, size=shape, mode=mode, align_corners=True)
        return pe.movedim(1, -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, *grid, dim) -> x + positions."""
        return x + self.table(x.shape[1:-1])


# ----------------------------------------------------------------------------------------------------
# Attention masks over [prefix subsequences..., last subsequence] per image
# ----------------------------------------------------------------------------------------------------
def attention_mask(mode: str, n_prefix: int, last_lengths: torch.Tensor, n_last_max: int) -> torch.Tensor | None:
    """Boolean (B, 1, L, L) mask (True = attend) for rows [n_prefix tokens, n_last_max tokens], or None.

    mode 'full': every token sees every token; 'causal': token i sees tokens <= i; 'causal_last' (prefix LM): the
    prefix tokens see the prefix, the last subsequence sees the prefix and its own tokens up to itself.
    Row b holds only last_lengths[b] real tokens of the last subsequence; its padding is never seen by a real
    token (padded queries see themselves, so no row of the softmax is empty).
    """
    L = n_prefix + n_last_max
    device = last_lengths.device
    q = torch.arange(L, device=device)[:, None]
    k = torch.arange(L, device=device)[None, :]
    if mode == "full":
        base = torch.ones(L, L, dtype=torch.bool, device=device)
    elif mode == "causal":
        base = k <= q
    elif mode == "causal_last":
        base = (k < n_prefix) | (k <= q)
    else:
        raise ConfigError(f"unknown attention mask_mode {mode!r}; known: 'full', 'causal', 'causal_last'")
    all_real = bool((last_lengths == n_last_max).all())
    if mode == "full" and all_real:
        return None
    valid = torch.arange(L, device=device)[None, :] < (n_prefix + last_lengths)[:, None]  # (B, L) real tokens
    mask = base[None] & valid[:, None, :]
    mask = mask | torch.eye(L, dtype=torch.bool, device=device)[None]
    return mask[:, None]


# ----------------------------------------------------------------------------------------------------
# Transformer
# ----------------------------------------------------------------------------------------------------
class FlexAttention(nn.Module):
    """Multi-head self-attention with FlexTok's key names (wq, wk, wv, proj), QK-norm and muP scale 8/head_dim."""

    def __init__(self, dim: int, head_dim: int, qkv_bias: bool = False, proj_bias: bool = False,
                 qk_norm: bool = True, proj_drop: float = 0.0):
        super().__init__()
        if dim % head_dim:
            raise ConfigError(f"transformer width {dim} is not a multiple of head_dim {head_dim}")
        self.num_heads, self.head_dim, self.qk_norm = dim // head_dim, head_dim, qk_norm
        self.wq = nn.Linear(dim, dim, bias=qkv_bias)
        self.wk = nn.Linear(dim, dim, bias=qkv_bias)
        self.wv = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim, bias=proj_bias)
        self.proj_drop = nn.Dropout(proj_drop) if proj_drop > 0 else nn.Identity()
        self.scale = 8.0 / head_dim  # muP scaling (= 1/sqrt(head_dim) at head_dim 64)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        b, n, _ = x.shape

        def heads(t):
            return t.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)

        q, k, v = heads(self.wq(x)), heads(self.wk(x)), heads(self.wv(x))
        if self.qk_norm:
            q, k = fp32_layer_norm(q), fp32_layer_norm(k)
        out = attend(q, k, v, attn_bias=mask, scale=self.scale)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(b, n, -1)))


class FlexBlock(nn.Module):
    """Pre-norm transformer block; with `adaLN_expansion` it is adaLN-zero modulated by a condition vector.

    adaLN: cond (B, D) -> SiLU -> Linear -> (B, expansion, 6D); token t uses set segments[t] (0 = patches,
    1 = registers when expansion is 2), split as gate_msa, gate_mlp, shift_msa, scale_msa, shift_mlp, scale_mlp.
    """

    def __init__(self, dim: int, head_dim: int, mlp_ratio: float = 4.0, gated_mlp: bool = True, act: str = "silu",
                 qkv_bias: bool = False, proj_bias: bool = False, mlp_bias: bool = False, qk_norm: bool = True,
                 drop: float = 0.0, drop_path: float = 0.0, adaLN_expansion: int | None = None):
        super().__init__()
        self.dim = dim
        self.attn = FlexAttention(dim, head_dim, qkv_bias, proj_bias, qk_norm, proj_drop=drop)
        hidden = int(dim * mlp_ratio)
        act_layer = ACTIVATIONS[act]
        self.mlp = (GatedMLP(dim, hidden, bias=mlp_bias, act_layer=act_layer, drop=drop) if gated_mlp
                    else FFN(dim, hidden, drop=drop, act_layer=act_layer, bias=mlp_bias))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.adaLN_expansion = adaLN_expansion
        if adaLN_expansion:
            self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, adaLN_expansion * 6 * dim))
            nn.init.zeros_(self.adaLN_modulation[1].weight)
            nn.init.zeros_(self.adaLN_modulation[1].bias)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, cond: torch.Tensor | None = None,
                segments: torch.Tensor | None = None) -> torch.Tensor:
        if not self.adaLN_expansion:
            x = x + self.drop_path(self.attn(fp32_layer_norm(x), mask))
            return x + self.drop_path(self.mlp(fp32_layer_norm(x)))
        mod = self.adaLN_modulation(cond).view(cond.shape[0], self.adaLN_expansion, 6 * self.dim)
        mod = mod[:, segments]  # (B, L, 6D): each token gets its subsequence's set
        gate_msa, gate_mlp, shift_msa, scale_msa, shift_mlp, scale_mlp = mod.chunk(6, dim=-1)
        x = x + gate_msa * self.drop_path(self.attn(modulate(fp32_layer_norm(x), scale_msa, shift_msa), mask))
        return x + gate_mlp * self.drop_path(self.mlp(modulate(fp32_layer_norm(x), scale_mlp, shift_mlp)))


class FlexTransformer(nn.Module):
    """`depth` FlexBlocks (key names `blocks.{i}.*`); drop-path rate rises linearly from 0 to drop_path_rate."""

    def __init__(self, dim: int, depth: int, head_dim: int, drop_path_rate: float = 0.0, init: str = "xavier",
                 zero_init_query_proj: bool = False, **block_kwargs):
        super().__init__()
        rates = [drop_path_rate * i / (depth - 1) if depth > 1 else 0.0 for i in range(depth)]
        self.blocks = nn.ModuleList([FlexBlock(dim, head_dim, drop_path=rates[i], **block_kwargs)
                                     for i in range(depth)])
        self.grad_checkpointing = False
        for name, m in self.named_modules():  # the official SP init: xavier (or trunc-normal) matrices, zero
            if isinstance(m, nn.Linear):      # biases and adaLN (and optionally zero query projections)
                if "adaLN_modulation" in name or (zero_init_query_proj and name.endswith(".wq")):
                    nn.init.zeros_(m.weight)
                elif init == "trunc_normal":
                    nn.init.trunc_normal_(m.weight, std=0.02)
                else:
                    nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, cond: torch.Tensor | None = None,
                segments: torch.Tensor | None = None, return_layers: Sequence[int] = ()):
        """x (B, L, D) -> output (B, L, D), or (output, [hidden after each layer in return_layers])."""
        hidden = []
        for i, block in enumerate(self.blocks):
            if self.grad_checkpointing and self.training:
                x = torch.utils.checkpoint.checkpoint(block, x, mask, cond, segments, use_reentrant=False)
            else:
                x = block(x, mask, cond, segments)
            if i in return_layers:
                hidden.append(x)
        return (x, hidden) if return_layers else x


# ----------------------------------------------------------------------------------------------------
# Time embedding
# ----------------------------------------------------------------------------------------------------
class TimestepEmbedder(nn.Module):
    """t (B,) in [0, max_timestep] -> (B, dim): [cos, sin] of t * freqs, then Linear-SiLU-Linear (`mlp.0`, `mlp.2`).

    freqs_k = (1000 / max_timestep) * exp(-ln(256) * k / half), k < half = frequency_embedding_size // 2 (the
    official max_period is 256 whatever the embedding size).
    """

    MAX_PERIOD = 256

    def __init__(self, dim: int, frequency_embedding_size: int = 256, max_timestep: float = 1000.0):
        super().__init__()
        self.frequency_embedding_size, self.max_timestep = int(frequency_embedding_size), float(max_timestep)
        self.mlp = nn.Sequential(nn.Linear(self.frequency_embedding_size, dim), nn.SiLU(), nn.Linear(dim, dim))
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def frequency_embedding(self, t: torch.Tensor) -> torch.Tensor:
        if bool((t > self.max_timestep).any()):
            raise ConfigError(f"timesteps must be <= max_timestep {self.max_timestep}, got max {float(t.max())}")
        half = self.frequency_embedding_size // 2
        freqs = (1000.0 / self.max_timestep) * torch.exp(
            -math.log(self.MAX_PERIOD) * torch.arange(half, dtype=torch.float32) / half).to(t.device)
        args = t[:, None].float() * freqs[None]
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        if self.frequency_embedding_size % 2:
            emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
        return emb

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.frequency_embedding(t))
