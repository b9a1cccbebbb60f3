"""LlamaGen-style class-conditional GPT: next-token prediction over a raster-ordered token grid or a 1D sequence.

Functionally identical to FoundationVision/LlamaGen `autoregressive/models/gpt.py` (c2i): same state_dict keys,
so official `c2i_*.pt` checkpoints load as they are, and the same logits.

    sequence   [class token] [tok 0] [tok 1] ... [tok N-1]          (N = block_size)
    position        0            1       2           N
    predicts     tok 0        tok 1   tok 2   ...  (extra)

Map of this file:
  * GPTConfig            - the official `ModelArgs` fields of a c2i model (text conditioning is not ported)
  * LabelEmbedder        - class embedding with a learned null class (row `num_classes`) for CFG + label dropout
  * Attention / Block    - pre-norm LLaMA block: RMSNorm, fused qkv, RoPE, SDPA, SwiGLU, residual dropout
                           (2D RoPE on a grid, as official; 1D RoPE on a sequence: `GPTConfig.token_shape`)
  * GPT                  - teacher-forced `forward` (training) and the incremental KV-cache API every sampler uses
  * presets              - gpt-b / gpt-l / gpt-xl / gpt-xxl / gpt-3b for 256px (16x16 tokens) and 384px (24x24)

Incremental decoding (the only way samplers talk to the model; see `vision_ar/sampling/token_loop.py`):

    model.setup_cache(batch_size, max_seq_len=None, dtype=None)   # preallocate one static KVCache per layer
    logits = model.prefill(cond_idx)              # (B,) labels -> (B, V): predicts token 0; cache_length = 1
    logits = model.decode(tokens, start_pos)      # (B, T) tokens at absolute positions start_pos.. -> (B, T, V)
    model.truncate_cache(length)                  # forget positions >= length (speculative decoding)
    model.cache_length                            # number of valid cached positions
    model.reset_cache() / model.release_cache()

Positions are absolute sequence positions (class token = 0, image token i = i + 1), the same numbers the
official code passes as `input_pos`.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.utils.checkpoint
import torch.nn.functional as F
from torch import nn

from ..conditioning import check_label_range
from ..errors import ConfigError
from ..io import PretrainedMixin, load_state_dict_strict, read_official_checkpoint
from ..nn.attention import attend
from ..nn.drop_path import DropPath
from ..nn.kv_cache import KVCache
from ..nn.norms import RMSNorm
from ..nn.rope import apply_rope, rope_1d_table, rope_2d_table
from ..nn.swiglu import FeedForward
from ..registry import register_preset
from ..tokens import TokenLayout


# ----------------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------------
@dataclass
class GPTConfig:
    """Field names and defaults of the official `ModelArgs` (c2i subset)."""

    dim: int = 4096
    n_layer: int = 32
    n_head: int = 32
    n_kv_head: int | None = None  # grouped-query attention when smaller than n_head (official option, unused by c2i)
    multiple_of: int = 256
    ffn_dim_multiplier: float | None = None
    rope_base: float = 10000
    norm_eps: float = 1e-5
    initializer_range: float = 0.02

    token_dropout_p: float = 0.1
    attn_dropout_p: float = 0.0
    resid_dropout_p: float = 0.1
    ffn_dropout_p: float = 0.1
    drop_path_rate: float = 0.0

    num_classes: int = 1000
    class_dropout_prob: float = 0.1

    vocab_size: int = 16384
    cls_token_num: int = 1
    block_size: int = 256  # number of image tokens
    # How the block_size tokens are arranged (not an official field; the official model is the default):
    # () = a square grid (2D RoPE); (h, w) = an h x w grid (2D RoPE); (n,) = a 1D sequence (1D RoPE).
    token_shape: tuple = ()

    # Official ModelArgs fields with no meaning here: text conditioning and gpt-fast cache sizes.
    _IGNORED_OFFICIAL_FIELDS = ("caption_dim", "max_batch_size", "max_seq_len")

    def __post_init__(self):
        if self.dim % self.n_head:
            raise ConfigError(f"dim={self.dim} is not divisible by n_head={self.n_head}; change one of them.")
        kv = self.n_kv_head or self.n_head
        if self.n_head % kv:
            raise ConfigError(f"n_head={self.n_head} is not a multiple of n_kv_head={kv}.")
        self.token_shape = tuple(int(x) for x in self.token_shape)
        if len(self.token_shape) > 2:
            raise ConfigError(f"token_shape={self.token_shape} must be () (square grid), (h, w) (grid) or (n,) "
                              f"(1D sequence).")
        if (self.dim // self.n_head) % (2 * len(self.grid_shape)):
            raise ConfigError(f"head_dim={self.dim // self.n_head} must be divisible by "
                              f"{2 * len(self.grid_shape)} for {len(self.grid_shape)}D RoPE; change dim / n_head.")
        if not self.token_shape and math.isqrt(self.block_size) ** 2 != self.block_size:
            raise ConfigError(f"block_size={self.block_size} is not a square number of tokens (grid * grid); "
                              f"use (image_size // downsample) ** 2, e.g. 256 for 256px with a 16x tokenizer, or "
                              f"give token_shape=(h, w) for a non-square grid or (n,) for a 1D sequence.")
        if self.token_shape and math.prod(self.token_shape) != self.block_size:
            raise ConfigError(f"token_shape={self.token_shape} holds {math.prod(self.token_shape)} tokens but "
                              f"block_size={self.block_size}; make block_size the product of token_shape.")
        if self.cls_token_num != 1:
            # The c2i embedder yields ONE conditioning row; the official code with cls_token_num > 1 would
            # zero the RoPE of the first image tokens. Only text conditioning (not ported) uses more.
            raise ConfigError(f"cls_token_num={self.cls_token_num}: class conditioning uses exactly one class "
                              f"token; set cls_token_num=1 (every official c2i checkpoint does).")
        for name in ("token_dropout_p", "attn_dropout_p", "resid_dropout_p", "ffn_dropout_p", "drop_path_rate",
                     "class_dropout_prob"):
            p = getattr(self, name)
            if not 0.0 <= p < 1.0:
                raise ConfigError(f"{name}={p} must be in [0, 1).")
        if self.vocab_size < 1 or self.num_classes < 1:
            raise ConfigError("vocab_size and num_classes must be >= 1.")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_head

    @property
    def grid_shape(self) -> tuple[int, ...]:
        """(h, w) of a 2D token grid, or (n,) of a 1D sequence."""
        if self.token_shape:
            return self.token_shape
        side = math.isqrt(self.block_size)
        return (side, side)

    @property
    def max_positions(self) -> int:
        """Conditioning positions + image positions: the longest sequence the RoPE table covers."""
        return self.cls_token_num + self.block_size

    def replace(self, **changes) -> "GPTConfig":
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_official_args(cls, args: dict) -> "GPTConfig":
        """Build from an official `ModelArgs` dict (e.g. a fixture's gpt_config.json `model_args`)."""
        args = dict(args)
        model_type = args.pop("model_type", "c2i")
        if model_type != "c2i":
            raise ConfigError(f"model_type={model_type!r}: only class-conditional ('c2i') LlamaGen is ported; "
                              f"text-conditional (t2i) models are not supported.")
        for k in cls._IGNORED_OFFICIAL_FIELDS:
            args.pop(k, None)
        return cls(**args)


# ----------------------------------------------------------------------------------------------------
# Building blocks
# ----------------------------------------------------------------------------------------------------
class LabelEmbedder(nn.Module):
    """Class label -> one embedding row. Row `num_classes` is the learned null class (exists when
    class_dropout_prob > 0, as officially), used for classifier-free guidance.

    In training, each label is replaced by the null class with probability `dropout_prob`
    (one uniform draw per sample: `torch.rand(B) < p`, from `generator` or the global RNG like the official).
    """

    def __init__(self, num_classes: int, dim: int, dropout_prob: float):
        super().__init__()
        self.num_classes = num_classes
        self.dropout_prob = dropout_prob
        self.embedding_table = nn.Embedding(num_classes + int(dropout_prob > 0), dim)

    @property
    def has_null_class(self) -> bool:
        return self.embedding_table.num_embeddings > self.num_classes

    def forward(self, labels: torch.Tensor, train: bool, force_drop_ids: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
        if force_drop_ids is not None:
            labels = torch.where(force_drop_ids == 1, self.num_classes, labels)
        elif train and self.dropout_prob > 0:
            drop = torch.rand(labels.shape[0], device=labels.device, generator=generator) < self.dropout_prob
            labels = torch.where(drop, self.num_classes, labels)
        return self.embedding_table(labels).unsqueeze(1)  # (B, 1, dim)


class Attention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.n_kv_head = cfg.n_kv_head or cfg.n_head
        self.head_dim = cfg.head_dim
        self.dim = cfg.dim
        # One fused projection: [q (n_head) | k (n_kv_head) | v (n_kv_head)] * head_dim output rows.
        self.wqkv = nn.Linear(cfg.dim, (self.n_head + 2 * self.n_kv_head) * self.head_dim, bias=False)
        self.wo = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.attn_dropout_p = cfg.attn_dropout_p
        self.resid_dropout = nn.Dropout(cfg.resid_dropout_p)

    def forward(self, x: torch.Tensor, rope: torch.Tensor, cache: KVCache | None = None,
                mask: torch.Tensor | None = None, row_starts: torch.Tensor | None = None,
                static_pos: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, L, dim); rope (L, head_dim/2, 2) rows of x's positions.

        Without a cache: causal self-attention over x. With a cache: x's keys/values are appended to it and
        x attends to prefix + itself; `mask` (L, prefix+L) bool (True = attend) keeps it causal inside x
        (None when L == 1: a single new token may see everything cached). `static_pos` (a tensor): write at that
        position and attend over the whole cache with `mask` (static shapes for compiled steps).
        """
        b, length, _ = x.shape
        kv = self.n_kv_head * self.head_dim
        qk, v = self.wqkv(x).split([self.dim + kv, kv], dim=-1)
        # q and k rotated in one call (RoPE is elementwise per head: same numbers, half the small ops per step)
        qk = apply_rope(qk.view(b, length, self.n_head + self.n_kv_head, self.head_dim), rope).transpose(1, 2)
        q, k = qk.split([self.n_head, self.n_kv_head], dim=1)
        v = v.view(b, length, self.n_kv_head, self.head_dim).transpose(1, 2)
        if cache is not None and row_starts is not None:  # each row writes at its own positions
            k, v, mask = cache.append_rows(k, v, row_starts)
        elif cache is not None and static_pos is not None:
            k, v = cache.write_at(static_pos, k, v)
        elif cache is not None:
            k, v = cache.append(k, v)
        if self.n_kv_head != self.n_head:
            k = k.repeat_interleave(self.n_head // self.n_kv_head, dim=1)
            v = v.repeat_interleave(self.n_head // self.n_kv_head, dim=1)
        out = attend(q, k, v, attn_bias=mask, is_causal=cache is None,
                     dropout_p=self.attn_dropout_p if self.training else 0.0)
        out = out.transpose(1, 2).reshape(b, length, self.dim)
        return self.resid_dropout(self.wo(out))


class TransformerBlock(nn.Module):
    def __init__(self, cfg: GPTConfig, drop_path: float):
        super().__init__()
        self.attention = Attention(cfg)
        self.feed_forward = FeedForward(cfg.dim, cfg.multiple_of, cfg.ffn_dim_multiplier, cfg.ffn_dropout_p)
        self.attention_norm = RMSNorm(cfg.dim, eps=cfg.norm_eps)
        self.ffn_norm = RMSNorm(cfg.dim, eps=cfg.norm_eps)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x, rope, cache=None, mask=None, row_starts=None, static_pos=None):
        x = x + self.drop_path(self.attention(self.attention_norm(x), rope, cache, mask, row_starts, static_pos))
        return x + self.drop_path(self.feed_forward(self.ffn_norm(x)))


# ----------------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------------
class GPT(PretrainedMixin, nn.Module):
    config_class = GPTConfig
    preset_family = "next-token"

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = cfg = config
        self.num_classes = cfg.num_classes
        self.vocab_size = cfg.vocab_size
        self.block_size = cfg.block_size
        self.cls_token_num = cfg.cls_token_num

        self.cls_embedding = LabelEmbedder(cfg.num_classes, cfg.dim, cfg.class_dropout_prob)
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.tok_dropout = nn.Dropout(cfg.token_dropout_p)
        drop_paths = [x.item() for x in torch.linspace(0, cfg.drop_path_rate, cfg.n_layer, device="cpu")]
        self.layers = nn.ModuleList(TransformerBlock(cfg, dp) for dp in drop_paths)
        self.norm = RMSNorm(cfg.dim, eps=cfg.norm_eps)
        self.output = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)

        # RoPE table: deterministic, so not saved (official checkpoints do not hold it either). A plain
        # attribute built lazily on CPU in float32 and moved to the activations' device, NOT a buffer: a buffer
        # would be rounded by model.to(bfloat16), the official table stays float32 whatever the model dtype.
        self._rope: torch.Tensor | None = None
        self._caches: list[KVCache] | None = None
        self._static_step = None  # compiled single-token step (compile_decode), None = eager
        self._init_weights()

    def _init_weights(self):
        # Official init: N(0, initializer_range) for every Linear/Embedding, zero output head.
        std = self.config.initializer_range
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, mean=0.0, std=std)
        nn.init.zeros_(self.output.weight)

    def rope_rows(self, start: int, end: int, device: torch.device) -> torch.Tensor:
        """RoPE (cos, sin) rows of absolute positions start..end-1, float32, on `device`."""
        if self._rope is None or self._rope.device != device:
            cfg = self.config
            make = rope_2d_table if len(cfg.grid_shape) == 2 else rope_1d_table
            table = make(cfg.grid_shape, cfg.head_dim, cfg.rope_base, cfg.cls_token_num, device=torch.device("cpu"))
            self._rope = table.to(device)
        return self._rope[start:end]

    # ----------------------------------------------------------------------------------------------
    # Input checks (cheap, before any compute)
    # ----------------------------------------------------------------------------------------------
    def _check_labels(self, cond_idx: torch.Tensor, allow_null: bool = True) -> None:
        if not isinstance(cond_idx, torch.Tensor) or cond_idx.ndim != 1 or cond_idx.is_floating_point():
            raise ConfigError(f"cond_idx must be a 1-D integer tensor of class labels (B,), got "
                              f"{getattr(cond_idx, 'shape', type(cond_idx))}.")
        if cond_idx.numel():
            check_label_range(cond_idx.tolist(), self.num_classes,
                              allow_null=allow_null and self.cls_embedding.has_null_class)

    def _check_tokens(self, idx: torch.Tensor, name: str = "idx", values: bool = True) -> None:
        if not isinstance(idx, torch.Tensor) or idx.ndim != 2 or idx.is_floating_point():
            raise ConfigError(f"{name} must be a 2-D integer tensor of token ids (B, T), got "
                              f"{getattr(idx, 'shape', type(idx))}.")
        if values and idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= self.vocab_size):
            raise ConfigError(f"{name} holds token ids outside [0, {self.vocab_size - 1}] (min {int(idx.min())}, "
                              f"max {int(idx.max())}); the tokenizer's codebook must match vocab_size.")

    # ----------------------------------------------------------------------------------------------
    # Teacher-forced pass (training, and full-sequence scoring)
    # ----------------------------------------------------------------------------------------------
    def forward(self, idx: torch.Tensor, cond_idx: torch.Tensor, targets: torch.Tensor | None = None,
                valid: torch.Tensor | None = None, force_drop_ids: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """idx (B, T) image tokens (T <= block_size), cond_idx (B,) labels -> (logits (B, 1+T, V) float32, loss).

        logits[:, t] predicts image token t. Training feeds tokens[:, :-1] with targets = tokens (B, block_size).
        `valid` (B,) weights samples in the loss; `force_drop_ids` (B,) == 1 forces the null class;
        label dropout in train mode draws from `generator` (global RNG when None).
        """
        self._check_tokens(idx)
        self._check_labels(cond_idx)
        if idx.shape[0] != cond_idx.shape[0]:
            raise ConfigError(f"idx has batch {idx.shape[0]} but cond_idx has {cond_idx.shape[0]}.")
        length = 1 + idx.shape[1]
        if length > self.config.max_positions:
            raise ConfigError(f"{idx.shape[1]} tokens do not fit block_size={self.block_size}; "
                              f"feed at most block_size tokens.")
        cond = self.cls_embedding(cond_idx, train=self.training, force_drop_ids=force_drop_ids,
                                  generator=generator)
        h = self.tok_dropout(torch.cat([cond, self.tok_embeddings(idx)], dim=1))
        rope = self.rope_rows(0, length, h.device)
        for layer in self.layers:
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                # recompute the layer in backward instead of storing its activations (memory for compute)
                h = torch.utils.checkpoint.checkpoint(layer, h, rope, use_reentrant=False)
            else:
                h = layer(h, rope)
        logits = self.output(self.norm(h)).float()

        loss = None
        if targets is not None:
            if targets.shape != logits.shape[:2]:
                raise ConfigError(f"targets {tuple(targets.shape)} must be (B, T+1) = {tuple(logits.shape[:2])}: "
                                  f"feed idx = tokens[:, :-1] with targets = tokens.")
            flat = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                   reduction="none" if valid is not None else "mean")
            if valid is not None:
                weights = valid[:, None].expand_as(targets).reshape(-1).to(flat.dtype)
                loss = (flat * weights).sum() / weights.sum().clamp_min(1)
            else:
                loss = flat
        return logits, loss

    grad_checkpointing = False

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Activation checkpointing per layer (the training loop's `grad_checkpointing` switch)."""
        self.grad_checkpointing = bool(enable)

    # ----------------------------------------------------------------------------------------------
    # Incremental decoding with a static KV cache
    # ----------------------------------------------------------------------------------------------
    def setup_cache(self, batch_size: int, max_seq_len: int | None = None, dtype: torch.dtype | None = None) -> None:
        """Preallocate one KVCache per layer for `batch_size` rows and `max_seq_len` positions
        (default: class token + block_size). Reuses the existing caches when they already fit exactly."""
        max_seq_len = self.config.max_positions if max_seq_len is None else int(max_seq_len)
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}.")
        if not self.cls_token_num < max_seq_len <= self.config.max_positions:
            raise ConfigError(f"max_seq_len={max_seq_len} must be in [{self.cls_token_num + 1}, "
                              f"{self.config.max_positions}] (class token + at most block_size={self.block_size} "
                              f"image tokens).")
        param = self.tok_embeddings.weight
        dtype = dtype or param.dtype
        kv_heads = self.config.n_kv_head or self.config.n_head
        if self._caches is not None:
            k = self._caches[0].k
            if k.shape[0] == batch_size and k.shape[2] == max_seq_len and k.dtype == dtype and k.device == param.device:
                self.reset_cache()
                return
        self._caches = [KVCache(batch_size, kv_heads, max_seq_len, self.config.head_dim, dtype=dtype,
                                device=param.device) for _ in self.layers]
        self._mark_caches_static()

    def reset_cache(self) -> None:
        for c in self._caches or []:
            c.reset()

    def release_cache(self) -> None:
        """Free the cache memory."""
        self._caches = None

    @property
    def cache_length(self) -> int:
        """Valid cached positions (0 before prefill / without a cache)."""
        return self._caches[0].length if self._caches else 0

    @property
    def cache_capacity(self) -> int:
        return self._caches[0].max_len if self._caches else 0

    def truncate_cache(self, length: int) -> None:
        """Roll every layer's cache back to `length` positions (nothing recomputed)."""
        self._require_cache()
        if not 0 <= length <= self.cache_length:
            raise ConfigError(f"cannot truncate the KV cache to {length}: it holds {self.cache_length} positions.")
        for c in self._caches:
            c.truncate(length)

    def select_cache_rows(self, rows: torch.Tensor) -> None:
        """Cache row b becomes a copy of row rows[b] in every layer (particle resampling while editing)."""
        self._require_cache(len(rows))
        for c in self._caches:
            c.select_rows(rows)

    def _require_cache(self, batch: int | None = None) -> None:
        if self._caches is None:
            raise ConfigError("no KV cache: call model.setup_cache(batch_size, max_seq_len) before prefill/decode.")
        if batch is not None and batch != self._caches[0].k.shape[0]:
            raise ConfigError(f"batch of {batch} rows does not match the KV cache's {self._caches[0].k.shape[0]}; "
                              f"call setup_cache with batch_size={batch}.")

    def _cached_step(self, h: torch.Tensor, start_pos: int) -> torch.Tensor:
        """Run embeddings h (B, T, dim) at positions start_pos.. on top of the cache; return float logits."""
        t = h.shape[1]
        end = start_pos + t
        mask = None
        if t > 1:  # causal inside the new window; every cached position is visible
            q_pos = torch.arange(start_pos, end, device=h.device)[:, None]
            mask = torch.arange(end, device=h.device)[None, :] <= q_pos
        rope = self.rope_rows(start_pos, end, h.device)
        h = self.tok_dropout(h)
        for layer, cache in zip(self.layers, self._caches):
            h = layer(h, rope, cache, mask)
        return self.output(self.norm(h)).float()

    def _cached_step_rows(self, h: torch.Tensor, starts: torch.Tensor) -> torch.Tensor:
        """Like _cached_step, but row b's tokens sit at positions starts[b].. (per-row accepted lengths)."""
        pos = starts[:, None] + torch.arange(h.shape[1], device=h.device)  # (B, T)
        rope = self.rope_rows(0, self.cache_capacity, h.device)[pos]       # (B, T, D/2, 2)
        h = self.tok_dropout(h)
        for layer, cache in zip(self.layers, self._caches):
            h = layer(h, rope, cache, None, starts)
        return self.output(self.norm(h)).float()

    @property
    def token_layout(self) -> TokenLayout:
        """The tokens this GPT models: a 2D grid (2D RoPE) or a 1D sequence (1D RoPE), raster order."""
        shape = self.config.grid_shape
        if len(shape) == 2:
            return TokenLayout.grid(*shape, vocab_size=self.vocab_size)
        return TokenLayout.sequence(shape[0], vocab_size=self.vocab_size)

    # Speculative decoding may give every row its own start position (decode with a (B,) LongTensor).
    per_row_positions = True

    # ----------------------------------------------------------------------------------------------
    # Compiled single-token step (static shapes: CUDA graphs on a GPU)
    # ----------------------------------------------------------------------------------------------
    def _static_decode(self, tokens: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """One token per row at position pos (a (1,) tensor): writes every layer's cache at pos and attends
        over the whole cache with a mask, so shapes never change from step to step. -> logits (B, 1, V)."""
        h = self.tok_dropout(self.tok_embeddings(tokens))
        rope = self._rope.index_select(0, pos)
        mask = (torch.arange(self.cache_capacity, device=pos.device) <= pos)[None, None, None, :]
        for layer, cache in zip(self.layers, self._caches):
            h = layer(h, rope, cache, mask, None, pos)
        return self.output(self.norm(h)).float()

    def compile_decode(self, mode: str | None = None, backend: str = "inductor") -> None:
        """Route every single-token `decode` at the cache's end through a torch.compile'd static-shape step
        (mode default: CUDA graphs on a GPU, inductor on a CPU). Falls back to eager with one warning where
        this machine cannot compile. Not the exact mode: attention over the masked whole cache rounds
        differently from attention over the prefix (tokens agree, logits within float rounding)."""
        from ..nn.compile import compiled

        device = self.tok_embeddings.weight.device
        self.rope_rows(0, 1, device)  # the table on the device before tracing
        self._static_step = compiled(self._static_decode, device, mode, what="GPT decode step", backend=backend)
        self._mark_caches_static()

    def _mark_caches_static(self) -> None:
        """CUDA graphs replay fixed addresses: the caches a compiled step writes in place must be marked."""
        if self._static_step is not None and self._caches and self._caches[0].k.device.type == "cuda":
            from ..nn.compile import mark_static

            mark_static(*(t for c in self._caches for t in (c.k, c.v)))

    def _decode_static(self, tokens: torch.Tensor, start_pos: int) -> torch.Tensor:
        pos = torch.tensor([start_pos], device=tokens.device)
        logits = self._static_step(tokens, pos)
        for c in self._caches:
            c.length = start_pos + 1
        return logits

    @torch.no_grad()
    def prefill(self, cond_idx: torch.Tensor) -> torch.Tensor:
        """Empty the cache, write the class-token position(s) and return the logits (B, V) of image token 0.

        Labels may include the null class `num_classes` (the unconditional half of a CFG batch). No label
        dropout here: sampling asks for the null class explicitly.
        """
        self._check_labels(cond_idx)
        self._require_cache(cond_idx.shape[0])
        self.reset_cache()
        h = self.cls_embedding(cond_idx, train=False)[:, : self.cls_token_num]
        return self._cached_step(h, 0)[:, -1]

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor, start_pos: int | torch.Tensor) -> torch.Tensor:
        """Feed tokens (B, T) at absolute positions start_pos .. start_pos+T-1 -> logits (B, T, V).

        start_pos may also be a (B,) LongTensor: row b then sits at start_pos[b].., sees only its own
        positions < start_pos[b] in the cache (its later, stale entries are masked and overwritten).

        logits[:, i] predicts the token at position start_pos+i+1. Image token j lives at position j + 1.
        start_pos may be < cache_length: the cache is first rolled back to start_pos (speculative decoding
        re-feeding a draft); it may not be > cache_length (a gap) nor run past the cache.
        """
        # The id range check reads the tokens back to the host: a compiled GPU step skips it (it would wait for
        # the GPU at every token; an out-of-range id still fails, in the embedding lookup).
        compiled_gpu_step = self._static_step is not None and tokens.device.type == "cuda" and tokens.shape[1] == 1
        self._check_tokens(tokens, "tokens", values=not compiled_gpu_step)
        self._require_cache(tokens.shape[0])
        if torch.is_tensor(start_pos) and start_pos.ndim == 1:  # one start per row
            starts = start_pos.to(device=tokens.device, dtype=torch.long)
            if starts.shape[0] != tokens.shape[0]:
                raise ConfigError(f"start_pos has {starts.shape[0]} entries for {tokens.shape[0]} rows")
            if int(starts.min()) < self.cls_token_num or int(starts.max()) > self.cache_length:
                raise ConfigError(f"per-row start positions must be in [{self.cls_token_num}, cache_length="
                                  f"{self.cache_length}], got {starts.tolist()}")
            if int(starts.max()) + tokens.shape[1] > self.cache_capacity:
                raise ConfigError(f"positions up to {int(starts.max()) + tokens.shape[1] - 1} do not fit the KV "
                                  f"cache of {self.cache_capacity} positions; call setup_cache with a larger max_seq_len")
            return self._cached_step_rows(self.tok_embeddings(tokens), starts)
        start_pos = int(start_pos)
        if not self.cls_token_num <= start_pos <= self.cache_length:
            raise ConfigError(f"start_pos={start_pos} must be in [{self.cls_token_num}, cache_length="
                              f"{self.cache_length}] (call prefill first; positions cannot leave gaps).")
        if start_pos + tokens.shape[1] > self.cache_capacity:
            raise ConfigError(f"positions up to {start_pos + tokens.shape[1] - 1} do not fit the KV cache of "
                              f"{self.cache_capacity} positions; call setup_cache with a larger max_seq_len "
                              f"(at most {self.config.max_positions}).")
        if start_pos < self.cache_length:
            self.truncate_cache(start_pos)
        if self._static_step is not None and tokens.shape[1] == 1:
            return self._decode_static(tokens, start_pos)
        return self._cached_step(self.tok_embeddings(tokens), start_pos)

    # ----------------------------------------------------------------------------------------------
    # Official checkpoints
    # ----------------------------------------------------------------------------------------------
    @classmethod
    def from_official(cls, path_or_state_dict, config: GPTConfig | str, **overrides) -> "GPT":
        """`GPT.from_official("c2i_L_256.pt", "gpt-l")`: build the preset (or config) and load the official
        LlamaGen weights (a file, or a dict holding them under 'model'/'module'/...) strictly. Eval mode."""
        what = "LlamaGen GPT checkpoint"
        sd = read_official_checkpoint(path_or_state_dict, what, prefer=("model", "module", "state_dict", "ema"))
        # Older official files may carry the RoPE table or gpt-fast KV caches; both are rebuilt here.
        sd = {k: v for k, v in sd.items() if k != "freqs_cis" and ".kv_cache." not in k and k != "causal_mask"}
        model = cls.build_for_official(config, overrides)
        load_state_dict_strict(model, sd, what=what)
        return model.eval()


# ----------------------------------------------------------------------------------------------------
# Presets (official GPT_models sizes; class-conditional ImageNet: vocab 16384, 1000 classes)
# ----------------------------------------------------------------------------------------------------
_SIZES = {  # name: (n_layer, n_head, dim, approx params)
    "b": (12, 12, 768, "111M"),
    "l": (24, 16, 1024, "343M"),
    "xl": (36, 20, 1280, "775M"),
    "xxl": (48, 24, 1536, "1.4B"),
    "3b": (24, 32, 3200, "3.1B"),
}
_RESOLUTIONS = {256: 16, 384: 24}  # image size -> token grid (VQ-16)


def _register(size: str, image_size: int):
    n_layer, n_head, dim, params = _SIZES[size]
    grid = _RESOLUTIONS[image_size]
    name = f"gpt-{size}" if image_size == 256 else f"gpt-{size}-{image_size}"

    @register_preset(name, family="next-token",
                     description=f"LlamaGen GPT-{size.upper()} c2i, {params}, {image_size}px ({grid}x{grid} tokens)")
    def build(**overrides):
        cfg = dict(n_layer=n_layer, n_head=n_head, dim=dim, vocab_size=16384, num_classes=1000,
                   cls_token_num=1, block_size=grid * grid)
        cfg.update(overrides)
        return GPT(GPTConfig(**cfg))

    return build


for _size in _SIZES:
    for _res in _RESOLUTIONS:
        _register(_size, _res)


@register_preset("gpt-fmnist", family="next-token",
                 description="small LlamaGen-style GPT for Fashion-MNIST (10 classes, 8x8 vq-fmnist codes)")
def gpt_fmnist(**overrides):
    # Dropout off: the CPU budget allows only a few epochs, far from overfitting.
    cfg = dict(dim=192, n_layer=6, n_head=3, multiple_of=64, vocab_size=1024, num_classes=10, cls_token_num=1,
               block_size=64, token_dropout_p=0.0, resid_dropout_p=0.0, ffn_dropout_p=0.0, class_dropout_prob=0.1)
    cfg.update(overrides)
    return GPT(GPTConfig(**cfg))
