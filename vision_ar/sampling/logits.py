"""From logits to a token: classifier-free guidance, temperature, top-k / top-p, the draw.

One implementation for every family; where the official code bases differ in a detail that changes which token
a seed draws, the difference is a field of the family's `SamplingConvention`, so a sampler states its convention
once and nothing else branches on the family:

                        VAR (models/helpers.py, var.py)        LlamaGen (autoregressive/models/generate.py)
    guidance            (1 + t) * cond - t * uncond            uncond + (cond - uncond) * s
    "no guidance"       t = 0 (VAR ramps t over the scales)    s <= 1
    temperature         must be > 0; 1 leaves logits untouched logits / max(T, 1e-5): 0 means near-greedy
    top-p off           top_p = 0                              top_p = 1
    nucleus rule        ascending sort, drop cumsum <= 1 - p   descending sort, drop cumsum > p, shifted right
                        (never the largest)                    by one (HF `top_k_top_p_filtering`)

Shared by both (so not a field): temperature first, then top-k, then top-p on the top-k-filtered logits (their
-inf entries carry zero mass); top-k keeps every logit >= the k-th largest (ties with the k-th all survive;
k >= V keeps everything); the draw is torch.multinomial(softmax, 1), which torch implements as
argmax(P / E) with E ~ Exp(1) drawn for EVERY element of the (N, V) matrix, so each call consumes exactly
N*V exponentials from the generator, like both official codes. The two nucleus rules are mathematically
almost the same but sum the probabilities from opposite ends and treat the threshold itself differently, so
they give different tokens at float ties: each family keeps its own for exact parity.

"more smooth" (VAR visualisation mode) replaces the hard token by a Gumbel-softmax mixture of codebook vectors
(`gumbel_softmax`); it draws another N*V exponentials after the token draw.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ConfigError
from .fast_filters import top_k_top_p_sortless_

NEG_INF = float("-inf")


# ====================================================================================================
# The per-family convention
# ====================================================================================================
@dataclass(frozen=True)
class SamplingConvention:
    """How one official code base turns logits into a token (see the table at the top of this file)."""

    name: str
    cfg_form: str           # "var": (1 + t) * cond - t * uncond | "llamagen": uncond + (cond - uncond) * s
    no_guidance: float      # the guidance value that means "conditional logits only"
    top_p_off: float        # the top_p that switches the nucleus filter off (0 <= top_p <= 1)
    nucleus: str            # "var": drop the low tail of mass <= 1 - p | "hf": keep the head up to mass p
    min_temperature: float  # 0: temperature must be > 0 | > 0: any T >= 0, logits / max(T, min_temperature)

    def __post_init__(self):
        if self.cfg_form not in _CFG_FORMS:
            raise ConfigError(f"sampling convention {self.name!r}: unknown cfg_form {self.cfg_form!r}; "
                              f"choose one of {sorted(_CFG_FORMS)}")
        if self.nucleus not in _NUCLEUS_RULES:
            raise ConfigError(f"sampling convention {self.name!r}: unknown nucleus rule {self.nucleus!r}; "
                              f"choose one of {sorted(_NUCLEUS_RULES)}")
        if self.top_p_off not in (0.0, 1.0):
            raise ConfigError(f"sampling convention {self.name!r}: top_p_off={self.top_p_off!r} must be 0 or 1")


# ====================================================================================================
# Classifier-free guidance
# ====================================================================================================
def _cfg_var(cond: torch.Tensor, uncond: torch.Tensor, t: float) -> torch.Tensor:
    return (1 + t) * cond - t * uncond


def _cfg_llamagen(cond: torch.Tensor, uncond: torch.Tensor, s: float) -> torch.Tensor:
    return uncond + (cond - uncond) * s


_CFG_FORMS = {"var": _cfg_var, "llamagen": _cfg_llamagen}


def guided_logits(logits_2B: torch.Tensor, scale: float, convention: SamplingConvention) -> torch.Tensor:
    """Doubled-batch logits [cond; uncond] (2B, ...) -> guided (B, ...) in the convention's CFG form."""
    cond, uncond = logits_2B.chunk(2, dim=0)
    return _CFG_FORMS[convention.cfg_form](cond, uncond, scale)


