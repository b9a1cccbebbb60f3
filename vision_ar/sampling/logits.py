"""Logits processors and the token draw: classifier-free guidance, temperature, top-k / top-p, sampling.

Everything here works on logits of shape (..., V) and follows the official VAR helpers
(`models/helpers.py: sample_with_top_k_top_p_, gumbel_softmax_with_rng`) bit for bit, so the same seed gives
the same tokens as the official code. The exact semantics matter for parity:

* top-k keeps every logit >= the k-th largest: ties with the k-th value are all kept, so more than k entries
  may survive. k larger than V keeps everything (the official code would crash).
* top-p ("VAR" convention): sort ASCENDING, softmax, cumulative sum from the smallest; drop the entries whose
  cumulative mass is <= 1 - p, never the largest. It runs on the already top-k-filtered logits (their -inf
  entries carry zero mass). Which of two tied logits is dropped follows torch.sort's order.
* the draw is torch.multinomial(softmax(logits).view(-1, V), 1, replacement=True, generator). For one sample
  torch implements it as argmax(P / E) with E ~ Exp(1) drawn for EVERY element of the (N, V) matrix, so each
  call consumes exactly N*V exponentials from the generator.
* "more smooth" (VAR visualisation mode) replaces the hard token by a Gumbel-softmax mixture of codebook vectors;
  it draws another N*V exponentials after the token draw.

Other families (LlamaGen's Hugging-Face-style filters) have their own convention in `token_filters.py`;
`FILTER_CONVENTIONS` is where a further convention plugs into `sample_tokens`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ..errors import ConfigError
from .fast_filters import top_k_top_p_sortless_

NEG_INF = float("-inf")


# ====================================================================================================
# Classifier-free guidance
# ====================================================================================================
def var_guidance_ratio(si: int, num_scales: int) -> float:
    """VAR's linear CFG ramp over scales: 0 at the first scale, 1 at the last (si / (S - 1))."""
    return si / (num_scales - 1) if num_scales > 1 else 0.0


def cfg_combine(cond: torch.Tensor, uncond: torch.Tensor, t: float) -> torch.Tensor:
    """(1 + t) * cond - t * uncond  (the official VAR form; t = 0 gives the conditional logits)."""
    return (1 + t) * cond - t * uncond


def var_cfg(logits_2B: torch.Tensor, cfg: float, si: int, num_scales: int) -> torch.Tensor:
    """Split a doubled batch [cond; uncond] and apply VAR's ramped guidance t = cfg * si / (S - 1)."""
    B = logits_2B.shape[0] // 2
    t = cfg * var_guidance_ratio(si, num_scales)
    return cfg_combine(logits_2B[:B], logits_2B[B:], t)


# ====================================================================================================
# Temperature, top-k, top-p (in place on a tensor the caller owns)
# ====================================================================================================
def apply_temperature_(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """logits / temperature; temperature 1 leaves the tensor untouched (no rounding at all)."""
    if temperature != 1.0:
        logits.div_(temperature)
    return logits


def top_k_mask_(logits: torch.Tensor, top_k: int) -> torch.Tensor:
    """Set every logit strictly below the k-th largest to -inf (ties with the k-th are kept). 0 = off."""
    if top_k > 0 and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, largest=True, sorted=False, dim=-1)[0].amin(dim=-1, keepdim=True)
        logits.masked_fill_(logits < kth, NEG_INF)
    return logits


