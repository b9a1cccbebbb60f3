"""VAR: visual autoregressive modelling by next-scale prediction (Tian et al., 2024).

An image is a pyramid of token maps, 1x1, 2x2, ... 16x16 (`patch_nums`), made by the multi-scale residual VQ-VAE
(vision_ar/tokenizers/multiscale.py). The transformer predicts all tokens of scale k at once, given the class and
every coarser scale: attention is causal *between* scales and full *within* a scale (block-causal mask).

    sequence  = [sos (class emb + pos_start)] + word_embed(upsampled f_hat of scales 0..S-2)   (B, L, C)
              + level embedding (which scale) + absolute position embedding
    blocks    = depth x (AdaLN -> self-attention -> gated residual; AdaLN -> FFN -> gated residual)
    head      = AdaLN -> Linear(C, V)                                                        (B, L, V)

Every block is conditioned on the class embedding through AdaLN; with `shared_aln` (VAR-d36) one projection
serves all blocks and each block adds its own learned offset.

Compatible with the official FoundationVision/VAR checkpoints: parameter names, shapes and state_dict order are the
official ones (buffers `lvl_1L`, `attn_bias_for_masking`, `blocks.*.attn.zero_k_bias` included), so
`var_d16.pth` ... `var_d36.pth` load strictly as they are (`VAR.from_official`).

This file holds the model only. Sampling (CFG, top-k/top-p, the scale loop) lives in
vision_ar/sampling/next_scale.py and talks to the model through the incremental API:

    var.start_inference(2 * B)                       # enable the per-layer static KV caches
    cond_BD = var.class_condition(labels_2B)         # (2B, C)
    x = var.first_scale_input(cond_BD)               # (2B, first_l, C)
    logits = var.forward_scale(x, cond_BD)           # (2B, pn_0^2, V), caches this scale's keys/values
    x = var.scale_input(si + 1, token_map_BlCv)      # (B, pn_{si+1}^2, C) from the VQ-VAE's next input
    ...
    var.end_inference()

Sections: config | attention | block | model | presets
"""
from __future__ import annotations

import dataclasses
import math
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.utils.checkpoint
import torch.nn.functional as F
from torch import nn

from ..conditioning import check_label_range
from ..errors import ConfigError
from ..io import PretrainedMixin, describe_source, load_state_dict_strict, read_official_checkpoint
from ..nn.adaln import AdaLNHeadNorm, AdaLNProjection, modulate
from ..nn.attention import attend
from ..nn.drop_path import DropPath
from ..nn.kv_cache import KVCache
from ..nn.mlp import FFN
from ..nn.quantized_linear import linear_with_bias
from ..registry import register_preset
from ..tokens import TokenLayout

PATCH_NUMS_256 = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
PATCH_NUMS_512 = (1, 2, 3, 4, 6, 9, 13, 18, 24, 32)