def var_guidance_ratio(si: int, num_scales: int) -> float:
    """VAR's linear CFG ramp over scales: 0 at the first scale, 1 at the last (si / (S - 1))."""
    return si / (num_scales - 1) if num_scales > 1 else 0.0


def var_cfg(logits_2B: torch.Tensor, cfg: float, si: int, num_scales: int) -> torch.Tensor:
    """VAR's ramped guidance at scale si: t = cfg * si / (S - 1) in the VAR form."""
    return guided_logits(logits_2B, cfg * var_guidance_ratio(si, num_scales), VAR_SAMPLING)


# ====================================================================================================
# Argument check (one for every convention; the messages say what "off" means in that convention)
# ====================================================================================================
def check_sampling_args(convention: SamplingConvention, *, top_k: int, top_p: float, temperature: float) -> None:
    if isinstance(top_k, bool) or int(top_k) != top_k or top_k < 0:
        raise ConfigError(f"top_k={top_k!r} must be an integer >= 0 (0 = no top-k filtering).")
    zero_ok = convention.top_p_off == 0.0  # 0 is a valid top_p only where it means "off"
    if not (0.0 <= top_p <= 1.0 if zero_ok else 0.0 < top_p <= 1.0):
        raise ConfigError(f"top_p={top_p!r} must be in {'[0, 1]' if zero_ok else '(0, 1]'} ({convention.name} "
                          f"convention: {convention.top_p_off:g} = no nucleus filtering).")
    if convention.min_temperature > 0:
        if not temperature >= 0:
            raise ConfigError(f"temperature={temperature!r} must be >= 0 (0 = near-greedy, 1 = the model's "
                              f"distribution).")
    elif not temperature > 0:
        raise ConfigError(f"temperature={temperature!r} must be > 0 (1 = the model's distribution).")


# ====================================================================================================
# Temperature, top-k, top-p
# ====================================================================================================
def apply_temperature(logits: torch.Tensor, temperature: float, convention: SamplingConvention) -> torch.Tensor:
    """A new tensor logits / T (T floored at the convention's minimum); T = 1 copies without rounding."""
    temperature = max(temperature, convention.min_temperature)
    return logits.clone() if temperature == 1.0 else logits / temperature


def top_k_mask_(logits: torch.Tensor, top_k: int) -> torch.Tensor:
    """Set every logit strictly below the k-th largest to -inf (ties with the k-th are kept). 0 = off."""
    if 0 < top_k < logits.shape[-1]:
        kth = logits.topk(int(top_k), largest=True, sorted=False, dim=-1)[0].amin(dim=-1, keepdim=True)
        logits.masked_fill_(logits < kth, NEG_INF)
    return logits


