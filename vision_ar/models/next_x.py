"""xAR: next-X prediction with a flow-matching objective at every autoregressive step (Ren et al., 2025).

A KL-VAE latent (B, C, h, w) is cut into *entities* (vision_ar/models/entities.py: token, k x k cell,
subsample, scale, whole image). The network predicts, for each entity at once, the flow velocity of its tokens:

    x_t      = (1 - t) x + t noise            one time t per entity, t ~ sigmoid(N(0, 1)) (logit-normal)
    target   = noise - x                      (velocity of the linear interpolation path)
    loss     = mean (v_theta(x_t, t, class) - target)^2

Attention is block-causal over entities, so entity k sees entities < k and itself. With Noisy Context Learning
(`noisy_context=True`, the official training) every entity of the sequence is noisy at its own time, i.e. the
model is trained to continue from *noisy* contexts; at sampling time the context is the generated, clean
entities, fed with t = 0. `noisy_context=False` is the teacher-forcing ablation: the sequence is
[clean entities | noisy entities] and a noisy entity sees the clean entities before it and itself.

    tokens (B, L, C) ─ z_proj (+ pos) ─ RMSNorm ─ encoder blocks ─ RMSNorm ─ decoder_embed (+ pos)
                     ─ decoder blocks ─ RMSNorm ─ pred ─▶ velocity (B, L, C)
    block: AdaLN(class + time of the token's entity) -> RMSNorm -> self-attention (2D RoPE, block-causal) ->
           gated residual; AdaLN -> RMSNorm -> gated GELU MLP -> gated residual

Compatible with the official OliverRensu/xAR checkpoints (`xAR-B/L/H.pth`, cell entities of 8x8 tokens on the
16x16 KL-16 grid): same keys, shapes and persistent buffers (`mask`, `*.attn.rope.freqs{,_cos,_sin}`), loaded
strictly by `XAR.from_official_checkpoint`. The buffers encode the entity layout, so a checkpoint trained with
another entity type is named as such before anything is loaded.

This file holds the model only; sampling (the per-entity ODE / SDE, CFG, KV cache across entities) lives in
vision_ar/sampling/flow.py and talks to the model through

    model.start_inference(rows)                                   # one static KV cache per attention layer
    v = model.entity_velocity(x, labels, t, entity=k, previous=clean_entities_so_far, commit=first_step)
    model.end_inference()

Sections: config | draws | attention + block | model | presets
"""
from __future__ import annotations

import dataclasses
import json
import math
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.utils.checkpoint
from torch import nn

from ..conditioning import check_label_range
from ..errors import CheckpointError, ConfigError, MissingFileError
from ..io import (CONFIG_NAME, WEIGHTS_NAME, PretrainedMixin, load_checkpoint, load_state_dict_strict,
                  unwrap_state_dict)
from ..nn.adaln import AdaLNProjection, modulate
from ..nn.attention import attend
from ..nn.kv_cache import KVCache
from ..nn.mlp import GatedFFN
from ..nn.norms import RMSNorm
from ..nn.rope import apply_rope
from ..nn.timestep import TimestepEmbedder
from ..registry import register_preset
from ..tokens import TokenLayout
from .entities import ENTITY_TYPES, EntityLayout, EntitySpec, candidate_specs

TIME_INDEX_SCALE = 1000  # the network sees the integer floor(t * 1000), as the official code


