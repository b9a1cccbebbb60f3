"""Finite Scalar Quantization (FSQ, Mentzer et al. 2023), as FlexTok uses it (apple/ml-flextok
`regularizers/quantize_fsq.py`).

Each of the d = len(levels) channels of a vector is squashed into its own small range and rounded, so the codebook
is implicit: the grid of all level combinations, prod(levels) codes, nothing to learn and nothing to collapse.

    bound(z)  = tanh(z + shift) * h - offset      h = (L - 1)(1 + 1e-3) / 2, offset = 0.5 for even L (else 0),
                                                   shift = atanh(offset / h): an even level count gets L values
                                                   -L/2 .. L/2-1, an odd one -(L-1)/2 .. (L-1)/2
    code      = round(bound(z)) / (L // 2)        in [-1, 1]; round is half-to-even (torch.round), with a
                                                   straight-through gradient in training
    index     = sum_i (code_i * (L_i // 2) + L_i // 2) * basis_i,   basis = cumprod([1] + levels[:-1])
                                                   (the first channel is the least significant digit)

Shapes: the quantized channels are the LAST dimension (`..., d`); indices have the same leading dimensions.
Nothing here holds parameters, so FSQ adds no keys to a checkpoint.
"""
from __future__ import annotations

import math
import random
from typing import Sequence

import torch
from torch import nn

from ..errors import ConfigError

BOUND_EPS = 1e-3  # the official bound's margin: keeps tanh's range slightly wider than the outermost levels


class FSQ(nn.Module):
    """FSQ with the given `levels`.

    Training-only options (off by default, as in every released FlexTok config):
      drop_quant_p: probability of passing one call's values un-rounded (one draw per call: the official code
        quantizes the packed batch of all images at once);
      corrupt_tokens_p / min_corrupt_tokens_p / apply_corrupt_tokens_p: with probability apply_corrupt_tokens_p,
        replace a uniform(min, max) fraction of the codes by random codes (robustness to sampling errors).
    """

    def __init__(self, levels: Sequence[int], drop_quant_p: float = 0.0, corrupt_tokens_p: float = 0.0,
                 min_corrupt_tokens_p: float | None = None, apply_corrupt_tokens_p: float = 0.2):
        super().__init__()
        levels = [int(v) for v in levels]
        if not levels or any(v < 2 for v in levels):
            raise ConfigError(f"FSQ levels must be a non-empty list of integers >= 2 (a level count of 1 has no "
                              f"code to choose), got {list(levels)}")
        self.levels = tuple(levels)
        self.codebook_size = math.prod(levels)
        basis = [1]
        for v in levels[:-1]:
            basis.append(basis[-1] * v)
        # float32 buffers for the arithmetic (exactly the official float32 values); int64 basis for indices
        self.register_buffer("_levels_f", torch.tensor(levels, dtype=torch.float32), persistent=False)
        self.register_buffer("_half_width", torch.tensor([v // 2 for v in levels], dtype=torch.float32),
                             persistent=False)
        self.register_buffer("_levels_i", torch.tensor(levels, dtype=torch.int64), persistent=False)
        self.register_buffer("_basis", torch.tensor(basis, dtype=torch.int64), persistent=False)
        for name, p in (("drop_quant_p", drop_quant_p), ("corrupt_tokens_p", corrupt_tokens_p),
                        ("apply_corrupt_tokens_p", apply_corrupt_tokens_p)):
            if not 0.0 <= float(p) <= 1.0:
                raise ConfigError(f"FSQ {name} must be a probability in [0, 1], got {p}")
        self.drop_quant_p = float(drop_quant_p)
        self.corrupt_tokens_p = float(corrupt_tokens_p)
        self.min_corrupt_tokens_p = float(min_corrupt_tokens_p or corrupt_tokens_p)
        self.apply_corrupt_tokens_p = float(apply_corrupt_tokens_p)

    @property
    def dim(self) -> int:
        return len(self.levels)

    @property
    def basis(self) -> torch.Tensor:
        return self._basis

    def extra_repr(self) -> str:
        return f"levels={list(self.levels)}, codebook_size={self.codebook_size}"

    # ---- the three maps --------------------------------------------------------------------------------
    def bound(self, z: torch.Tensor) -> torch.Tensor:
        """z (..., d) -> values in each channel's open interval (official op order, float32)."""
        self._check_dim(z)
        half_l = (self._levels_f - 1) * (1 + BOUND_EPS) / 2
        offset = torch.where(self._levels_i % 2 == 0, 0.5, 0.0).to(half_l)
        shift = (offset / half_l).atanh()
        return (z.float() + shift).tanh() * half_l - offset

    def quantize(self, z: torch.Tensor) -> torch.Tensor:
        """z (..., d) -> codes (..., d) in [-1, 1]; straight-through gradient (and quant dropout) in training."""
        bounded = self.bound(z)
        rounded = bounded.round()
        keep_unrounded = self.training and self.drop_quant_p > 0 and \
            bool(torch.bernoulli(torch.tensor(self.drop_quant_p)))
        if not keep_unrounded:
            bounded = bounded + (rounded - bounded).detach()
        return bounded / self._half_width

    def codes_to_indices(self, codes: torch.Tensor) -> torch.LongTensor:
        """codes (..., d) on the grid -> indices (...) int64."""
        self._check_dim(codes)
        digits = torch.round(codes.float() * self._half_width + self._half_width).long()
        return (digits * self._basis).sum(dim=-1)

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        """indices (...) -> codes (..., d) float32; an index outside [0, codebook_size) is an error."""
        if not isinstance(indices, torch.Tensor) or indices.is_floating_point() or indices.is_complex():
            raise ConfigError(f"FSQ indices must be an integer tensor, got "
                              f"{getattr(indices, 'dtype', type(indices).__name__)}")
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= self.codebook_size):
            raise ConfigError(f"FSQ token ids must be in [0, {self.codebook_size - 1}] (levels {list(self.levels)}), "
                              f"got min {int(indices.min())}, max {int(indices.max())}: these tokens come from "
                              f"another codebook or vocabulary.")
        digits = (indices.long()[..., None] // self._basis) % self._levels_i
        return (digits.float() - self._half_width) / self._half_width

    # ---- tokenizer use ---------------------------------------------------------------------------------
    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.LongTensor]:
        """z (..., d) -> (codes (..., d), indices (...)); codes carry the straight-through gradient."""
        codes = self.quantize(z)
        if self.training and self.corrupt_tokens_p > 0 and random.random() < self.apply_corrupt_tokens_p:
            codes = self._corrupt(codes)
        return codes, self.codes_to_indices(codes.detach())

    def _corrupt(self, codes: torch.Tensor) -> torch.Tensor:
        """Replace a random fraction of the code vectors by random codes (training robustness option)."""
        lead = codes.shape[:-1]
        random_codes = self.indices_to_codes(torch.randint(0, self.codebook_size, lead, device=codes.device))
        fraction = random.uniform(self.min_corrupt_tokens_p, self.corrupt_tokens_p)
        mask = (torch.rand(lead, device=codes.device) < fraction)[..., None]
        return torch.where(mask, random_codes.to(codes.dtype), codes)

    def _check_dim(self, x: torch.Tensor) -> None:
        if x.shape[-1] != self.dim:
            raise ConfigError(f"FSQ with levels {list(self.levels)} quantizes vectors of {self.dim} channels (last "
                              f"dim), got shape {tuple(x.shape)}")