def _nucleus_var(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Remove mask: the smallest logits whose ascending cumulative probability is <= 1 - top_p."""
    sorted_logits, order = logits.sort(dim=-1, descending=False)
    remove_sorted = sorted_logits.softmax(dim=-1).cumsum_(dim=-1) <= (1 - top_p)
    remove_sorted[..., -1:] = False  # the most likely token always survives
    return torch.empty_like(remove_sorted).scatter_(-1, order, remove_sorted)


def _nucleus_hf(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Remove mask: tokens after the descending cumulative probability exceeds top_p (the token that crosses
    the threshold stays, and so does the best token)."""
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    remove_sorted = sorted_logits.softmax(dim=-1).cumsum(dim=-1) > top_p
    remove_sorted = torch.cat([torch.zeros_like(remove_sorted[..., :1]), remove_sorted[..., :-1]], dim=-1)
    return remove_sorted.scatter(-1, order, remove_sorted)


_NUCLEUS_RULES = {"var": _nucleus_var, "hf": _nucleus_hf}


def top_p_mask_(logits: torch.Tensor, top_p: float, convention: SamplingConvention) -> torch.Tensor:
    """Nucleus filter in place by the convention's rule; top_p == convention.top_p_off switches it off."""
    if top_p != convention.top_p_off:
        logits.masked_fill_(_NUCLEUS_RULES[convention.nucleus](logits, float(top_p)), NEG_INF)
    return logits


def filter_logits(logits: torch.Tensor, convention: SamplingConvention, *, temperature: float = 1.0,
                  top_k: int = 0, top_p: float | None = None) -> torch.Tensor:
    """temperature -> top-k -> top-p: a new tensor, -inf where removed. `logits` is not modified.
    top_p=None means the convention's "off" value. With both filters on, the nucleus runs on the row rebuilt
    from top-k's partial sort (`fast_filters.py`: bitwise the full-sort result, no sort of the vocabulary)."""
    top_p = convention.top_p_off if top_p is None else top_p
    filtered = apply_temperature(logits, temperature, convention)
    if top_p != convention.top_p_off and top_k_top_p_sortless_(filtered, int(top_k), float(top_p),
                                                                convention.nucleus):
        return filtered
    return top_p_mask_(top_k_mask_(filtered, top_k), top_p, convention)


def token_probs(logits: torch.Tensor, convention: SamplingConvention, *, temperature: float = 1.0,
                top_k: int = 0, top_p: float | None = None) -> torch.Tensor:
    """(..., V) logits -> the distribution the convention draws from (softmax of `filter_logits`)."""
    return filter_logits(logits, convention, temperature=temperature, top_k=top_k, top_p=top_p).softmax(dim=-1)


# ====================================================================================================
# Drawing tokens
# ====================================================================================================
@dataclass
class SampledTokens:
    tokens: torch.Tensor           # (...,) int64: one token per row of logits
    filtered_logits: torch.Tensor  # (..., V): temperature-scaled, filtered logits (-inf = removed)
    probs: torch.Tensor            # (..., V): softmax(filtered_logits), the distribution drawn from

    @property
    def kept_count(self) -> torch.Tensor:
        """(...,) int64: vocabulary entries that survived top-k / top-p."""
        return (self.filtered_logits != NEG_INF).sum(dim=-1)


def draw_multinomial(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One index per row of probs (..., V), exactly torch.multinomial(probs, 1, generator) (any replacement flag:
    a single sample takes torch's argmax(P / Exp(1)) path either way)."""
    V = probs.shape[-1]
    idx = torch.multinomial(probs.reshape(-1, V), num_samples=1, replacement=True, generator=generator)
    return idx.view(probs.shape[:-1])


def sample_tokens(logits: torch.Tensor, convention: SamplingConvention, generator: torch.Generator | None = None,
                  *, top_k: int = 0, top_p: float | None = None, temperature: float = 1.0,
                  greedy: bool = False) -> SampledTokens:
    """temperature -> top-k -> top-p -> softmax -> one multinomial draw per row (or the mode, greedy=True,
    which draws nothing). `logits` (..., V) is not modified; generator=None uses torch's global RNG (like the
    official codes)."""
    top_p = convention.top_p_off if top_p is None else top_p
    check_sampling_args(convention, top_k=top_k, top_p=top_p, temperature=temperature)
    filtered = filter_logits(logits, convention, temperature=temperature, top_k=int(top_k), top_p=float(top_p))
    probs = filtered.softmax(dim=-1)
    tokens = probs.topk(1, dim=-1).indices.squeeze(-1) if greedy else draw_multinomial(probs, generator)
    return SampledTokens(tokens=tokens, filtered_logits=filtered, probs=probs)


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


# ====================================================================================================
# The conventions of the shipped families (each family module names its own)
# ====================================================================================================
VAR_SAMPLING = SamplingConvention(name="VAR", cfg_form="var", no_guidance=0.0, top_p_off=0.0, nucleus="var",
                                  min_temperature=0.0)
LLAMAGEN_SAMPLING = SamplingConvention(name="LlamaGen", cfg_form="llamagen", no_guidance=1.0, top_p_off=1.0,
                                       nucleus="hf", min_temperature=1e-5)
