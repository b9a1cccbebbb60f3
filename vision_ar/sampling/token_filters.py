"""LlamaGen's token-sampling convention: temperature, HF-style top-k / top-p filtering, multinomial draw.

Why a separate file from `logits.py` (the VAR-family processors): the conventions differ in details that
change which token is drawn for the same seed, and parity with each official code base needs its own:
  * LlamaGen filters with Hugging Face's `top_k_top_p_filtering` (transformers v3.2): top-k removes logits
    strictly below the k-th largest (ties with the k-th are KEPT); top-p then sorts the (already top-k filtered,
    temperature-scaled) logits, removes tokens whose cumulative softmax mass exceeds top_p, shifted right by
    one so the first token crossing the threshold is kept, and always keeps the best token.
  * temperature divides the logits first (`/ max(temperature, 1e-5)`, so 0 means near-greedy), and the
    filters see the scaled logits (top-p mass therefore depends on temperature).
  * the draw is ONE `torch.multinomial(softmax(logits), 1)` per row, consuming the generator exactly as the
    official code does, so tokens equal the official ones for the same seed on the same device.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from .fast_filters import top_k_top_p_sortless_


def check_sampling_args(temperature: float, top_k: int, top_p: float) -> None:
    if temperature < 0:
        raise ConfigError(f"temperature={temperature} must be >= 0 (0 = near-greedy, 1 = the model's distribution).")
    if int(top_k) != top_k or top_k < 0:
        raise ConfigError(f"top_k={top_k} must be an integer >= 0 (0 = no top-k filtering).")
    if not 0.0 < top_p <= 1.0:
        raise ConfigError(f"top_p={top_p} must be in (0, 1] (1 = no nucleus filtering).")


def top_k_top_p_filter(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0,
                       min_tokens_to_keep: int = 1) -> torch.Tensor:
    """logits (B, V) -> a copy with filtered entries set to -inf (HF `top_k_top_p_filtering` semantics)."""
    neg_inf = float("-inf")
    if min_tokens_to_keep == 1 and 0 < top_k < logits.shape[-1] and top_p < 1.0:
        out = logits.clone()  # the same result without sorting the vocabulary (fast_filters.py)
        if top_k_top_p_sortless_(out, int(top_k), float(top_p), "hf"):
            return out
    if top_k > 0:
        k = min(max(int(top_k), min_tokens_to_keep), logits.shape[-1])
        kth = torch.topk(logits, k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, neg_inf)
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cum = torch.cumsum(F.softmax(sorted_logits, dim=-1), dim=-1)
        remove_sorted = cum > top_p
        if min_tokens_to_keep > 1:  # (HF applies this only for > 1; the shift below keeps the best token)
            remove_sorted[..., :min_tokens_to_keep] = False
        # Shift right: the token that crosses the threshold stays in the nucleus.
        remove_sorted = torch.cat([torch.zeros_like(remove_sorted[..., :1]), remove_sorted[..., :-1]], dim=-1)
        remove = remove_sorted.scatter(-1, order, remove_sorted)
        logits = logits.masked_fill(remove, neg_inf)
    return logits


def logits_to_probs(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """(B, V) logits -> the distribution LlamaGen draws from (temperature, then top-k, then top-p, softmax)."""
    logits = logits / max(temperature, 1e-5)
    if top_k > 0 or top_p < 1.0:
        logits = top_k_top_p_filter(logits, top_k=top_k, top_p=top_p)
    return F.softmax(logits, dim=-1)


def sample_from_logits(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                       generator: torch.Generator | None = None, sample: bool = True
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, V) logits -> (tokens (B, 1) int64, probs (B, V)). `sample=False` takes the argmax instead
    (consumes no randomness). `generator=None` uses torch's global RNG, like the official code."""
    probs = logits_to_probs(logits, temperature, top_k, top_p)
    if sample:
        idx = torch.multinomial(probs, num_samples=1, generator=generator)
    else:
        idx = torch.topk(probs, k=1, dim=-1).indices
    return idx, probs
