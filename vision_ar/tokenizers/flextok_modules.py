"""FlexTok's encoder and decoder (apple/ml-flextok `model/`), built from the typed specs of flextok_config.py.

The modules are held in a `module_dict` under the config's own module names, so their parameters carry the
official state_dict names (`encoder.module_dict.<name>.*`); the small parameter holders below use the official
attribute names (patch_proj, registers, proj, dropout_mask_token, nullcond, adaLN_modulation).

Map: weight init | parameter holders | encoder | decoder.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..nn.adaln import modulate
from ..nn.norms import fp32_layer_norm
from .flextok_config import DecoderSpec, EncoderSpec, HeadSpec, PatchSpec
from .flextok_vit import (FlexTransformer, PositionalEmbedding, TimestepEmbedder, attention_mask, patchify,
                          unpatchify)


def init_weight(w: torch.Tensor, style: str) -> None:
    """The official weight init styles of new models ('zero', 'xavier', 'trunc_normal' std 0.02)."""
    if style == "zero":
        nn.init.zeros_(w)
    elif style == "xavier":
        nn.init.xavier_uniform_(w)
    else:
        nn.init.trunc_normal_(w, std=0.02)


# ----------------------------------------------------------------------------------------------------
# Small parameter holders (their attribute names are the official state_dict names)
# ----------------------------------------------------------------------------------------------------
class PatchEmbed(nn.Module):
    def __init__(self, spec: PatchSpec):
        super().__init__()
        self.spec = spec
        d_in = spec.channels_in * spec.patch_sizes[0] * spec.patch_sizes[1]
        self.patch_proj = nn.Linear(d_in, spec.dim) if spec.dim is not None else nn.Identity()
        if spec.dim is not None:
            nn.init.xavier_uniform_(self.patch_proj.weight)
            nn.init.zeros_(self.patch_proj.bias)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        """(B,C,h,w) -> (B, h/p, w/p, D) (or (B, h*w/p^2, D) when the config flattens patches)."""
        x = self.patch_proj(patchify(latents.permute(0, 2, 3, 1), self.spec.patch_sizes))
        return x.flatten(1, 2) if self.spec.flatten else x


class Registers(nn.Module):
    def __init__(self, n: int, dim: int):
        super().__init__()
        self.registers = nn.Parameter(torch.empty(n, dim))
        nn.init.trunc_normal_(self.registers, std=0.02)


class Projection(nn.Module):
    def __init__(self, dim_in: int, dim: int, bias: bool = True):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim, bias=bias)
        nn.init.xavier_uniform_(self.proj.weight)
        if bias:
            nn.init.zeros_(self.proj.bias)

    def forward(self, x):
        return self.proj(x)


class MaskToken(nn.Module):
    """Nested dropout: what a register past the kept prefix becomes (`dropout_mask_token`)."""

    def __init__(self, dim: int):
        super().__init__()
        self.dropout_mask_token = nn.Parameter(torch.empty(dim))
        nn.init.trunc_normal_(self.dropout_mask_token, std=0.02)


class NullCond(nn.Module):
    """The null condition of classifier-free guidance: a learned vector (`nullcond`), or zeros (no parameter)."""

    def __init__(self, dim: int, learned: bool):
        super().__init__()
        self.learned = learned
        if learned:
            self.nullcond = nn.Parameter(torch.empty(dim))
            nn.init.trunc_normal_(self.nullcond, std=0.02)

    def vector(self, like: torch.Tensor) -> torch.Tensor:
        return self.nullcond.to(like) if self.learned else like.new_zeros(like.shape[-1])


class LinearHead(nn.Module):
    """Non-affine LayerNorm (optional), adaLN shift/scale from the condition (optional), Linear."""

    def __init__(self, spec: HeadSpec):
        super().__init__()
        self.spec = spec
        if spec.adaLN:
            self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(spec.dim, 2 * spec.dim, bias=spec.adaLN_bias))
            nn.init.zeros_(self.adaLN_modulation[1].weight)
            if spec.adaLN_bias:
                nn.init.zeros_(self.adaLN_modulation[1].bias)
        self.proj = nn.Linear(spec.dim, spec.dim_out, bias=spec.bias)
        init_weight(self.proj.weight, spec.init)  # the official heads start at zero
        if spec.bias:
            nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        if self.spec.norm:
            x = fp32_layer_norm(x)
        if self.spec.adaLN:
            shift, scale = self.adaLN_modulation(cond).chunk(2, dim=-1)
            x = modulate(x, scale[:, None], shift[:, None])
        return self.proj(x)


# ----------------------------------------------------------------------------------------------------
# Encoder: [patches of the latents | registers] -> ViT (registers causal) -> register head
# ----------------------------------------------------------------------------------------------------
class FlexTokEncoder(nn.Module):
    def __init__(self, spec: EncoderSpec):
        super().__init__()
        self.spec = spec
        v = spec.vit
        mods = {spec.patch.name: PatchEmbed(spec.patch)}
        if spec.posemb is not None:
            mods[spec.posemb.name] = PositionalEmbedding(spec.posemb.dim, spec.posemb.max_sizes, spec.posemb.kind,
                                                         spec.posemb.scaling)
        mods[spec.registers.name] = Registers(spec.registers.n_max, spec.registers.dim)
        mods[v.name] = FlexTransformer(v.dim, v.depth, v.head_dim, v.drop_path_rate, init=v.init,
                                       zero_init_query_proj=v.zero_init_query_proj, **v.block_kwargs())
        mods[spec.head.name] = LinearHead(spec.head)
        self.module_dict = nn.ModuleDict(mods)  # names from the config: the official state_dict prefixes

    def _m(self, name):
        return self.module_dict[name]

    def register_tokens(self, sizes: torch.Tensor) -> torch.Tensor:
        """(B, max(sizes), D): the first `size` learned registers per image ('nested'), or all of them average-
        pooled to `size` ('avg_pool'); rows are zero-padded past their size."""
        spec = self.spec.registers
        reg = self._m(spec.name).registers
        n_pad = int(sizes.max())
        out = reg.new_zeros(len(sizes), n_pad, reg.shape[1])
        for size in sorted(set(sizes.tolist())):
            rows = (sizes == size).nonzero().flatten()
            chosen = reg[:size] if spec.ordering_mode == "nested" else \
                F.adaptive_avg_pool1d(reg.T[None], size)[0].T
            out[rows, :size] = chosen.to(out.dtype)
        return out

    def forward(self, latents: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
        """latents (B,C,h,w), register counts (B,) -> pre-quantisation registers (B, max(sizes), n_codes)."""
        patches = self._m(self.spec.patch.name)(latents)
        if self.spec.posemb is not None:
            patches = self._m(self.spec.posemb.name)(patches)
        patches = patches.flatten(1, -2)
        regs = self.register_tokens(sizes)
        n_p = patches.shape[1]
        mask = attention_mask(self.spec.vit.mask_mode, n_p, sizes.to(latents.device), regs.shape[1])
        out = self._m(self.spec.vit.name)(torch.cat([patches, regs], dim=1), mask)
        return self._m(self.spec.head.name)(out[:, n_p:])


# ----------------------------------------------------------------------------------------------------
# Decoder: velocity of the noised latents given a prefix of the registers and t
# ----------------------------------------------------------------------------------------------------
class FlexTokDecoder(nn.Module):
    def __init__(self, spec: DecoderSpec):
        super().__init__()
        self.spec = spec
        mods: dict[str, nn.Module] = {}
        for op in spec.register_ops:
            o = op.options
            if op.kind == "linear":
                mods[op.name] = Projection(o["dim_in"], o["dim"], o["bias"])
            elif op.kind == "posemb":
                pe = o["spec"]
                mods[op.name] = PositionalEmbedding(pe.dim, pe.max_sizes, pe.kind, pe.scaling)
            elif op.kind == "nested_dropout":
                mods[op.name] = MaskToken(o["dim"])
            elif op.kind == "nullcond":
                mods[op.name] = NullCond(spec.vit.dim, o["learned"])
        mods[spec.patch.name] = PatchEmbed(spec.patch)
        if spec.posemb is not None:
            mods[spec.posemb.name] = PositionalEmbedding(spec.posemb.dim, spec.posemb.max_sizes, spec.posemb.kind,
                                                         spec.posemb.scaling)
        mods[spec.time_name] = TimestepEmbedder(spec.time_dim, spec.frequency_embedding_size, spec.max_timestep)
        v = spec.vit
        mods[v.name] = FlexTransformer(v.dim, v.depth, v.head_dim, v.drop_path_rate, init=v.init,
                                       zero_init_query_proj=v.zero_init_query_proj, **v.block_kwargs())
        mods[spec.head.name] = LinearHead(spec.head)
        self.module_dict = nn.ModuleDict(mods)

    def _m(self, name):
        return self.module_dict[name]

    def register_stream(self, quants: torch.Tensor, keep_k: torch.Tensor, null: torch.Tensor,
                        lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """FSQ codes (B,N,d) -> decoder register tokens (B,N',D) and their real lengths, the config's ops in order:
        projection, positions, nested dropout (positions >= keep_k become the mask token), null condition
        (rows with null=True: every position, or one single token, becomes the null condition)."""
        x = quants
        pos = torch.arange(x.shape[1], device=x.device)
        for op in self.spec.register_ops:
            m = self._m(op.name)
            if op.kind == "linear":
                x = m(x)
            elif op.kind == "posemb":
                x = x + m.table((x.shape[1],))
            elif op.kind == "nested_dropout":
                dropped = pos[None, :, None] >= keep_k.to(x.device)[:, None, None]
                x = torch.where(dropped, m.dropout_mask_token.to(x), x)
            elif op.kind == "nullcond" and (self.training or bool(null.any())):  # training: always in the graph
                # (DDP needs every parameter used every step, dropped or not)
                nullv = m.vector(x)
                rows = null.to(x.device)[:, None, None]
                if op.options["single_token"]:
                    x = torch.where(rows & (pos[None, :, None] == 0), nullv, x)
                    lengths = torch.where(null.to(lengths.device), torch.ones_like(lengths), lengths)
                else:
                    x = torch.where(rows, nullv, x)
        return x, lengths

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, quants: torch.Tensor, keep_k: torch.Tensor,
                null: torch.Tensor, lengths: torch.Tensor | None = None, return_layers: Sequence[int] = ()):
        """Velocity (B,C,h,w) of x_t (B,C,h,w) at times t (B,), conditioned on the first keep_k[b] of the codes
        quants (B,N,d) (rows hold lengths[b] real registers; default N), or on the null condition where null[b].
        With return_layers, also the patch tokens after those transformer layers (REPA)."""
        b = x_t.shape[0]
        if lengths is None:
            lengths = torch.full((b,), quants.shape[1], dtype=torch.long, device=quants.device)
        regs, lengths = self.register_stream(quants, keep_k, null, lengths)
        patches = self._m(self.spec.patch.name)(x_t)
        if self.spec.posemb is not None:
            patches = self._m(self.spec.posemb.name)(patches)
        grid = patches.shape[1:-1]
        patches = patches.flatten(1, -2)
        n_p, n_r = patches.shape[1], regs.shape[1]
        temb = self._m(self.spec.time_name)(t)
        v = self.spec.vit
        segments = torch.zeros(n_p + n_r, dtype=torch.long, device=x_t.device)
        if v.adaLN_expansion == 2:
            segments[n_p:] = 1  # registers get the second modulation set
        mask = attention_mask(v.mask_mode, n_p, lengths.to(x_t.device), n_r)
        out = self._m(v.name)(torch.cat([patches, regs], dim=1), mask, temb, segments, return_layers=return_layers)
        out, hidden = out if return_layers else (out, [])
        y = self._m(self.spec.head.name)(out[:, :n_p], temb)
        ph, pw = self.spec.head.patch_sizes
        if len(grid) == 1:  # flattened patches: back to the 2D grid of the input
            grid = (x_t.shape[2] // ph, x_t.shape[3] // pw)
        y = unpatchify(y.reshape(b, *grid, -1), (ph, pw)).permute(0, 3, 1, 2)
        return (y, [h[:, :n_p] for h in hidden]) if return_layers else y