# ====================================================================================================
# Config
# ====================================================================================================
@dataclass
class VARConfig:
    """Constructor arguments of the official `VAR(...)` (same names), plus what VAR reads from its VQ-VAE."""

    # from the VQ-VAE (official VAR reads these from `vae_local`)
    vocab_size: int = 4096          # codebook size V = number of logits
    Cvae: int = 32                  # codebook vector width (VQ-VAE latent channels)
    # official VAR kwargs
    num_classes: int = 1000
    depth: int = 16
    embed_dim: int = 1024
    num_heads: int = 16
    mlp_ratio: float = 4.0
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    norm_eps: float = 1e-6
    shared_aln: bool = False
    cond_drop_rate: float = 0.1     # class dropout in training (teaches the unconditional model for CFG)
    attn_l2_norm: bool = False
    patch_nums: tuple = PATCH_NUMS_256
    flash_if_available: bool = True  # accepted for compatibility; SDPA picks the fastest kernel itself
    fused_if_available: bool = True  # accepted for compatibility; no fused kernels are used
    # weight init of the official builder (build_vae_var); only used for fresh models
    init_adaln: float = 0.5
    init_adaln_gamma: float = 1e-5
    init_head: float = 0.02
    init_std: float = -1.0          # < 0: sqrt(1 / (3 * embed_dim)), as the official builder

    def __post_init__(self):
        self.patch_nums = tuple(int(p) for p in self.patch_nums)
        positive = {"vocab_size": self.vocab_size, "Cvae": self.Cvae, "num_classes": self.num_classes,
                    "depth": self.depth, "embed_dim": self.embed_dim, "num_heads": self.num_heads}
        for name, value in positive.items():
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"VARConfig.{name} must be a positive integer, got {value!r}.")
        if self.embed_dim % self.num_heads:
            raise ConfigError(f"VARConfig.embed_dim={self.embed_dim} is not divisible by num_heads="
                              f"{self.num_heads}; pick num_heads that divides embed_dim (official: width = 64*depth, "
                              f"heads = depth).")
        if not self.patch_nums or any(p <= 0 for p in self.patch_nums):
            raise ConfigError(f"VARConfig.patch_nums must be a non-empty list of positive side lengths, got "
                              f"{self.patch_nums}; e.g. {PATCH_NUMS_256}.")
        if list(self.patch_nums) != sorted(set(self.patch_nums)):
            raise ConfigError(f"VARConfig.patch_nums must increase strictly (coarse to fine), got {self.patch_nums}.")
        for name in ("drop_rate", "attn_drop_rate", "drop_path_rate", "cond_drop_rate"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ConfigError(f"VARConfig.{name} must be in [0, 1), got {value}.")
        if self.mlp_ratio <= 0 or self.norm_eps <= 0:
            raise ConfigError(f"VARConfig.mlp_ratio and norm_eps must be > 0, got {self.mlp_ratio}, {self.norm_eps}.")

    # ---- derived sizes ----
    @property
    def L(self) -> int:
        """Total number of tokens over all scales."""
        return sum(pn * pn for pn in self.patch_nums)

    @property
    def first_l(self) -> int:
        return self.patch_nums[0] ** 2

    @property
    def num_scales(self) -> int:
        return len(self.patch_nums)

    @property
    def begin_ends(self) -> list[tuple[int, int]]:
        """[begin, end) positions of each scale in the flattened sequence."""
        out, cur = [], 0
        for pn in self.patch_nums:
            out.append((cur, cur + pn * pn))
            cur += pn * pn
        return out

    def replace(self, **overrides) -> "VARConfig":
        unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise ConfigError(f"unknown VARConfig fields {unknown}; known: {[f.name for f in dataclasses.fields(self)]}")
        return dataclasses.replace(self, **overrides)


# ====================================================================================================
# Attention: block-causal by scale in training (additive mask), KV-cached scale by scale at inference
# ====================================================================================================
def _max_log_scale() -> float:
    # Upper clamp of the learnable log-scale: log(100) computed in float32 as the official code does, so the
    # clamped value is bit-identical (the random-weight fixtures exercise the clamp). Explicit CPU device so that
    # building the model under `with torch.device("meta")` still gets a real number.
    return torch.log(torch.tensor(100.0, device="cpu")).item()


class ScaleSelfAttention(nn.Module):
    """Multi-head self-attention with VAR's parameterisation.

    - qkv bias is (q_bias, 0, v_bias): keys get no bias (`zero_k_bias` is a zero buffer, kept for checkpoints).
    - attn_l2_norm: q and k are L2-normalised per head and q is multiplied by a learned per-head scale
      exp(min(scale_mul_1H11, log 100)) (cosine attention); otherwise the softmax scale is 0.25 / sqrt(head_dim).
    """

    def __init__(self, embed_dim: int, num_heads: int, attn_drop: float = 0.0, proj_drop: float = 0.0,
                 attn_l2_norm: bool = False):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, embed_dim // num_heads
        self.attn_l2_norm = attn_l2_norm
        if attn_l2_norm:
            self.scale = 1.0
            self.scale_mul_1H11 = nn.Parameter(torch.full((1, num_heads, 1, 1), 4.0).log())
            self.max_scale_mul = _max_log_scale()
        else:
            self.scale = 0.25 / math.sqrt(self.head_dim)
        self.mat_qkv = nn.Linear(embed_dim, 3 * embed_dim, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(embed_dim))
        self.v_bias = nn.Parameter(torch.zeros(embed_dim))
        self.register_buffer("zero_k_bias", torch.zeros(embed_dim))
        self.proj = nn.Linear(embed_dim, embed_dim)
        self.proj_drop = nn.Dropout(proj_drop) if proj_drop > 0 else nn.Identity()
        self.attn_drop = attn_drop
        # inference only: a static cache for (batch, max_len) allocated at the first cached step
        self.caching = False
        self.cache: KVCache | None = None
        self.cache_batch = self.cache_len = 0

    def enable_cache(self, batch: int, max_len: int, dtype: torch.dtype | None = None, device=None) -> None:
        """Start caching; with `dtype` the cache is allocated now (compiled steps must not allocate it)."""
        self.caching, self.cache, self.cache_batch, self.cache_len = True, None, batch, max_len
        if dtype is not None:
            self.cache = KVCache(batch, self.num_heads, max_len, self.head_dim, dtype=dtype, device=device)

    def disable_cache(self) -> None:
        self.caching, self.cache = False, None

    def forward(self, x: torch.Tensor, attn_bias: torch.Tensor | None) -> torch.Tensor:
        B, L, C = x.shape
        bias = torch.cat((self.q_bias, self.zero_k_bias, self.v_bias))
        qkv = linear_with_bias(self.mat_qkv, x, bias).view(B, L, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, L, head_dim)
        if self.attn_l2_norm:
            scale_mul = self.scale_mul_1H11.clamp_max(self.max_scale_mul).exp()
            q = F.normalize(q, dim=-1).mul(scale_mul)
            k = F.normalize(k, dim=-1)
        if self.caching:
            if self.cache is None:
                if B != self.cache_batch:
                    raise ConfigError(f"KV cache was started for batch {self.cache_batch} but got batch {B}; call "
                                      f"start_inference with the batch the model is run on (2*B with CFG).")
                self.cache = KVCache(B, self.num_heads, self.cache_len, self.head_dim, dtype=k.dtype, device=k.device)
            k, v = self.cache.append(k, v)  # keys/values of every scale so far: no mask needed
        dropout_p = self.attn_drop if self.training else 0.0
        out = attend(q, k, v, attn_bias=attn_bias, scale=self.scale, dropout_p=dropout_p)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(B, L, C)))