def top_p_mask_var_(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """VAR nucleus filter: drop the smallest logits whose cumulative probability is <= 1 - top_p. 0 = off."""
    if top_p > 0:
        sorted_logits, order = logits.sort(dim=-1, descending=False)
        remove_sorted = sorted_logits.softmax(dim=-1).cumsum_(dim=-1) <= (1 - top_p)
        remove_sorted[..., -1:] = False  # the most likely token always survives
        remove = torch.empty_like(remove_sorted).scatter_(-1, order, remove_sorted)
        logits.masked_fill_(remove, NEG_INF)
    return logits


def filter_top_k_top_p_var_(logits: torch.Tensor, top_k: int = 0, top_p: float = 0.0) -> torch.Tensor:
    """VAR convention: top-k, then top-p on the result. top_k=0 / top_p=0 switch each off."""
    if top_k_top_p_sortless_(logits, top_k, top_p, "var"):  # the same result without a full sort
        return logits
    return top_p_mask_var_(top_k_mask_(logits, top_k), top_p)


# name -> in-place filter(logits, top_k, top_p). Add a convention here to share sample_tokens.
FILTER_CONVENTIONS: dict[str, Callable[[torch.Tensor, int, float], torch.Tensor]] = {
    "var": filter_top_k_top_p_var_,
}


def check_sampling_args(top_k: int, top_p: float, temperature: float = 1.0) -> None:
    if isinstance(top_k, bool) or int(top_k) != top_k or top_k < 0:
        raise ConfigError(f"top_k={top_k!r} must be an integer >= 0 (0 = no top-k filtering).")
    if not 0.0 <= top_p <= 1.0:
        raise ConfigError(f"top_p={top_p!r} must be in [0, 1] (VAR convention: 0 = no nucleus filtering).")
    if not temperature > 0:
        raise ConfigError(f"temperature={temperature!r} must be > 0 (1 = the model's distribution).")


# ====================================================================================================
# Drawing tokens
# ====================================================================================================
@dataclass
class SampledTokens:
    tokens: torch.Tensor           # (...,) int64: one token per row of logits
    kept_count: torch.Tensor       # (...,) int64: vocabulary entries that survived top-k / top-p
    filtered_logits: torch.Tensor  # (..., V): temperature-scaled, filtered logits (-inf = removed)


def draw_multinomial(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One index per row of probs (..., V), exactly torch.multinomial(probs, 1, replacement=True, generator)."""
    V = probs.shape[-1]
    idx = torch.multinomial(probs.reshape(-1, V), num_samples=1, replacement=True, generator=generator)
    return idx.view(probs.shape[:-1])


def sample_tokens(logits: torch.Tensor, generator: torch.Generator | None = None, top_k: int = 0,
                  top_p: float = 0.0, temperature: float = 1.0, convention: str = "var") -> SampledTokens:
    """temperature -> top-k/top-p (by `convention`) -> softmax -> one multinomial draw per row.

    `logits` (..., V) is not modified. generator=None uses torch's global RNG (like the official code).
    """
    if convention not in FILTER_CONVENTIONS:
        raise ConfigError(f"unknown top-k/top-p convention {convention!r}; known: {sorted(FILTER_CONVENTIONS)}")
    check_sampling_args(top_k, top_p, temperature)
    filtered = apply_temperature_(logits.clone(), temperature)
    FILTER_CONVENTIONS[convention](filtered, int(top_k), float(top_p))
    tokens = draw_multinomial(filtered.softmax(dim=-1), generator)
    kept = (filtered != NEG_INF).sum(dim=-1)
    return SampledTokens(tokens=tokens, kept_count=kept, filtered_logits=filtered)


def gumbel_softmax(logits: torch.Tensor, tau: float = 1.0, hard: bool = False, dim: int = -1,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """softmax((logits + G) / tau) with G = -log(E), E ~ Exp(1) from `generator` (one draw per element).

    Same draws and arithmetic as the official gumbel_softmax_with_rng (and F.gumbel_softmax when generator is
    None). hard=True returns the one-hot argmax with the soft gradient (straight-through).
    """
    gumbels = -torch.empty_like(logits, memory_format=torch.legacy_contiguous_format).exponential_(
        generator=generator).log()
    y_soft = ((logits + gumbels) / tau).softmax(dim)
    if not hard:
        return y_soft
    index = y_soft.max(dim, keepdim=True)[1]
    y_hard = torch.zeros_like(logits, memory_format=torch.legacy_contiguous_format).scatter_(dim, index, 1.0)
    return y_hard - y_soft.detach() + y_soft