# ====================================================================================================
# Config
# ====================================================================================================
@dataclass
class XARConfig:
    """Official `xAR(...)` arguments (same names where they exist) plus the entity type."""

    latent_channels: int = 16          # official vae_embed_dim
    grid_size: int = 16                # latent side = img_size // vae_stride (official 256 // 16)
    num_classes: int = 1000            # class id num_classes is the null class (CFG)
    encoder_embed_dim: int = 1024
    encoder_depth: int = 16
    encoder_num_heads: int = 16
    decoder_embed_dim: int = 1024
    decoder_depth: int = 16
    decoder_num_heads: int = 16
    mlp_ratio: float = 4.0
    label_drop_prob: float = 0.1       # training: class replaced by the null class (teaches CFG's uncond model)
    attn_dropout: float = 0.0
    proj_dropout: float = 0.0
    entity: str = "cell"               # token | cell | subsample | scale | image
    entity_size: int = 8               # cell / subsample: k x k tokens per entity (must tile the grid)
    scales: tuple = ()                 # scale entity: sides coarse to fine (() = 1, 2, 4, ..., grid_size)
    noisy_context: bool = True         # Noisy Context Learning (official); False = teacher forcing
    time_mu: float = 0.0               # per-entity time t = sigmoid(N(time_mu, time_sigma))
    time_sigma: float = 1.0
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6
    timestep_freq_dim: int = 256

    def __post_init__(self):
        self.scales = tuple(int(s) for s in self.scales)
        ints = {"latent_channels": self.latent_channels, "grid_size": self.grid_size,
                "num_classes": self.num_classes, "encoder_embed_dim": self.encoder_embed_dim,
                "encoder_depth": self.encoder_depth, "encoder_num_heads": self.encoder_num_heads,
                "decoder_embed_dim": self.decoder_embed_dim, "decoder_depth": self.decoder_depth,
                "decoder_num_heads": self.decoder_num_heads, "timestep_freq_dim": self.timestep_freq_dim}
        for name, value in ints.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"XARConfig.{name} must be a positive integer, got {value!r}")
        if self.encoder_embed_dim != self.decoder_embed_dim:
            raise ConfigError(f"XARConfig: encoder_embed_dim ({self.encoder_embed_dim}) must equal decoder_embed_dim "
                              f"({self.decoder_embed_dim}): every block is conditioned on one class+time vector.")
        for width, heads, part in ((self.encoder_embed_dim, self.encoder_num_heads, "encoder"),
                                   (self.decoder_embed_dim, self.decoder_num_heads, "decoder")):
            if width % heads or (width // heads) % 4:
                raise ConfigError(f"XARConfig: {part} width {width} / {heads} heads must give a head_dim divisible "
                                  f"by 4 (2D RoPE: half the pairs for rows, half for columns).")
        if self.entity not in ENTITY_TYPES:
            raise ConfigError(f"XARConfig.entity must be one of {', '.join(ENTITY_TYPES)}, got {self.entity!r}")
        for name in ("label_drop_prob", "attn_dropout", "proj_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"XARConfig.{name} must be in [0, 1), got {getattr(self, name)}")
        if self.time_sigma <= 0 or self.mlp_ratio <= 0 or self.norm_eps <= 0:
            raise ConfigError("XARConfig: time_sigma, mlp_ratio and norm_eps must be > 0")
        self.layout()  # an entity size that does not tile the grid fails here, before any weight exists

    def entity_spec(self) -> EntitySpec:
        return EntitySpec(self.entity, int(self.entity_size), tuple(self.scales))

    def layout(self) -> EntityLayout:
        return EntityLayout(self.entity_spec(), (self.grid_size, self.grid_size))

    @property
    def null_class(self) -> int:
        return self.num_classes

    @classmethod
    def from_official_kwargs(cls, kwargs: dict, **extra) -> "XARConfig":
        """The official `xAR(img_size=..., vae_stride=..., ...)` keyword arguments -> XARConfig.

        The official model cuts the grid into `clusters` (default 4) square cells, i.e. cell entities of side
        grid / sqrt(clusters); its patch_size must be 1 (the forward pass never patchifies)."""
        kw = dict(kwargs)
        if kw.get("patch_size", 1) != 1:
            raise ConfigError(f"official xAR with patch_size={kw['patch_size']} is not supported (its forward "
                              f"pass clusters the raw latent); use patch_size=1.")
        grid = kw.get("img_size", 256) // kw.get("vae_stride", 16)
        per_side = math.isqrt(kw.get("clusters", 4))
        if per_side * per_side != kw.get("clusters", 4) or grid % per_side:
            raise ConfigError(f"clusters={kw.get('clusters')} must be a square number of cells that tiles the "
                              f"{grid}x{grid} grid")
        known = {"encoder_embed_dim", "encoder_depth", "encoder_num_heads", "decoder_embed_dim", "decoder_depth",
                 "decoder_num_heads", "mlp_ratio", "label_drop_prob", "attn_dropout", "proj_dropout"}
        fields = {k: v for k, v in kw.items() if k in known}
        fields.update(latent_channels=kw.get("vae_embed_dim", 16), grid_size=grid,
                      num_classes=kw.get("class_num", 1000), entity="cell", entity_size=grid // per_side)
        return cls(**{**fields, **extra})

    def replace(self, **overrides) -> "XARConfig":
        unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise ConfigError(f"unknown XARConfig fields {unknown}; known: {[f.name for f in dataclasses.fields(self)]}")
        return dataclasses.replace(self, **overrides)


# ====================================================================================================
# Random draws of one training step (injectable, so the official RNG order can be replayed)
# ====================================================================================================
@dataclass
class FlowDraws:
    """Everything random in one training forward.

    drop_u  (B,)        uniform draws; the class is dropped where drop_u < label_drop_prob
    t       (K*B,)      per-entity times, ENTITY-MAJOR as the official code: t[k * B + b] = entity k of sample b
    noise   K x (B, n_k, C)  the noise of each entity, in entity order
    """

    drop_u: torch.Tensor
    t: torch.Tensor
    noise: list[torch.Tensor] = field(default_factory=list)


def _sigmoid64(z: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Logistic in float64 then float32, as the official `sample_logit_normal`."""
    if isinstance(z, np.ndarray):
        return torch.tensor(1 / (1 + np.exp(-z)), dtype=torch.float32)
    return (1 / (1 + torch.exp(-z))).to(torch.float32)


# ====================================================================================================
# Attention + block
# ====================================================================================================
class RopeBuffers(nn.Module):
    """2D RoPE angles of every sequence position, stored as the official persistent buffers.

    freqs (head_dim/4,): inverse frequencies; freqs_cos / freqs_sin (L, head_dim): for position p at grid
    (row, col), [row*f0, row*f0, row*f1, row*f1, ..., col*f0, col*f0, ...] (pairs rotated together: the first
    half of the pairs encodes the row, the second the column), in sequence (entity) order.
    """

    def __init__(self, head_dim: int, positions: torch.Tensor, theta: float):
        super().__init__()
        half = head_dim // 2
        freqs = 1.0 / (theta ** (torch.arange(0, half, 2, device="cpu")[: half // 2].float() / half))
        angles = rope_angles(positions, freqs)
        self.register_buffer("freqs", freqs)
        self.register_buffer("freqs_cos", angles.cos())
        self.register_buffer("freqs_sin", angles.sin())

    def table(self, pos_index: torch.Tensor) -> torch.Tensor:
        """(n, head_dim/2, 2) (cos, sin) rows of the given positions, the layout `nn.rope.apply_rope` takes."""
        return torch.stack([self.freqs_cos[pos_index, 0::2], self.freqs_sin[pos_index, 0::2]], dim=-1)


def rope_angles(positions: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """(L, 2) (row, col) positions -> (L, 4 * len(freqs)) angles, each frequency twice (one rotated pair)."""
    pos = positions.to(freqs.device, torch.float32)
    rows = (pos[:, :1] * freqs[None]).repeat_interleave(2, dim=-1)
    cols = (pos[:, 1:] * freqs[None]).repeat_interleave(2, dim=-1)
    return torch.cat([rows, cols], dim=-1)


class EntityAttention(nn.Module):
    """Multi-head self-attention with 2D RoPE; in inference a static KV cache holds the committed entities."""

    def __init__(self, dim: int, num_heads: int, positions: torch.Tensor, theta: float,
                 attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop) if proj_drop > 0 else nn.Identity()
        self.rope = RopeBuffers(self.head_dim, positions, theta)
        self.cache: KVCache | None = None
        self.caching, self.cache_rows = False, 0

    def enable_cache(self, rows: int) -> None:
        self.caching, self.cache, self.cache_rows = True, None, rows

    def disable_cache(self) -> None:
        self.caching, self.cache = False, None

    def forward(self, x: torch.Tensor, pos_index: torch.Tensor, attn_bias: torch.Tensor | None,
                keep: int = 0) -> torch.Tensor:
        """x (R, N, D). With the cache on, the N new keys/values are appended, attended to together with the
        cached ones, and then only the first `keep` of them stay (the committed context entity)."""
        R, N, D = x.shape
        q, k, v = self.qkv(x).reshape(R, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        table = self.rope.table(pos_index)
        q = apply_rope(q.transpose(1, 2), table).transpose(1, 2)
        k = apply_rope(k.transpose(1, 2), table).transpose(1, 2)
        if self.caching:
            if self.cache is None:
                if R != self.cache_rows:
                    raise ConfigError(f"the KV cache was started for {self.cache_rows} rows but got {R}; call "
                                      f"start_inference with the number of rows the model runs on (2B with CFG).")
                self.cache = KVCache(R, self.num_heads, self.rope.freqs_cos.shape[0], self.head_dim,
                                     dtype=k.dtype, device=k.device)
            start = self.cache.length
            k, v = self.cache.append(k, v)
            self.cache.truncate(start + keep)  # the data stays readable until the next append
        dropout_p = self.attn_drop if self.training else 0.0
        if attn_bias is not None and attn_bias.dtype != q.dtype:  # mixed precision: SDPA wants one dtype
            attn_bias = attn_bias.to(q.dtype)
        out = attend(q, k, v, attn_bias=attn_bias, dropout_p=dropout_p)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(R, N, D)))


def per_token_modulation(mod: torch.Tensor, groups: torch.Tensor, num_groups: int) -> torch.Tensor:
    """(G*R, 1, 6, D) per-group modulation (group-major rows) -> (R, N, 6, D) per token (groups: (N,) ids)."""
    if num_groups == 1:
        return mod
    _, _, n, D = mod.shape
    return mod.view(num_groups, -1, n, D)[groups].permute(1, 0, 2, 3)


class EntityBlock(nn.Module):
    """x += gamma1 * attn(RMSNorm(x)(1+scale1)+shift1);  x += gamma2 * mlp(RMSNorm(x)(1+scale2)+shift2).

    The six modulation vectors come from the class + time condition of each token's group (its entity)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, positions: torch.Tensor, theta: float,
                 eps: float, attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        self.norm1 = RMSNorm(dim, eps=eps, elementwise_affine=False)
        self.attn = EntityAttention(dim, num_heads, positions, theta, attn_drop, proj_drop)
        self.norm2 = RMSNorm(dim, eps=eps, elementwise_affine=False)
        self.mlp = GatedFFN(dim, int(dim * mlp_ratio * 2 / 3.0), drop=proj_drop)
        self.ada_lin = AdaLNProjection(dim, dim, n=6)  # chunk order: gamma1 gamma2 scale1 scale2 shift1 shift2

    def forward(self, x, cond, groups, num_groups, pos_index, attn_bias, keep=0):
        mod = per_token_modulation(self.ada_lin(cond), groups, num_groups)
        gamma1, gamma2, scale1, scale2, shift1, shift2 = mod.unbind(2)
        x = x + self.attn(modulate(self.norm1(x), scale1, shift1), pos_index, attn_bias, keep).mul_(gamma1)
        return x + self.mlp(modulate(self.norm2(x), scale2, shift2)).mul_(gamma2)


# ====================================================================================================
# Model
# ====================================================================================================
@dataclass
class XARTrainOutput:
    loss: torch.Tensor               # scalar: mean squared velocity error (official return value)
    prediction: torch.Tensor         # (B, L, C) predicted velocity, sequence (entity) order
    target: torch.Tensor             # (B, L, C) noise - x
    model_input: torch.Tensor        # (B, L, C) noisy tokens x_t
    t_int: torch.Tensor              # (K*B,) floor(t * 1000), entity-major
    condition: torch.Tensor          # (K*B, D) class + time embedding of each (entity, sample)
    encoder_out: torch.Tensor        # (B, L', D) encoder output (L' = 2L with teacher forcing)


class XAR(PretrainedMixin, nn.Module):
    config_class = XARConfig

    def __init__(self, config: XARConfig):
        super().__init__()
        if not isinstance(config, XARConfig):
            raise ConfigError(f"XAR takes an XARConfig, got {type(config).__name__}; build one with XARConfig(...) "
                              f"or use vision_ar.registry.create('xar-b').")
        self.config = cfg = config
        self.layout = layout = cfg.layout()
        L, D, Dd, C = layout.seq_len, cfg.encoder_embed_dim, cfg.decoder_embed_dim, cfg.latent_channels
        pos = layout.positions

        # Registration order = official state_dict order (own params, own buffers, then submodules).
        self.encoder_pos_embed_learned = nn.Parameter(torch.zeros(1, L, D))
        self.decoder_pos_embed_learned = nn.Parameter(torch.zeros(1, L, Dd))
        self.register_buffer("mask", layout.attention_mask()[None, None].contiguous())
        self.class_emb = nn.Embedding(cfg.num_classes + 1, D)  # last row: the null class
        self.time_embed = TimestepEmbedder(D, cfg.timestep_freq_dim)
        self.z_proj = nn.Linear(C, D)
        self.z_proj_ln = RMSNorm(D, eps=cfg.norm_eps)
        # scale entities: the previous scale, upsampled to this scale's tokens, is added to their input
        # (zero-initialised; the official cell model has no such layer)
        self.context_proj = nn.Linear(C, D) if layout.uses_scale_context else None
        self.encoder_blocks = nn.ModuleList([
            EntityBlock(D, cfg.encoder_num_heads, cfg.mlp_ratio, pos, cfg.rope_theta, cfg.norm_eps,
                        cfg.attn_dropout, cfg.proj_dropout) for _ in range(cfg.encoder_depth)])
        self.encoder_norm = RMSNorm(D, eps=cfg.norm_eps)
        self.decoder_embed = nn.Linear(D, Dd)
        self.decoder_blocks = nn.ModuleList([
            EntityBlock(Dd, cfg.decoder_num_heads, cfg.mlp_ratio, pos, cfg.rope_theta, cfg.norm_eps,
                        cfg.attn_dropout, cfg.proj_dropout) for _ in range(cfg.decoder_depth)])
        self.decoder_norm = RMSNorm(Dd, eps=cfg.norm_eps)
        self.pred = nn.Linear(Dd, C)
        self.init_weights()

    # ------------------------------------------------------------------------------------------------
    # init (official initialize_weights: checkpoints overwrite it)
    # ------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def init_weights(self) -> None:
        nn.init.normal_(self.class_emb.weight, std=0.02)
        nn.init.normal_(self.encoder_pos_embed_learned, std=0.02)
        nn.init.normal_(self.decoder_pos_embed_learned, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):  # xavier-uniform, zero bias (official JAX-ViT convention)
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        if self.context_proj is not None:
            nn.init.zeros_(self.context_proj.weight)

    grad_checkpointing = False

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Activation checkpointing per block (the training loop's `grad_checkpointing` switch)."""
        self.grad_checkpointing = bool(enable)

    # ------------------------------------------------------------------------------------------------
    # checks
    # ------------------------------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    def check_labels(self, labels: torch.Tensor, allow_null: bool = True) -> None:
        if not isinstance(labels, torch.Tensor) or labels.ndim != 1 or labels.dtype.is_floating_point:
            raise ConfigError(f"class labels must be a 1-D integer tensor (B,), got "
                              f"{getattr(labels, 'shape', type(labels))}; pass torch.tensor([207, 360]).")
        if labels.numel():
            check_label_range(labels.tolist(), self.num_classes, allow_null=allow_null)

    @property
    def token_layout(self) -> TokenLayout:
        """The float latent map (C, h, w) this generator models (the KL tokenizer's layout)."""
        c = self.config
        return TokenLayout.latent(c.latent_channels, c.grid_size, c.grid_size)

    @staticmethod
    def timestep_index(t: torch.Tensor) -> torch.Tensor:
        """floor(t * 1000) computed in t's own dtype (the official sampler passes float64 on an entity's first
        step and float32 afterwards; the product is rounded in that dtype before truncation)."""
        return (t * TIME_INDEX_SCALE).long()

    # ------------------------------------------------------------------------------------------------
    # the network on any run of entity segments
    # ------------------------------------------------------------------------------------------------
    def condition(self, labels: torch.Tensor, t_int: torch.Tensor) -> torch.Tensor:
        """(R,) labels, (G*R,) time indices (group-major) -> (G*R, D) class + time embedding."""
        groups = t_int.shape[0] // labels.shape[0]
        return self.class_emb(labels.long()).repeat(groups, 1) + self.time_embed(t_int)

    def _run_blocks(self, blocks, h, cond, groups, num_groups, pos_index, attn_bias, keep):
        for blk in blocks:
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                h = torch.utils.checkpoint.checkpoint(blk, h, cond, groups, num_groups, pos_index, attn_bias, keep,
                                                      use_reentrant=False)
            else:
                h = blk(h, cond, groups, num_groups, pos_index, attn_bias, keep)
        return h

    def network(self, tokens: torch.Tensor, cond: torch.Tensor, groups: torch.Tensor, num_groups: int,
                pos_index: torch.Tensor, attn_bias: torch.Tensor | None, scale_context: torch.Tensor | None = None,
                keep: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens (R, N, C) at sequence positions pos_index (N,) -> (velocity (R, N, C), encoder output).

        cond (G*R, D): one condition per token group (group-major); groups (N,): each token's group."""
        h = self.z_proj(tokens)
        if scale_context is not None:
            h = h + self.context_proj(scale_context)
        h = self.z_proj_ln(h + self.encoder_pos_embed_learned[:, pos_index])
        h = self._run_blocks(self.encoder_blocks, h, cond, groups, num_groups, pos_index, attn_bias, keep)
        enc = self.encoder_norm(h)
        h = self.decoder_embed(enc) + self.decoder_pos_embed_learned[:, pos_index]
        h = self._run_blocks(self.decoder_blocks, h, cond, groups, num_groups, pos_index, attn_bias, keep)
        return self.pred(self.decoder_norm(h)), enc

    # ------------------------------------------------------------------------------------------------
    # training
    # ------------------------------------------------------------------------------------------------
    def draw(self, batch_size: int, generator: torch.Generator | None = None, device=None,
             rng: str = "torch") -> FlowDraws:
        """The random draws of one training forward, in the official order: label-drop uniforms (B,), the
        per-entity logit-normal times (K*B,), then each entity's noise.

        rng="torch": every draw from `generator` (or the global torch RNG). rng="official": the official
        sources, i.e. the global torch RNG for the uniforms and noise and numpy's global RandomState for the
        times (scipy's norm.rvs draws standard_normal from it), so `torch.manual_seed(s); np.random.seed(s)`
        replays an official training step."""
        lay, C, B = self.layout, self.config.latent_channels, batch_size
        device = device if device is not None else self.mask.device
        K = lay.num_entities
        if rng == "official":
            drop_u = torch.rand(B)
            z = np.random.standard_normal(K * B) * self.config.time_sigma + self.config.time_mu
            t = _sigmoid64(z)
            noise = [torch.randn(B, n, C) for n in lay.entity_sizes]
        elif rng == "torch":
            gdev = generator.device if generator is not None else "cpu"
            drop_u = torch.rand(B, generator=generator, device=gdev)
            z = torch.randn(K * B, generator=generator, device=gdev, dtype=torch.float64)
            t = _sigmoid64(z * self.config.time_sigma + self.config.time_mu)
            noise = [torch.randn(B, n, C, generator=generator, device=gdev) for n in lay.entity_sizes]
        else:
            raise ConfigError(f"rng must be 'torch' or 'official', got {rng!r}")
        return FlowDraws(drop_u.to(device), t.to(device), [n.to(device) for n in noise])

    def _check_draws(self, draws: FlowDraws, B: int) -> None:
        lay, C = self.layout, self.config.latent_channels
        want = [(B, n, C) for n in lay.entity_sizes]
        got = [tuple(n.shape) for n in draws.noise]
        if tuple(draws.drop_u.shape) != (B,) or tuple(draws.t.shape) != (lay.num_entities * B,) or got != want:
            raise ConfigError(f"draws do not fit a batch of {B} on {lay.describe()}: need drop_u ({B},), t "
                              f"({lay.num_entities * B},) entity-major and noise {want}; got {tuple(draws.drop_u.shape)}, "
                              f"{tuple(draws.t.shape)}, {got}.")

    def forward(self, latents: torch.Tensor, labels: torch.Tensor, draws: FlowDraws | None = None,
                generator: torch.Generator | None = None) -> XARTrainOutput:
        """The flow-matching loss of every entity at once (teacher-forced training pass).

        latents (B, C, h, w): normalised KL latents (posterior sample x latent_scale); labels (B,) int64.
        In training mode labels are dropped to the null class where draws.drop_u < label_drop_prob."""
        cfg, lay = self.config, self.layout
        lay.check_latents(latents, cfg.latent_channels)
        self.check_labels(labels)
        B, K, L = latents.shape[0], lay.num_entities, lay.seq_len
        if labels.shape[0] != B:
            raise ConfigError(f"{labels.shape[0]} labels for a batch of {B} latents; give one label per latent.")
        draws = draws if draws is not None else self.draw(B, generator=generator, device=latents.device)
        self._check_draws(draws, B)
        if self.training and cfg.label_drop_prob > 0:
            labels = torch.where(draws.drop_u.to(labels.device) < cfg.label_drop_prob, cfg.null_class, labels)

        x = lay.to_sequence(latents)                                       # (B, L, C)
        entity = lay.entity_index.to(latents.device)
        t_tok = draws.t.to(x.dtype).view(K, B)[entity].transpose(0, 1)[..., None]  # (B, L, 1)
        noise = torch.cat(draws.noise, dim=1).to(x.dtype)
        x_t = (1 - t_tok) * x + t_tok * noise
        target = noise - x
        t_int = self.timestep_index(draws.t.to(latents.device))
        cond = self.condition(labels, t_int)                               # (K*B, D)
        arange = torch.arange(L, device=latents.device)
        if cfg.noisy_context:
            ctx = lay.scale_context(x_t) if lay.uses_scale_context else None
            out, enc = self.network(x_t, cond, entity, K, arange, self.mask, ctx)
        else:  # teacher forcing: [clean entities at t = 0 | noisy entities]
            clean_cond = self.condition(labels, torch.zeros_like(t_int))
            ctx = None
            if lay.uses_scale_context:
                ctx = lay.scale_context(x).repeat(1, 2, 1)
            mask = lay.teacher_forcing_mask().to(latents.device, x.dtype)[None, None]
            out, enc = self.network(torch.cat([x, x_t], 1), torch.cat([clean_cond, cond]),
                                    torch.cat([entity, entity + K]), 2 * K, torch.cat([arange, arange]), mask, ctx)
            out = out[:, L:]
        loss = (out.float() - target.float()).pow(2).mean(dim=(1, 2)).mean()
        return XARTrainOutput(loss, out, target, x_t, t_int, cond, enc)

    # ------------------------------------------------------------------------------------------------
    # incremental inference (used by vision_ar.sampling.flow)
    # ------------------------------------------------------------------------------------------------
    def _all_attention(self):
        return [blk.attn for blk in (*self.encoder_blocks, *self.decoder_blocks)]

    def start_inference(self, rows: int) -> None:
        """Enable the static KV caches (L positions each) for `rows` rows (2B with CFG)."""
        for attn in self._all_attention():
            attn.enable_cache(rows)

    def end_inference(self) -> None:
        for attn in self._all_attention():
            attn.disable_cache()

    @contextmanager
    def inference(self, rows: int) -> Iterator["XAR"]:
        self.start_inference(rows)
        try:
            yield self
        finally:
            self.end_inference()

    def _cache_length(self) -> int:
        cache = self.encoder_blocks[0].attn.cache
        return 0 if cache is None else cache.length

    def entity_velocity(self, x: torch.Tensor, labels: torch.Tensor, t: torch.Tensor, entity: int,
                        previous: Sequence[torch.Tensor] = (), commit: bool = False) -> torch.Tensor:
        """Velocity (R, n_k, C) of entity k's tokens x (R, n_k, C) at times t (R,), given the generated
        entities before it (KV-cached).

        commit=True on an entity's first flow step: the previous entity (previous[-1], clean) is run along at
        t = 0 and its keys/values are kept in the cache (the official `update_cache`), so every entity is
        committed exactly once. Later steps of the same entity run its tokens alone against the cache.
        `t`'s dtype decides the rounding of floor(t * 1000) (see timestep_index)."""
        lay = self.layout
        if not self.encoder_blocks[0].attn.caching:
            raise ConfigError("entity_velocity needs the KV caches: call model.start_inference(rows) first "
                              "(or use `with model.inference(rows):`).")
        if not 0 <= entity < lay.num_entities:
            raise ConfigError(f"entity {entity} out of range 0..{lay.num_entities - 1} ({lay.describe()})")
        start, end = lay.bounds[entity]
        n = end - start
        R = x.shape[0]
        if tuple(x.shape[1:]) != (n, self.config.latent_channels) or labels.shape != (R,) or t.shape != (R,):
            raise ConfigError(f"entity {entity} takes x (R, {n}, {self.config.latent_channels}), labels (R,) and "
                              f"t (R,); got {tuple(x.shape)}, {tuple(labels.shape)}, {tuple(t.shape)}")
        with_context = commit and entity > 0
        expected_cache = lay.bounds[entity - 1][0] if with_context else start
        if self._cache_length() != expected_cache or (with_context and len(previous) < entity):
            raise ConfigError(f"entity_velocity called out of order: entity {entity} (commit={commit}) needs "
                              f"{expected_cache} cached positions and the {entity} earlier entities, the cache "
                              f"holds {self._cache_length()}. Generate entities in order, committing each once.")
        ctx_cur = lay.upsample_previous(previous[entity - 1], entity) if lay.uses_scale_context and entity else None
        t_int = self.timestep_index(t)
        if with_context:
            prev = previous[entity - 1].to(x.dtype)
            p_start = lay.bounds[entity - 1][0]
            tokens = torch.cat([prev, x], dim=1)
            t_int = torch.cat([torch.zeros_like(t_int), t_int])
            groups = torch.cat([torch.zeros(start - p_start, dtype=torch.long),  # group 0: the context entity
                                torch.ones(n, dtype=torch.long)]).to(x.device)
            ctx = None
            if lay.uses_scale_context:
                ctx_prev = (lay.upsample_previous(previous[entity - 2], entity - 1) if entity > 1
                            else torch.zeros_like(prev))
                ctx = torch.cat([ctx_prev, ctx_cur], dim=1)
            pos_index = torch.arange(p_start, end, device=x.device)
            attn_bias, keep, num_groups = self.mask[:, :, p_start:end, :end], start - p_start, 2
        else:
            tokens, ctx, num_groups, keep = x, ctx_cur, 1, 0
            groups = torch.zeros(n, dtype=torch.long, device=x.device)
            pos_index = torch.arange(start, end, device=x.device)
            attn_bias = self.mask[:, :, start:end, :end] if commit else None  # first entity: the official mask
        cond = self.condition(labels, t_int)
        out, _ = self.network(tokens, cond, groups, num_groups, pos_index, attn_bias, ctx, keep)
        return out[:, -n:]

    # ------------------------------------------------------------------------------------------------
    # checkpoints
    # ------------------------------------------------------------------------------------------------
    def check_entity_layout(self, sd: dict, what: str = "checkpoint") -> None:
        """Compare the layout a state_dict was trained with (its `mask` and RoPE buffers) with this model's;
        name the checkpoint's entity type when they differ, before anything is loaded."""
        rope_key = "encoder_blocks.0.attn.rope.freqs_cos"
        mask, cos, freqs = sd.get("mask"), sd.get(rope_key), sd.get("encoder_blocks.0.attn.rope.freqs")
        if mask is None or cos is None or freqs is None:
            return  # the strict load lists the missing buffers
        own_cos = self.encoder_blocks[0].attn.rope.freqs_cos
        if (mask.shape == self.mask.shape and torch.equal(mask.cpu(), self.mask.cpu())
                and cos.shape == own_cos.shape and torch.allclose(cos.cpu().float(), own_cos.cpu(), atol=1e-5)):
            return
        grid = (self.config.grid_size, self.config.grid_size)
        found = None
        for spec in candidate_specs(grid):
            lay = EntityLayout(spec, grid)
            if lay.seq_len != mask.shape[-1] or not torch.equal(lay.attention_mask(), mask[0, 0].cpu()):
                continue
            if torch.allclose(rope_angles(lay.positions, freqs.cpu().float()).cos(), cos.cpu().float(), atol=1e-5):
                found = spec
                break
        theirs = (f"entity {found.describe()}" if found is not None else
                  f"an attention mask / RoPE order of {mask.shape[-1]} positions that matches no entity layout "
                  f"of a {grid[0]}x{grid[1]} grid")
        fix = (f"build the model with entity='{found.kind}'"
               + (f", entity_size={found.size}" if found.kind in ("cell", "subsample") else "")
               if found is not None else "use the config the checkpoint was trained with")
        raise CheckpointError(f"{what} was trained with {theirs}, but this model is built for "
                              f"{self.layout.describe()}: {fix}.")

    def load_checked_state_dict(self, sd: dict, what: str = "checkpoint") -> "XAR":
        self.check_entity_layout(sd, what)
        load_state_dict_strict(self, sd, what=what)
        return self

    @classmethod
    def from_pretrained(cls, folder, map_location: str = "cpu") -> "XAR":
        """A folder written by save_pretrained; the entity layout of its weights is checked against config.json."""
        folder = Path(folder)
        for p in (folder / CONFIG_NAME, folder / WEIGHTS_NAME):
            if not p.is_file():
                raise MissingFileError(f"{p} not found: a model folder holds {CONFIG_NAME} and {WEIGHTS_NAME} "
                                       f"(written by save_pretrained).")
        try:
            cfg = json.loads((folder / CONFIG_NAME).read_text())
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{folder / CONFIG_NAME} is not valid JSON: {e}") from e
        model = cls(cls.config_from_dict(cfg))
        model.load_checked_state_dict(load_checkpoint(folder / WEIGHTS_NAME), what=str(folder / WEIGHTS_NAME))
        return model.to(map_location).eval()

    @classmethod
    def from_official_checkpoint(cls, path, preset: str = "xar-b", map_location: str = "cpu", **overrides) -> "XAR":
        """An official `xAR-{B,L,H}.pth` (a plain state_dict incl. the persistent buffers), loaded strictly.

        Built on the meta device and the checkpoint tensors assigned, so nothing is allocated twice."""
        from ..registry import get_preset

        if get_preset(preset).family != "xar":
            raise ConfigError(f"preset '{preset}' is not an xAR preset; use xar-b, xar-l or xar-h.")
        sd = unwrap_state_dict(load_checkpoint(path, what=f"xAR checkpoint ({preset})"))
        with torch.device("meta"):
            model = get_preset(preset).builder(**overrides)
        model.check_entity_layout(sd, what=str(path))
        with warnings.catch_warnings():  # the strict check's copy into meta tensors is a (warned) no-op
            warnings.filterwarnings("ignore", message=".*copying from a non-meta parameter.*")
            load_state_dict_strict(model, sd, what=str(path))
        model.load_state_dict(sd, strict=True, assign=True)
        return model.to(map_location).eval()


# ====================================================================================================
# Presets (official main_mar.py: img 256 / vae_stride 16 -> 16x16 grid, 16 channels, 4 cells of 8x8 tokens,
# label_drop_prob 0.1, attn/proj dropout 0.1)
# ====================================================================================================
OFFICIAL_SIZES = {"xar-b": (768, 8, 12), "xar-l": (1024, 16, 16), "xar-h": (1280, 20, 16)}


def official_config(name: str) -> XARConfig:
    width, depth, heads = OFFICIAL_SIZES[name]
    return XARConfig(latent_channels=16, grid_size=16, num_classes=1000, encoder_embed_dim=width,
                     encoder_depth=depth, encoder_num_heads=heads, decoder_embed_dim=width, decoder_depth=depth,
                     decoder_num_heads=heads, mlp_ratio=4.0, label_drop_prob=0.1, attn_dropout=0.1,
                     proj_dropout=0.1, entity="cell", entity_size=8)


def _register(name: str, desc: str):
    @register_preset(name, family="xar", description=desc)
    def build(**overrides) -> XAR:
        return XAR(official_config(name).replace(**overrides))

    return build


xar_b = _register("xar-b", "xAR-B (official xAR-B.pth): 172M, cells of 8x8 on 16x16 KL-16 latents")
xar_l = _register("xar-l", "xAR-L (official xAR-L.pth): 608M")
xar_h = _register("xar-h", "xAR-H (official xAR-H.pth): 1.19B")


@register_preset("xar-fmnist", family="xar",
                 description="small xAR for 32x32 Fashion-MNIST (10 classes) on kl-fmnist 8x8x16 latents, 4x4 cells")
def xar_fmnist(**overrides) -> XAR:
    cfg = XARConfig(latent_channels=16, grid_size=8, num_classes=10, encoder_embed_dim=192, encoder_depth=4,
                    encoder_num_heads=3, decoder_embed_dim=192, decoder_depth=2, decoder_num_heads=3,
                    label_drop_prob=0.1, attn_dropout=0.0, proj_dropout=0.0, entity="cell", entity_size=4)
    return XAR(cfg.replace(**overrides))