# ====================================================================================================
# Transformer block
# ====================================================================================================
class NextScaleBlock(nn.Module):
    """AdaLN self-attention block: x += g1 * attn(LN(x)(1+s1)+b1);  x += g2 * ffn(LN(x)(1+s2)+b2)."""

    def __init__(self, embed_dim: int, cond_dim: int, num_heads: int, mlp_ratio: float, shared_aln: bool,
                 norm_eps: float, drop: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0,
                 attn_l2_norm: bool = False):
        super().__init__()
        self.C, self.shared_aln = embed_dim, shared_aln
        # Attribute order matters: it fixes the state_dict order (ada_gss is a parameter so it comes first).
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.attn = ScaleSelfAttention(embed_dim, num_heads, attn_drop=attn_drop, proj_drop=drop,
                                       attn_l2_norm=attn_l2_norm)
        self.ffn = FFN(embed_dim, round(embed_dim * mlp_ratio), drop=drop)
        self.ln_wo_grad = nn.LayerNorm(embed_dim, eps=norm_eps, elementwise_affine=False)
        if shared_aln:
            self.ada_gss = nn.Parameter(torch.randn(1, 1, 6, embed_dim) / embed_dim ** 0.5)
        else:
            self.ada_lin = AdaLNProjection(cond_dim, embed_dim, n=6)

    def modulation(self, cond: torch.Tensor) -> torch.Tensor:
        """The six AdaLN vectors (B, 1, 6, C) of this block for `cond` (see forward)."""
        return (self.ada_gss + cond) if self.shared_aln else self.ada_lin(cond)

    def forward(self, x: torch.Tensor, cond: torch.Tensor, attn_bias: torch.Tensor | None,
                mod: torch.Tensor | None = None) -> torch.Tensor:
        """cond: (B, D) class embedding, or with shared_aln the shared projection's (B, 1, 6, C);
        mod: this block's `modulation(cond)` when the caller already has it (sampling reuses it every scale)."""
        mod = self.modulation(cond) if mod is None else mod
        gamma1, gamma2, scale1, scale2, shift1, shift2 = mod.unbind(2)  # each (B, 1, C)
        h = self.attn(modulate(self.ln_wo_grad(x), scale1, shift1), attn_bias=attn_bias)
        x = x + self.drop_path(h.mul_(gamma1))
        h = self.ffn(modulate(self.ln_wo_grad(x), scale2, shift2))
        return x + self.drop_path(h.mul(gamma2))


