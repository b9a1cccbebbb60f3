"""Entity layouts of next-X prediction: how a latent grid becomes an ordered sequence of entities.

xAR predicts one *entity* per autoregressive step. An `EntityLayout` is the one place that knows, for a
latent grid of h x w tokens:

    sequence order      which grid token sits at each sequence position (entities are contiguous runs)
    entity of position  -> the block-causal attention mask (a position sees every position of its own and of
                           earlier entities) and the per-entity noise level (one flow time t per entity)
    RoPE positions      (row, col) of every sequence position in grid units
    to / from sequence  latent (B,C,h,w) <-> sequence (B,L,C), and the split into entities

The five entity types of the paper ("Beyond Next-Token: Next-X Prediction", Ren et al. 2025):

    token       every token is an entity (next-token prediction, raster order)
    cell k      k x k blocks of neighbouring tokens, cells in raster order, raster inside a cell
                (official xAR: k = 8 on the 16x16 KL-16 grid -> 4 entities of 64 tokens)
    subsample k k*k tokens spread over the grid with stride (h/k, w/k): entity (a, b) holds the tokens at
                rows a, a + h/k, ... and columns b, b + w/k, ...  (a dilated cell: non-local groups)
    scale       coarse to fine: entity s is the latent area-downsampled to side scales[s] (the last scale is
                the latent itself), VAR-like; a coarse token's RoPE position is the centre of the region it
                covers, and the generator adds the previous scale, upsampled, to each token's input
    image       one entity: the whole latent, a single flow (no autoregression)

cell 1 == token and cell h == image have the same order and mask; the names exist because the paper uses them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import ConfigError

ENTITY_TYPES = ("token", "cell", "subsample", "scale", "image")


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def default_scales(side: int) -> tuple[int, ...]:
    """1, 2, 4, ... up to `side` (side itself always last)."""
    out, s = [], 1
    while s < side:
        out.append(s)
        s *= 2
    return tuple(out + [side])


@dataclass(frozen=True)
class EntitySpec:
    """What the generator config says: the entity type and its size."""

    kind: str = "cell"
    size: int = 8                 # cell / subsample: k (k*k tokens per entity); ignored by token / image / scale
    scales: tuple = ()            # scale: sides, coarse to fine (() = 1, 2, 4, ... up to the grid side)

    def describe(self) -> str:
        if self.kind in ("cell", "subsample"):
            return f"{self.kind} (entity_size={self.size})"
        if self.kind == "scale":
            return f"scale (scales={tuple(self.scales) or 'default'})"
        return self.kind


class EntityLayout:
    """The sequence layout of one entity type on an h x w latent grid (see the module docstring)."""

    def __init__(self, spec: EntitySpec, grid: tuple[int, int]):
        with torch.device("cpu"):  # index tables are CPU tensors even when a model is built on the meta device
            self._build(spec, grid)

    def _build(self, spec: EntitySpec, grid: tuple[int, int]) -> None:
        self.spec, self.grid = spec, (int(grid[0]), int(grid[1]))
        h, w = self.grid
        kind = spec.kind
        if kind not in ENTITY_TYPES:
            raise ConfigError(f"unknown entity type {kind!r}; choose one of {', '.join(ENTITY_TYPES)}")
        if h < 1 or w < 1:
            raise ConfigError(f"the latent grid must be at least 1x1, got {h}x{w}")
        self.scales: tuple[int, ...] = ()
        if kind == "scale":
            self._build_scales(spec)
        else:
            self._build_permutation(spec)
        self.num_entities = len(self.entity_sizes)
        self.seq_len = int(sum(self.entity_sizes))
        self.bounds = []  # [start, end) of each entity in the sequence
        start = 0
        for n in self.entity_sizes:
            self.bounds.append((start, start + n))
            start += n
        self.entity_index = torch.repeat_interleave(torch.arange(self.num_entities),
                                                    torch.tensor(self.entity_sizes))

    # ---- construction ------------------------------------------------------------------------------
    def _check_tiles(self, k: int) -> None:
        h, w = self.grid
        if not isinstance(k, int) or k < 1 or h % k or w % k:
            common = [d for d in _divisors(h) if w % d == 0]
            raise ConfigError(f"entity_size {k} does not tile the {h}x{w} latent grid: a {self.spec.kind} entity "
                              f"of {k}x{k} tokens needs k to divide both {h} and {w}. Valid sizes: {common}.")

    def _build_permutation(self, spec: EntitySpec) -> None:
        h, w = self.grid
        rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        if spec.kind == "token":
            order_r, order_c = rows.reshape(-1), cols.reshape(-1)
            self.entity_sizes = [1] * (h * w)
        elif spec.kind == "image":
            order_r, order_c = rows.reshape(-1), cols.reshape(-1)
            self.entity_sizes = [h * w]
        elif spec.kind == "cell":
            k = spec.size
            self._check_tiles(k)
            # (h/k, k, w/k, k) -> (cell row, cell col, row in cell, col in cell): official clusterify order
            r = rows.reshape(h // k, k, w // k, k).permute(0, 2, 1, 3).reshape(-1)
            c = cols.reshape(h // k, k, w // k, k).permute(0, 2, 1, 3).reshape(-1)
            order_r, order_c = r, c
            self.entity_sizes = [k * k] * ((h // k) * (w // k))
        else:  # subsample
            k = spec.size
            self._check_tiles(k)
            s_h, s_w = h // k, w // k  # strides
            # row = i * s_h + a, col = j * s_w + b -> (a, b) is the entity, (i, j) the token inside it
            r = rows.reshape(k, s_h, k, s_w).permute(1, 3, 0, 2).reshape(-1)
            c = cols.reshape(k, s_h, k, s_w).permute(1, 3, 0, 2).reshape(-1)
            order_r, order_c = r, c
            self.entity_sizes = [k * k] * (s_h * s_w)
        self.order = (order_r * w + order_c).long()  # grid index of every sequence position
        self.positions = torch.stack([order_r, order_c], dim=1).float()

    def _build_scales(self, spec: EntitySpec) -> None:
        h, w = self.grid
        if h != w:
            raise ConfigError(f"the scale entity needs a square latent grid, got {h}x{w}; use cell/subsample/"
                              f"token/image entities for non-square latents.")
        scales = tuple(int(s) for s in spec.scales) or default_scales(h)
        if any(s < 1 for s in scales) or any(a >= b for a, b in zip(scales, scales[1:])) or scales[-1] != h:
            raise ConfigError(f"scales {scales} must increase strictly and end at the grid side {h} "
                              f"(e.g. {default_scales(h)}).")
        self.scales = scales
        self.entity_sizes = [s * s for s in scales]
        self.order = None  # several tokens per grid cell: no permutation
        pos = []
        for s in scales:
            centre = (torch.arange(s, dtype=torch.float64) + 0.5) * (h / s) - 0.5  # centre of the covered region
            r, c = torch.meshgrid(centre, centre, indexing="ij")
            pos.append(torch.stack([r.reshape(-1), c.reshape(-1)], dim=1))
        self.positions = torch.cat(pos).float()

    # ---- masks -------------------------------------------------------------------------------------
    def attention_mask(self) -> torch.Tensor:
        """(L, L) additive float mask: 0 where entity(key) <= entity(query), -inf elsewhere (official `mask`)."""
        e = self.entity_index
        return torch.where(e[None, :] <= e[:, None], 0.0, -math.inf)

    def teacher_forcing_mask(self) -> torch.Tensor:
        """(2L, 2L) mask of the sequence [clean entities | noisy entities] (Noisy Context Learning off).

        A clean position sees clean positions of its own and earlier entities (block-causal); a noisy position
        sees the clean positions of strictly earlier entities and the noisy positions of its own entity."""
        e = self.entity_index
        clean_clean = e[None, :] <= e[:, None]
        noisy_clean = e[None, :] < e[:, None]
        noisy_noisy = e[None, :] == e[:, None]
        none = torch.zeros_like(clean_clean)
        allowed = torch.cat([torch.cat([clean_clean, none], 1), torch.cat([noisy_clean, noisy_noisy], 1)], 0)
        return torch.where(allowed, 0.0, -math.inf)

    # ---- latent <-> sequence -----------------------------------------------------------------------
    def check_latents(self, x: torch.Tensor, channels: int) -> None:
        h, w = self.grid
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.ndim != 4:
            raise ConfigError(f"latents must be a float tensor (B, {channels}, {h}, {w}), got "
                              f"{getattr(x, 'shape', type(x))} {getattr(x, 'dtype', '')}.")
        if x.shape[1] != channels:
            raise ConfigError(f"latents have {x.shape[1]} channels but this generator models {channels}-channel "
                              f"latents (B, {channels}, {h}, {w}); use the tokenizer it was trained with.")
        if tuple(x.shape[2:]) != (h, w):
            raise ConfigError(f"latents are {x.shape[2]}x{x.shape[3]} but this generator's grid is {h}x{w}; "
                              f"encode images of the size it was built for.")

    def to_sequence(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) -> (B, L, C) in entity order (scale: every scale's area-downsampled latent)."""
        B, C = x.shape[:2]
        if self.order is not None:
            return x.flatten(2).transpose(1, 2)[:, self.order.to(x.device)]
        return torch.cat([F.interpolate(x, size=(s, s), mode="area").flatten(2).transpose(1, 2)
                          for s in self.scales], dim=1)

    def from_sequence(self, seq: torch.Tensor) -> torch.Tensor:
        """(B, L, C) -> (B, C, h, w) (scale: the finest scale's tokens)."""
        B, L, C = seq.shape
        h, w = self.grid
        if self.order is None:
            start, end = self.bounds[-1]
            return seq[:, start:end].transpose(1, 2).reshape(B, C, h, w)
        out = seq.new_empty(B, h * w, C)
        out[:, self.order.to(seq.device)] = seq
        return out.transpose(1, 2).reshape(B, C, h, w)

    def split(self, seq: torch.Tensor) -> list[torch.Tensor]:
        """(B, L, C) -> one (B, n_k, C) tensor per entity."""
        return list(seq.split(self.entity_sizes, dim=1))

    # ---- scale entities: the previous scale, upsampled, as context of the next ----------------------
    @property
    def uses_scale_context(self) -> bool:
        return self.spec.kind == "scale"

    def upsample_previous(self, prev: torch.Tensor, entity: int) -> torch.Tensor:
        """Tokens (B, s_{k-1}^2, C) of scale k-1 -> (B, s_k^2, C) bilinearly upsampled to scale k."""
        B, _, C = prev.shape
        s_prev, s = self.scales[entity - 1], self.scales[entity]
        img = prev.transpose(1, 2).reshape(B, C, s_prev, s_prev)
        up = F.interpolate(img, size=(s, s), mode="bilinear", align_corners=False)
        return up.flatten(2).transpose(1, 2)

    def scale_context(self, seq: torch.Tensor) -> torch.Tensor:
        """(B, L, C) full sequence -> (B, L, C): entity k's block holds entity k-1 upsampled (zeros for k=0)."""
        parts = self.split(seq)
        ctx = [torch.zeros_like(parts[0])] + [self.upsample_previous(parts[k - 1], k) for k in range(1, len(parts))]
        return torch.cat(ctx, dim=1)

    def describe(self) -> str:
        h, w = self.grid
        sizes = sorted(set(self.entity_sizes))
        tokens = f"{sizes[0]}" if len(sizes) == 1 else f"{'/'.join(map(str, self.entity_sizes))}"
        return f"{self.spec.describe()} on a {h}x{w} grid: {self.num_entities} entities of {tokens} tokens"


def candidate_specs(grid: tuple[int, int]) -> list[EntitySpec]:
    """Every entity layout of a grid (to name the one a checkpoint was trained with)."""
    h, w = grid
    common = [d for d in _divisors(h) if w % d == 0]
    specs = [EntitySpec("token", 1), EntitySpec("image", 1)]
    specs += [EntitySpec("cell", k) for k in common if 1 < k and not (k == h == w)]
    specs += [EntitySpec("subsample", k) for k in common if 1 < k < max(h, w)]
    if h == w:
        specs.append(EntitySpec("scale", 1))
    return specs
