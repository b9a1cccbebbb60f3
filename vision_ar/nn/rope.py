"""Rotary position embeddings as LlamaGen uses them: 2D for a raster-ordered h x w token grid, 1D for a sequence.

Table layout (what `rope_2d_table` returns), shape (cls_token_num + grid*grid, head_dim // 2, 2):
  * rows 0 .. cls_token_num-1: all ZEROS (cos = sin = 0). The conditioning positions are not rotated but
    multiplied by zero, so their queries/keys vanish after RoPE (official LlamaGen behaviour; the class token
    still influences later tokens through its value vector and the residual stream).
  * 2D, row cls_token_num + r*w + c: image token at grid row r, column c. The first half of the rotated pairs
    (head_dim // 4 frequencies) encodes the row r, the second half the column c. The official table is the
    square case (h = w); a non-square grid uses the same frequencies with its own row and column counts.
  * 1D, row cls_token_num + i: token i of a sequence, head_dim // 2 frequencies (LlamaGen's 1D table).
The last axis holds (cos, sin). Rows are indexed by absolute sequence position.
"""
from __future__ import annotations

import torch

from ..errors import ConfigError


def rope_2d_table(grid_size: int | tuple[int, int], head_dim: int, base: float = 10000, cls_token_num: int = 1,
                  device: torch.device | str | None = None) -> torch.Tensor:
    """(cls_token_num + h*w, head_dim // 2, 2) float32 table of (cos, sin) for an h x w grid (grid_size = side of
    a square grid, or (h, w)); see module docstring."""
    if head_dim % 4 != 0:
        raise ConfigError(f"2D RoPE needs head_dim divisible by 4 (half for rows, half for columns, in pairs); "
                          f"got head_dim={head_dim}. Change dim / n_head.")
    h, w = (grid_size, grid_size) if isinstance(grid_size, int) else (int(s) for s in grid_size)
    half = head_dim // 2
    # Same float32 arithmetic as the official table, so positions match it to the last bit.
    inv_freq = 1.0 / (base ** (torch.arange(0, half, 2, device=device)[: half // 2].float() / half))  # (head_dim // 4,)
    row = torch.outer(torch.arange(h, device=inv_freq.device), inv_freq)  # (h, head_dim // 4)
    col = torch.outer(torch.arange(w, device=inv_freq.device), inv_freq)  # (w, head_dim // 4)
    grid_angles = torch.cat([
        row[:, None, :].expand(-1, w, -1),  # row index
        col[None, :, :].expand(h, -1, -1),  # column index
    ], dim=-1)  # (h, w, head_dim // 2)
    table = torch.stack([torch.cos(grid_angles), torch.sin(grid_angles)], dim=-1).flatten(0, 1)
    prefix = torch.zeros(cls_token_num, half, 2, dtype=table.dtype, device=table.device)
    return torch.cat([prefix, table])


def rope_1d_table(length: int | tuple[int], head_dim: int, base: float = 10000, cls_token_num: int = 1,
                  device: torch.device | str | None = None) -> torch.Tensor:
    """(cls_token_num + length, head_dim // 2, 2) float32 table of (cos, sin) for a 1D token sequence."""
    if head_dim % 2 != 0:
        raise ConfigError(f"RoPE rotates pairs: head_dim must be even, got {head_dim}. Change dim / n_head.")
    n = length if isinstance(length, int) else int(length[0])
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, device=device)[: head_dim // 2].float() / head_dim))
    angles = torch.outer(torch.arange(n, device=inv_freq.device), inv_freq)  # (n, head_dim // 2)
    table = torch.stack([torch.cos(angles), torch.sin(angles)], dim=-1)
    prefix = torch.zeros(cls_token_num, head_dim // 2, 2, dtype=table.dtype, device=table.device)
    return torch.cat([prefix, table])


def apply_rope(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Rotate consecutive pairs (x[2i], x[2i+1]) of x (B, L, H, D) by the (cos, sin) rows table (L, D/2, 2)
    (or (B, L, D/2, 2): one set of positions per row).

    Computed in float32 and cast back (as the official code), so half-precision models rotate identically.
    """
    b, length, h, d = x.shape
    if table.ndim == 3:  # the same positions for every row
        table = table[None]
    # (B, L, D/2, 2): each row at its own positions (speculative decoding with per-row accepted lengths)
    if table.shape[1] != length or table.shape[2] * 2 != d or table.shape[0] not in (1, b):
        raise ConfigError(f"RoPE table rows {tuple(table.shape)} do not fit the input {tuple(x.shape)}")
    pairs = x.float().reshape(b, length, h, d // 2, 2)
    cos = table[:, :, None, :, 0]
    sin = table[:, :, None, :, 1]
    x0, x1 = pairs[..., 0], pairs[..., 1]
    out = torch.stack([x0 * cos - x1 * sin, x1 * cos + x0 * sin], dim=-1)
    return out.flatten(3).type_as(x)