# ====================================================================================================
# Model
# ====================================================================================================
def _autocast_dtype(device: torch.device) -> torch.dtype | None:
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return None


class VAR(PretrainedMixin, nn.Module):
    config_class = VARConfig
    preset_family = "var"

    def __init__(self, config: VARConfig):
        super().__init__()
        if not isinstance(config, VARConfig):
            raise ConfigError(f"VAR takes a VARConfig, got {type(config).__name__}; build one with VARConfig(...) "
                              f"or use vision_ar.registry.create('var-d16').")
        self.config = cfg = config
        C, L, S = cfg.embed_dim, cfg.L, cfg.num_scales
        self.num_classes, self.V, self.Cvae, self.C = cfg.num_classes, cfg.vocab_size, cfg.Cvae, C
        self.patch_nums, self.L, self.first_l, self.begin_ends = cfg.patch_nums, L, cfg.first_l, cfg.begin_ends

        # Registration order below = official state_dict order (own params, own buffers, then submodules).
        # ---- embeddings ----
        self.pos_start = nn.Parameter(torch.empty(1, cfg.first_l, C))  # start-of-sequence position
        self.pos_1LC = nn.Parameter(torch.empty(1, L, C))  # absolute position of every token of every scale
        # lvl_1L[0, i] = scale of position i; the block-causal mask lets position i see j iff scale(j) <= scale(i)
        lvl = torch.cat([torch.full((pn * pn,), i) for i, pn in enumerate(cfg.patch_nums)]).view(1, L)
        self.register_buffer("lvl_1L", lvl.contiguous())
        mask = torch.where(lvl.view(1, L, 1) >= lvl.view(1, 1, L), 0.0, -torch.inf).reshape(1, 1, L, L)
        self.register_buffer("attn_bias_for_masking", mask.contiguous())
        self.word_embed = nn.Linear(cfg.Cvae, C)  # VQ-VAE features -> transformer width
        self.class_emb = nn.Embedding(cfg.num_classes + 1, C)  # last row = null class (for CFG)
        self.lvl_embed = nn.Embedding(S, C)

        # ---- backbone ----
        self.shared_ada_lin = AdaLNProjection(C, C, n=6) if cfg.shared_aln else nn.Identity()
        dpr = [x.item() for x in torch.linspace(0, cfg.drop_path_rate, cfg.depth, device="cpu")]  # linear decay
        self.blocks = nn.ModuleList([
            NextScaleBlock(C, C, cfg.num_heads, cfg.mlp_ratio, cfg.shared_aln, cfg.norm_eps, drop=cfg.drop_rate,
                           attn_drop=cfg.attn_drop_rate, drop_path=dpr[i], attn_l2_norm=cfg.attn_l2_norm)
            for i in range(cfg.depth)
        ])

        # ---- head ----
        self.head_nm = AdaLNHeadNorm(C, C, eps=cfg.norm_eps)
        self.head = nn.Linear(C, cfg.vocab_size)
        self._mods_cond = self._mods = None  # inference: AdaLN vectors of the current condition
        self._compiled_blocks = None  # compile_scales
        self.init_weights()

    # ------------------------------------------------------------------------------------------------
    # init (official build_vae_var scheme; checkpoints overwrite it)
    # ------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def init_weights(self) -> None:
        cfg, C = self.config, self.C
        emb_std = math.sqrt(1 / C / 3)
        std = cfg.init_std if cfg.init_std >= 0 else emb_std
        for p in (self.pos_start, self.pos_1LC):
            nn.init.trunc_normal_(p, mean=0, std=emb_std)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=std)
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, nn.Embedding):
                nn.init.trunc_normal_(m.weight, std=std)
        if cfg.init_head >= 0:
            self.head.weight.mul_(cfg.init_head)
            self.head.bias.zero_()
        self.head_nm.ada_lin[-1].weight.mul_(cfg.init_adaln)
        for block in self.blocks:
            # scale residual branches by depth (GPT-2); gates start near 0 so each block starts near identity
            block.attn.proj.weight.div_(math.sqrt(2 * cfg.depth))
            block.ffn.fc2.weight.div_(math.sqrt(2 * cfg.depth))
            if cfg.shared_aln:
                block.ada_gss[:, :, 2:].mul_(cfg.init_adaln)
                block.ada_gss[:, :, :2].mul_(cfg.init_adaln_gamma)
            else:
                block.ada_lin[-1].weight[2 * C:].mul_(cfg.init_adaln)
                block.ada_lin[-1].weight[:2 * C].mul_(cfg.init_adaln_gamma)

    # ------------------------------------------------------------------------------------------------
    # input checks
    # ------------------------------------------------------------------------------------------------
    def check_labels(self, label_B: torch.Tensor, allow_null: bool = True) -> None:
        if not isinstance(label_B, torch.Tensor) or label_B.ndim != 1 or label_B.dtype.is_floating_point:
            raise ConfigError(f"class labels must be a 1-D integer tensor (B,), got "
                              f"{getattr(label_B, 'shape', type(label_B))}; pass torch.tensor([207, 360]).")
        if label_B.numel():
            check_label_range(label_B.tolist(), self.num_classes, allow_null=allow_null)

    def _check_teacher_input(self, label_B: torch.Tensor, x: torch.Tensor) -> None:
        want = (self.L - self.first_l, self.Cvae)
        if not isinstance(x, torch.Tensor) or x.ndim != 3 or tuple(x.shape[1:]) != want:
            raise ConfigError(f"x_BLCv_wo_first_l must be (B, {want[0]}, {want[1]}) = (batch, L - first_l, Cvae) "
                              f"for patch_nums={self.patch_nums}, got {tuple(getattr(x, 'shape', ()))}; build it "
                              f"with vae.quantize.idx_to_var_input(idx_list).")
        self.check_labels(label_B)
        if label_B.shape[0] != x.shape[0]:
            raise ConfigError(f"label_B has {label_B.shape[0]} labels but x_BLCv_wo_first_l has batch {x.shape[0]}; "
                              f"give one label per image.")

    # ------------------------------------------------------------------------------------------------
    # shared pieces
    # ------------------------------------------------------------------------------------------------
    def level_position(self, begin: int, end: int) -> torch.Tensor:
        """Level + absolute position embedding of positions [begin, end): (1, end - begin, C)."""
        return self.lvl_embed(self.lvl_1L[:, begin:end]) + self.pos_1LC[:, begin:end]

    def get_logits(self, h_BLC: torch.Tensor, cond_BD: torch.Tensor,
                   head_mod: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        return self.head(self.head_nm(h_BLC.float(), cond_BD, head_mod).float()).float()

    def _run_blocks(self, x_BLC: torch.Tensor, cond_BD: torch.Tensor, attn_bias: torch.Tensor | None,
                    mods: tuple[list[torch.Tensor], tuple] | None = None):
        """`mods`: every block's modulation and the head's, when already computed for cond_BD."""
        cond = self.shared_ada_lin(cond_BD) if mods is None else None
        block_mods, head_mod = mods if mods is not None else ([None] * len(self.blocks), None)
        dtype = _autocast_dtype(x_BLC.device)
        if dtype is not None:  # mixed precision: keep the residual stream, mask and modulation in one dtype
            x_BLC = x_BLC.to(dtype)
            cond = cond.to(dtype) if cond is not None else None
            block_mods = [m.to(dtype) if m is not None else None for m in block_mods]
            attn_bias = attn_bias.to(dtype) if attn_bias is not None else None
        for block, mod in zip(self.blocks, block_mods):
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                # recompute the block in backward instead of storing its activations (memory for compute)
                x_BLC = torch.utils.checkpoint.checkpoint(block, x_BLC, cond, attn_bias, use_reentrant=False)
            else:
                x_BLC = block(x_BLC, cond, attn_bias, mod)
        return self.get_logits(x_BLC, cond_BD, head_mod)

    def _scale_modulations(self, cond_BD: torch.Tensor) -> tuple[list[torch.Tensor], tuple]:
        """AdaLN vectors of every block and of the head for cond_BD, computed once per sampling run: the class
        condition is the same at every scale, and recomputing them read every AdaLN weight once per scale."""
        if self._mods_cond is not cond_BD:
            cond = self.shared_ada_lin(cond_BD)
            self._mods = ([b.modulation(cond) for b in self.blocks], self.head_nm.modulation(cond_BD))
            self._mods_cond = cond_BD
        return self._mods

    grad_checkpointing = False

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Activation checkpointing per block (the training loop's `grad_checkpointing` switch)."""
        self.grad_checkpointing = bool(enable)

    # ------------------------------------------------------------------------------------------------
    # teacher forcing (training)
    # ------------------------------------------------------------------------------------------------
    def forward(self, label_B: torch.Tensor, x_BLCv_wo_first_l: torch.Tensor,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """Logits (B, L, V) for every position of every scale, given the class and the coarser scales.

        label_B (B,) int64 (num_classes = unconditional); x_BLCv_wo_first_l (B, L - first_l, Cvae) from
        `vae.quantize.idx_to_var_input`. In training mode labels are replaced by the null class with probability
        cond_drop_rate (one torch.rand(B) from `generator`, or the global RNG when None). Unlike the official code,
        eval mode never drops labels.
        """
        self._check_teacher_input(label_B, x_BLCv_wo_first_l)
        B = x_BLCv_wo_first_l.shape[0]
        if self.training and self.config.cond_drop_rate > 0:
            drop = torch.rand(B, device=label_B.device, generator=generator) < self.config.cond_drop_rate
            label_B = torch.where(drop, self.num_classes, label_B)
        cond_BD = self.class_emb(label_B)
        sos = cond_BD.unsqueeze(1).expand(B, self.first_l, -1) + self.pos_start.expand(B, self.first_l, -1)
        x_BLC = torch.cat((sos, self.word_embed(x_BLCv_wo_first_l.float())), dim=1)
        x_BLC = x_BLC + self.level_position(0, self.L)
        return self._run_blocks(x_BLC, cond_BD, self.attn_bias_for_masking)

    # ------------------------------------------------------------------------------------------------
    # incremental inference (used by vision_ar.sampling.next_scale)
    # ------------------------------------------------------------------------------------------------
    @property
    def rows_per_image_step(self) -> int:
        """Activation rows per image of an average sampling forward (both CFG halves of a mean-sized scale):
        what vision_ar.precision measures the reduced-precision kernels at."""
        return 2 * self.L // len(self.patch_nums)

    def start_inference(self, batch_size: int) -> None:
        """Enable the static KV caches (L positions each) for a batch of `batch_size` rows (2*B with CFG)."""
        self._mods_cond = self._mods = None
        # Compiled scales write into caches allocated here; the eager path allocates at the first scale, in
        # the dtype the keys then have (autocast or not).
        eager = self._compiled_blocks is None
        dtype = None if eager else (_autocast_dtype(self.pos_1LC.device) or self.pos_1LC.dtype)
        for block in self.blocks:
            block.attn.enable_cache(batch_size, self.L, dtype=dtype, device=self.pos_1LC.device)
        if not eager and self.pos_1LC.device.type == "cuda":
            from ..nn.compile import mark_static

            mark_static(*(t for b in self.blocks for t in (b.attn.cache.k, b.attn.cache.v)))

    def select_cache_rows(self, rows: torch.Tensor) -> None:
        """Cache row b becomes a copy of row rows[b] in every block (particle resampling while editing)."""
        for block in self.blocks:
            if block.attn.cache is not None:
                block.attn.cache.select_rows(rows)

    def end_inference(self) -> None:
        """Disable and free the KV caches."""
        self._mods_cond = self._mods = None
        for block in self.blocks:
            block.attn.disable_cache()

    @contextmanager
    def inference(self, batch_size: int) -> Iterator["VAR"]:
        self.start_inference(batch_size)
        try:
            yield self
        finally:
            self.end_inference()

    def class_condition(self, label_B: torch.Tensor) -> torch.Tensor:
        """(B,) labels (num_classes = unconditional) -> (B, C) class embeddings: the AdaLN condition and sos."""
        self.check_labels(label_B)
        return self.class_emb(label_B)

    def first_scale_input(self, cond_BD: torch.Tensor) -> torch.Tensor:
        """Input of scale 0: class embedding + pos_start + level/position embedding, (B, first_l, C)."""
        B = cond_BD.shape[0]
        sos = cond_BD.unsqueeze(1).expand(B, self.first_l, -1) + self.pos_start.expand(B, self.first_l, -1)
        return sos + self.level_position(0, self.first_l)

    def scale_input(self, si: int, token_map_BlCv: torch.Tensor) -> torch.Tensor:
        """Input of scale si >= 1 from the VQ-VAE's next input map (B, pn_si^2, Cvae) -> (B, pn_si^2, C)."""
        if not 1 <= si < len(self.patch_nums):
            raise ConfigError(f"scale index {si} out of range 1..{len(self.patch_nums) - 1} (scale 0 is the class "
                              f"token: use first_scale_input).")
        begin, end = self.begin_ends[si]
        if token_map_BlCv.ndim != 3 or tuple(token_map_BlCv.shape[1:]) != (end - begin, self.Cvae):
            raise ConfigError(f"scale {si} input must be (B, {end - begin}, {self.Cvae}), got "
                              f"{tuple(token_map_BlCv.shape)}.")
        return self.word_embed(token_map_BlCv) + self.level_position(begin, end)

    def forward_scale(self, x_BlC: torch.Tensor, cond_BD: torch.Tensor) -> torch.Tensor:
        """Logits (B, l, V) of the next scale's tokens; appends this scale's keys/values to the KV caches.

        Scales must be fed in order, each once; the caches make earlier scales visible without a mask.
        """
        if not self.blocks[0].attn.caching:
            raise ConfigError("forward_scale needs the KV caches: call var.start_inference(batch_size) first "
                              "(or use `with var.inference(batch_size):`).")
        run = self._compiled_blocks or self._run_blocks
        return run(x_BlC, cond_BD, None, self._scale_modulations(cond_BD))

    def compile_scales(self, mode: str | None = None, backend: str = "inductor") -> None:
        """Run every scale's blocks + head through torch.compile (one graph per scale: each has its own shapes
        and cache length; on a GPU captured as CUDA graphs by default). Falls back to eager with one warning
        where this machine cannot compile. Values within float rounding of the eager path."""
        from ..nn.compile import compiled

        # one graph per scale (and per CFG batch): raise dynamo's per-function recompile limit to fit them
        limit = 4 * len(self.patch_nums)
        if torch._dynamo.config.cache_size_limit < limit:
            torch._dynamo.config.cache_size_limit = limit
        self._compiled_blocks = compiled(self._run_blocks, self.pos_1LC.device, mode, what="VAR scale step",
                                         backend=backend)

    @property
    def token_layout(self) -> TokenLayout:
        """The per-scale token pyramid this VAR predicts (coarse to fine)."""
        return TokenLayout.pyramid(self.patch_nums, vocab_size=self.V)

    # ------------------------------------------------------------------------------------------------
    # official checkpoints
    # ------------------------------------------------------------------------------------------------
    @classmethod
    def from_official(cls, path_or_state_dict, config: VARConfig | str = "var-d16", **overrides) -> "VAR":
        """Load an official `var_d{16,20,24,30,36}.pth` (a plain state_dict; or the dict itself) into the matching
        preset (or a VARConfig), strictly. Eval mode, on the CPU.

        `overrides` change preset fields (e.g. cond_drop_rate, or sizes for a checkpoint of another shape).
        The model is built on the meta device and the checkpoint tensors are assigned, so nothing is allocated
        twice and no time is spent on a random init.
        """
        name = config if isinstance(config, str) else "config"
        config = cls.official_model_config(config, overrides)  # a wrong preset is reported before any reading
        sd = read_official_checkpoint(path_or_state_dict, what=f"VAR checkpoint ({name})")
        with torch.device("meta"):
            if isinstance(config, str):
                from ..registry import create

                model = create(config, **overrides)
            else:
                model = cls(config)
        with warnings.catch_warnings():  # the strict check's copy into meta tensors is a (warned) no-op
            warnings.filterwarnings("ignore", message=".*copying from a non-meta parameter.*")
            load_state_dict_strict(model, sd, what=describe_source(path_or_state_dict))  # every mismatch at once
        model.load_state_dict(sd, strict=True, assign=True)  # the checkpoint tensors become the weights
        return model.eval()


# ====================================================================================================
# Presets (official build_vae_var: width = 64 * depth, heads = depth, drop_path = 0.1 * depth / 24,
# attn_l2_norm on; VQ-VAE V=4096, Cvae=32). d36 is the 512px model with shared AdaLN.
# ====================================================================================================
def var_config_for_depth(depth: int, patch_nums=PATCH_NUMS_256, shared_aln: bool = False) -> VARConfig:
    return VARConfig(vocab_size=4096, Cvae=32, num_classes=1000, depth=depth, embed_dim=64 * depth, num_heads=depth,
                     mlp_ratio=4.0, drop_rate=0.0, attn_drop_rate=0.0, drop_path_rate=0.1 * depth / 24,
                     norm_eps=1e-6, shared_aln=shared_aln, cond_drop_rate=0.1, attn_l2_norm=True,
                     patch_nums=tuple(patch_nums))


def _register(name: str, depth: int, patch_nums=PATCH_NUMS_256, shared_aln: bool = False, desc: str = ""):
    @register_preset(name, family="var", description=desc)
    def build(**overrides) -> VAR:
        return VAR(var_config_for_depth(depth, patch_nums, shared_aln).replace(**overrides))

    return build


var_d16 = _register("var-d16", 16, desc="VAR-d16, 256px, 310M params")
var_d20 = _register("var-d20", 20, desc="VAR-d20, 256px, 600M params")
var_d24 = _register("var-d24", 24, desc="VAR-d24, 256px, 1.0B params")
var_d30 = _register("var-d30", 30, desc="VAR-d30, 256px, 2.0B params")
var_d36 = _register("var-d36", 36, PATCH_NUMS_512, shared_aln=True, desc="VAR-d36, 512px, shared AdaLN, 2.3B params")


@register_preset("var-fmnist", family="var",
                 description="small VAR for 32x32 Fashion-MNIST (10 classes) on var-vqvae-fmnist codes")
def var_fmnist(**overrides) -> VAR:
    # Narrow and shallow so that it trains on 2 CPU cores in under an hour; patch_nums match var-vqvae-fmnist.
    cfg = VARConfig(vocab_size=1024, Cvae=32, num_classes=10, depth=5, embed_dim=192, num_heads=3,
                    mlp_ratio=4.0, drop_path_rate=0.0, cond_drop_rate=0.1, attn_l2_norm=True,
                    patch_nums=(1, 2, 3, 4, 6, 8))
    return VAR(cfg.replace(**overrides))
