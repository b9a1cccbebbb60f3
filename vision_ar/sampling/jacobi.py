"""Speculative Jacobi Decoding (SJD): lossless parallel sampling for next-token image generators.

Teng et al., "Accelerating Auto-regressive Text-to-Image Generation with Training-free Speculative Jacobi
Decoding" (ICLR 2025). Instead of one forward per token, every forward verifies a window of guesses:

    window = [last committed token, draft_1, ..., draft_{L-1}]      (L = window_length, default 16)
    one model.decode(window) on top of the KV cache of the committed prefix -> p_1 .. p_L

Each draft x_i carries the distribution q_i it was drawn from: one-hot for a freshly initialised draft, the
model's distribution at that position from the previous iteration for a draft carried over. Left to right,
x_i is accepted when u < min(1, p_i(x_i) / q_i(x_i)); at the first rejection the token is resampled from
normalise(max(0, p_i - q_i)) and the scan stops (if every draft is accepted, a bonus token is drawn from
p_L). That is speculative sampling, so the committed tokens are distributed EXACTLY as the plain loop's
(tests/test_jacobi.py checks it with a chi-squared test over whole sequences). The tokens sampled after the
rejection (from p_{i+1}, ...) become the next window's drafts, with those distributions as their q. The KV
cache is rolled back to the committed prefix, never recomputed.

    tokens, stats = sjd_generate(gpt, labels, 256, cfg_scale=4.0, generator=torch.Generator().manual_seed(0),
                                 window_length=16, init="vertical", return_stats=True)
    stats.forwards, stats.histogram()

Conventions shared with the plain loop (`token_loop.generate`): doubled CFG batch [cond; uncond], guided
logits `uncond + (cond - uncond) * cfg_scale`, `cfg_interval`, then temperature / top-k / top-p
(`logits.token_probs` with the sampler's `SamplingConvention`, LlamaGen's by default). Only the guided, filtered distribution is verified, and the residual is
taken of that same distribution. (The official SJD code re-applies temperature / top-k to the log-residual,
which changes the distribution when temperature != 1; here the residual is exact, hence lossless.)

Beyond the official code:
  * per-row accepted lengths: no row loses accepted tokens because another row was rejected early. With a
    model whose `decode` takes per-row start positions (`model.per_row_positions = True`, a LongTensor
    start_pos; see `KVCache.append_rows`) every row's window starts at its own committed length. With the
    shared-length cache (one `cache_length` for the batch) the window of every row starts at the batch's
    shortest committed length and rows that are ahead re-feed their committed tokens there as fixed inputs
    (never re-verified), so their accepted tokens are kept and only a few K/V entries are recomputed.
  * one `torch.Generator` drives draft initialisation, acceptance and resampling: reproducible runs.
  * draft initialisation "vertical" (the token above; the paper's best, absent from the official code).

Map: SJDStats | argument checks | random numbers | draft initialisation (from the layout) | target
distribution | decoding state and the steps of one iteration (window, forward, verify, commit, carry
over) | the sampler `sjd_generate`.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from ..conditioning import check_guidance, check_label_range
from ..errors import ConfigError
from .jacobi_kernels import accept_resample
from .logits import LLAMAGEN_SAMPLING, SamplingConvention, check_sampling_args, guided_logits, token_probs

DEFAULT_WINDOW = 16
DRAFT_INITS = ("random", "horizontal", "horizontal-argmax", "vertical")
INCREMENTAL_API = ("setup_cache", "prefill", "decode", "truncate_cache", "cache_length")
AcceptStep = Callable[..., tuple[torch.Tensor, torch.Tensor]]


# ----------------------------------------------------------------------------------------------------------
# What a run cost
# ----------------------------------------------------------------------------------------------------------
@dataclass
class SJDStats:
    """forwards: model calls (prefill included); windows: Jacobi iterations; accepted_lengths: tokens committed
    per row per window it took part in (accepted drafts + the resampled / bonus token, so always >= 1)."""

    forwards: int = 0
    windows: int = 0
    batch_size: int = 0
    num_tokens: int = 0
    accepted_lengths: list[int] = field(default_factory=list)

    def histogram(self) -> dict[int, int]:
        return dict(sorted(Counter(self.accepted_lengths).items()))

    @property
    def mean_accepted_length(self) -> float:
        return sum(self.accepted_lengths) / max(len(self.accepted_lengths), 1)

    def summary(self) -> dict:
        """What `vision-ar sample` prints for a run (keys shared with the other samplers)."""
        return {"forward_passes": self.forwards, "forwards_per_image": round(self.forwards_per_image, 3),
                "mean_accept_length": round(self.mean_accepted_length, 3), "accept_histogram": self.histogram()}

    @property
    def forwards_per_image(self) -> float:
        """Forwards an image needs on its own: the prefill + the windows in which it committed tokens (the batch
        as a whole runs `forwards`, set by its slowest row)."""
        return 1 + len(self.accepted_lengths) / max(self.batch_size, 1)


# ----------------------------------------------------------------------------------------------------------
# Argument checks (before any work)
# ----------------------------------------------------------------------------------------------------------
def _check_model(model) -> None:
    # look on the class: a cache property may not be readable before setup_cache
    missing = [name for name in INCREMENTAL_API if not hasattr(type(model), name) and not hasattr(model, name)]
    if missing:
        raise ConfigError(f"{type(model).__name__} has no incremental decoding API (missing {', '.join(missing)}); "
                          f"SJD needs a KV-cached next-token generator such as vision_ar.models.next_token.GPT "
                          f"(setup_cache / prefill / decode / truncate_cache / cache_length).")


def _check_args(model, cond, max_new_tokens, cfg_scale, cfg_interval, window_length, init, grid_width,
                no_guidance):
    if not isinstance(cond, torch.Tensor) or cond.ndim != 1 or cond.is_floating_point() or cond.numel() == 0:
        raise ConfigError(f"cond must be a non-empty 1-D integer tensor of class labels (B,), got "
                          f"{getattr(cond, 'shape', type(cond))}.")
    num_classes = getattr(model, "num_classes", None)
    if num_classes is not None:
        check_label_range(cond.tolist(), num_classes)
    block_size = getattr(model, "block_size", None)
    if max_new_tokens < 1 or (block_size is not None and max_new_tokens > block_size):
        raise ConfigError(f"max_new_tokens={max_new_tokens} must be in [1, block_size={block_size}].")
    check_guidance(cfg_scale, name="cfg_scale", off=f"<= {no_guidance:g} disables guidance")
    if int(cfg_interval) != cfg_interval or cfg_interval < -1:
        raise ConfigError(f"cfg_interval={cfg_interval} must be an integer >= -1 (-1 = guide every token).")
    if isinstance(window_length, bool) or int(window_length) != window_length or window_length < 1:
        raise ConfigError(f"window_length={window_length} must be an integer >= 1 (1 = the plain loop; the "
                          f"paper uses 16).")
    if window_length > max_new_tokens:
        raise ConfigError(f"window_length={window_length} is beyond the KV cache of this generation "
                          f"({max_new_tokens} image positions); use window_length <= {max_new_tokens}.")
    if init not in DRAFT_INITS:
        raise ConfigError(f"unknown draft initialisation '{init}'; choose one of {', '.join(DRAFT_INITS)}.")
    if grid_width is not None and not 1 <= grid_width <= max_new_tokens:
        raise ConfigError(f"grid_width={grid_width} must be in [1, {max_new_tokens}] (tokens per image row).")


# ----------------------------------------------------------------------------------------------------------
# Random numbers: all from one generator, drawn on the generator's device and moved (the CLI seeds a CPU
# generator also for CUDA runs; the same seed then gives the same draws on every device)
# ----------------------------------------------------------------------------------------------------------
def _draw_device(generator, device):
    return generator.device if generator is not None else device


def _uniform(shape, generator, device):
    return torch.rand(shape, generator=generator, device=_draw_device(generator, device)).to(device)


def _inv_exponential(shape, generator, device):
    """1 / E with E ~ Exp(1): the weights of the exponential race argmax(p * w), which draws from p."""
    e = torch.empty(shape, device=_draw_device(generator, device)).exponential_(generator=generator)
    return e.reciprocal_().to(device)


def _uniform_tokens(vocab, shape, generator, device):
    return torch.randint(0, vocab, shape, generator=generator, device=_draw_device(generator, device)).to(device)


# ----------------------------------------------------------------------------------------------------------
# Draft initialisation: where a fresh draft comes from, read from the token layout
# ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DraftInit:
    """How fresh drafts are guessed: `mode` (one of DRAFT_INITS) and the tokens per image row, `width`."""

    mode: str
    width: int


def draft_init_for(init: str, num_tokens: int, grid_width: int | None) -> DraftInit:
    """The draft initialisation for a sequence of `num_tokens`: the row width is given, or the side of a square
    grid; a non-square sequence is one long row, which only 'vertical' (the token one row above) cannot use.
    This is the one place SJD reads the token layout."""
    if grid_width is not None:
        return DraftInit(init, int(grid_width))
    side = math.isqrt(num_tokens)
    if side * side == num_tokens:
        return DraftInit(init, side)
    if init == "vertical":
        raise ConfigError(f"init='vertical' needs the grid width, and {num_tokens} tokens are not a square grid; "
                          f"pass grid_width=<tokens per row>.")
    return DraftInit(init, num_tokens)


def _fill_fresh_drafts(state: "_DecodeState", draft_init: DraftInit, generator) -> None:
    """Fresh drafts for positions committed + j (j >= carried) with one-hot q, written into `state.tokens` (B, N)
    and `state.draft_q` (B, L-1, V) in place.

    random: uniform token. horizontal: the left neighbour's token (committed or draft). horizontal-argmax: the
    most likely token of the left neighbour's distribution. vertical: the token one image row above. The
    neighbour may be missing (first column / first row): then the uniform draw is used. One (B, L-1) uniform
    draw is made every call, whatever the mode, so a seed fixes the whole run.
    """
    tokens, draft_q, committed, carried = state.tokens, state.draft_q, state.committed, state.carried
    init, width = draft_init.mode, draft_init.width
    B, N = tokens.shape
    slots, vocab = draft_q.shape[1], draft_q.shape[2]
    rows = torch.arange(B, device=tokens.device)
    uniform = _uniform_tokens(vocab, (B, slots), generator, tokens.device)
    for j in range(slots):
        pos = committed + j
        fresh = (j >= carried) & (pos < N)
        if not bool(fresh.any()):
            continue
        pos_c = pos.clamp(max=N - 1)
        guess = uniform[:, j]
        if init in ("horizontal", "horizontal-argmax"):
            has_left = (pos_c % width) != 0
            if init == "horizontal":
                left = tokens[rows, pos_c - 1]
            elif j == 0:  # the left neighbour is the last committed token
                left = state.last_argmax
            else:  # the left neighbour is a draft: the mode of its q (its own token when freshly initialised)
                left = draft_q[:, j - 1].argmax(-1)
            guess = torch.where(has_left, left, guess)
        elif init == "vertical":
            has_above = pos_c >= width
            guess = torch.where(has_above, tokens[rows, (pos_c - width).clamp(min=0)], guess)
        tokens[rows[fresh], pos_c[fresh]] = guess[fresh]
        draft_q[fresh, j] = F.one_hot(guess[fresh], vocab).to(draft_q.dtype)


# ----------------------------------------------------------------------------------------------------------
# The target distribution: what the plain loop would draw each position from
# ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _TargetDistribution:
    """Model logits (rows, T, V) predicting image positions (B, T) -> the distribution the plain loop draws each
    of them from (guidance, temperature, top-k, top-p), float32 (B, T, V)."""

    convention: SamplingConvention
    use_cfg: bool
    cfg_scale: float
    cfg_interval: int
    temperature: float
    top_k: int
    top_p: float

    def __call__(self, logits: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        if self.use_cfg:
            guided = guided_logits(logits, self.cfg_scale, self.convention)
            if self.cfg_interval > -1:  # plain loop: decode step i (token i+1) is unguided when i > cfg_interval
                guide = (positions - 1 <= self.cfg_interval) | (positions == 0)
                logits = torch.where(guide[..., None], guided, logits[:positions.shape[0]])
            else:
                logits = guided
        return token_probs(logits, self.convention, temperature=self.temperature, top_k=self.top_k,
                           top_p=self.top_p)


def _race(probs: torch.Tensor, generator) -> torch.Tensor:
    """One draw per row of probs (..., V) by the exponential race (same law as torch.multinomial)."""
    return (probs * _inv_exponential(probs.shape, generator, probs.device)).argmax(-1)


# ----------------------------------------------------------------------------------------------------------
# The decoding state and the steps of one Jacobi iteration
# ----------------------------------------------------------------------------------------------------------
@dataclass
class _DecodeState:
    """What SJD knows between forwards (all per row b of the batch)."""

    tokens: torch.Tensor       # (B, N): the committed prefix tokens[b, :committed[b]], then the drafts
    committed: torch.Tensor    # (B,) number of final tokens
    carried: torch.Tensor      # (B,) leading drafts whose q is a model distribution (the rest are fresh guesses)
    last_argmax: torch.Tensor  # (B,) mode of the distribution the last committed token was drawn from
    draft_q: torch.Tensor      # (B, L-1, V): q of the draft at position committed + j


@dataclass
class _Window:
    """The inputs of one forward: image positions start .. start+T-1 per row (inputs never pass N-2)."""

    start: torch.Tensor      # (B,) first input position (the last committed one, unless the row is ahead)
    positions: torch.Tensor  # (B, T)
    lowest: int              # the batch's lowest start: where a shared-length KV cache is rolled back to


@dataclass
class _Verdict:
    """The outcome of verifying one window."""

    aligned: torch.Tensor       # (B, T, V): aligned[:, i] is p at position committed + i
    num_drafts: torch.Tensor    # (B,) drafts the window verified (< 0: a row far ahead only re-fed its prefix)
    active: torch.Tensor        # (B,) rows that commit tokens this window
    num_accepted: torch.Tensor  # (B,) accepted drafts
    resampled: torch.Tensor     # (B,) the token drawn from the residual at the first rejection
    fresh: torch.Tensor         # (B, T): a sample from every p (the bonus token and the next drafts)


def _start(model, labels: torch.Tensor, batch_size: int, target: _TargetDistribution, num_tokens: int,
           window_length: int, generator) -> _DecodeState:
    """Token 0 from the prefill, like the plain loop; every later slot empty (no drafts yet)."""
    B, device = batch_size, labels.device
    p0 = target(model.prefill(labels)[:, None], torch.zeros(B, 1, dtype=torch.long, device=device))
    V = p0.shape[-1]
    tokens = torch.zeros(B, num_tokens, dtype=torch.long, device=device)
    tokens[:, 0] = _race(p0[:, 0], generator)
    return _DecodeState(tokens=tokens, committed=torch.ones(B, dtype=torch.long, device=device),
                        carried=torch.zeros(B, dtype=torch.long, device=device), last_argmax=p0[:, 0].argmax(-1),
                        draft_q=torch.zeros(B, window_length - 1, V, device=device))


def _next_window(state: _DecodeState, window_length: int, per_row: bool) -> _Window:
    """Positions c .. c+T-1 (c = last committed position): the same start for every row unless the model takes
    per-row positions; then rows that are ahead re-feed their committed tokens as fixed inputs."""
    N = state.tokens.shape[1]
    unfinished = state.committed < N
    lowest = int((state.committed - 1)[unfinished].min())
    T = min(window_length, N - 1 - lowest)
    if per_row:
        start = (state.committed - 1).clamp(max=N - 1 - T)
    else:
        start = torch.full_like(state.committed, lowest)
    positions = start[:, None] + torch.arange(T, device=start.device)
    return _Window(start=start, positions=positions, lowest=lowest)


def _forward_window(model, state: _DecodeState, window: _Window, target: _TargetDistribution, cond_len: int,
                    per_row: bool) -> torch.Tensor:
    """One model.decode of the window on top of the committed prefix's KV cache -> p (B, T, V), p[:, t] for
    position start + t + 1. A shared-length cache is first rolled back to the window's start (rejected
    positions are overwritten, nothing committed is recomputed)."""
    inputs = state.tokens.gather(1, window.positions)
    fed = torch.cat([inputs, inputs]) if target.use_cfg else inputs
    if per_row:
        start_pos = cond_len + (torch.cat([window.start, window.start]) if target.use_cfg else window.start)
    else:
        start_pos = cond_len + window.lowest
        if model.cache_length > start_pos:
            model.truncate_cache(start_pos)
    return target(model.decode(fed, start_pos), window.positions + 1)


def _verify(probs: torch.Tensor, state: _DecodeState, window: _Window, accept_step: AcceptStep, generator
            ) -> _Verdict:
    """Align each row on its first draft, draw this window's random numbers (fixed shapes, one generator, in a
    fixed order) and run the accept / residual-resample step over the drafts."""
    B, T, V = probs.shape
    N = state.tokens.shape[1]
    device = probs.device
    unfinished = state.committed < N
    fixed = state.committed - window.start      # window slots holding committed tokens (>= 1)
    num_drafts = T - fixed
    active = unfinished & (num_drafts >= 0)
    K = T - 1
    offsets = torch.arange(T, device=device)
    aligned_idx = (fixed[:, None] - 1 + offsets).clamp(0, T - 1)
    aligned = probs.gather(1, aligned_idx[..., None].expand(-1, -1, V))
    drafts = state.tokens.gather(1, (state.committed[:, None] + offsets[:K]).clamp(max=N - 1))

    uniforms = _uniform((B, K), generator, device)
    inv_exp = _inv_exponential((B, V), generator, device)
    fresh = _race(aligned, generator)
    num_accepted, resampled = accept_step(aligned[:, :K], state.draft_q[:, :K], drafts, num_drafts.clamp(min=0),
                                          uniforms, inv_exp)
    return _Verdict(aligned=aligned, num_drafts=num_drafts, active=active, num_accepted=num_accepted,
                    resampled=resampled, fresh=fresh)


def _commit(state: _DecodeState, verdict: _Verdict, stats: SJDStats) -> None:
    """Write the resampled token (after a rejection) or the bonus token (every draft accepted) after the accepted
    drafts, which are already in `state.tokens`; record each active row's accepted length."""
    v = verdict
    T = v.aligned.shape[1]
    rows = torch.arange(state.tokens.shape[0], device=state.tokens.device)
    bonus = v.fresh.gather(1, v.num_drafts.clamp(0, T - 1)[:, None]).squeeze(1)
    new_token = torch.where(v.num_accepted < v.num_drafts, v.resampled, bonus)
    new_pos = (state.committed + v.num_accepted).clamp(max=state.tokens.shape[1] - 1)
    state.tokens[rows[v.active], new_pos[v.active]] = new_token[v.active]
    state.last_argmax = torch.where(v.active, v.aligned[rows, v.num_accepted.clamp(max=T - 1)].argmax(-1),
                                    state.last_argmax)
    stats.accepted_lengths.extend((v.num_accepted[v.active] + 1).tolist())


def _carry_over(state: _DecodeState, verdict: _Verdict) -> None:
    """Advance the committed length; the samples after the rejection become the next drafts, their p their q."""
    v = verdict
    T, V = v.aligned.shape[1], v.aligned.shape[2]
    N, slots = state.tokens.shape[1], state.draft_q.shape[1]
    device = state.tokens.device
    rows = torch.arange(state.tokens.shape[0], device=device)
    keep = torch.where(v.active, v.num_drafts - v.num_accepted, state.carried)
    src = (v.num_accepted[:, None] + 1 + torch.arange(slots, device=device)).clamp(max=T - 1)
    moved_q = v.aligned.gather(1, src[..., None].expand(-1, -1, V))
    moved_tok = v.fresh.gather(1, src)
    state.committed = torch.where(v.active, state.committed + v.num_accepted + 1, state.committed)
    state.draft_q = torch.where(v.active[:, None, None], moved_q, state.draft_q)
    slot = torch.arange(slots, device=device)
    write = v.active[:, None] & (slot[None] < keep[:, None])
    target_pos = (state.committed[:, None] + slot).clamp(max=N - 1)
    state.tokens[rows[:, None].expand_as(write)[write], target_pos[write]] = moved_tok[write]
    state.carried = keep


# ----------------------------------------------------------------------------------------------------------
# The sampler
# ----------------------------------------------------------------------------------------------------------
@torch.no_grad()
def sjd_generate(model, cond: torch.Tensor, max_new_tokens: int | None = None, cfg_scale: float = 1.0,
                 cfg_interval: int = -1, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                 generator: torch.Generator | None = None, window_length: int | None = None, init: str = "random",
                 grid_width: int | None = None, backend: str = "auto", accept_step: AcceptStep | None = None,
                 return_stats: bool = False, convention: SamplingConvention = LLAMAGEN_SAMPLING):
    """Sample (B, max_new_tokens) int64 image tokens per label with SJD; same distribution as
    `token_loop.generate` with the same settings.

    window_length: tokens per forward (the last committed token + window_length - 1 drafts); default
        min(16, max_new_tokens), 16 being the paper's setting.
    init: 'random' | 'horizontal' | 'horizontal-argmax' | 'vertical' draft initialisation;
    grid_width: tokens per image row (default: the side of the square grid).
    backend: fused accept/resample step, 'auto' (Triton on CUDA) | 'torch' | 'triton'.
    accept_step: replace that step (same signature as jacobi_kernels.accept_resample_torch); tests only.
    return_stats: also return an `SJDStats` (forwards, acceptance lengths).
    convention: guidance form and filters (sampling/logits.py), as for the plain loop.
    """
    _check_model(model)
    if max_new_tokens is None:
        max_new_tokens = getattr(model, "block_size", None)
        if max_new_tokens is None:
            raise ConfigError("max_new_tokens is required for a model without `block_size`.")
    N = int(max_new_tokens)
    L = min(DEFAULT_WINDOW, max(N, 1)) if window_length is None else window_length
    _check_args(model, cond, N, cfg_scale, cfg_interval, L, init, grid_width, convention.no_guidance)
    check_sampling_args(convention, top_k=top_k, top_p=top_p, temperature=temperature)
    draft_init = draft_init_for(init, N, grid_width)
    target = _TargetDistribution(convention, cfg_scale > convention.no_guidance, cfg_scale, cfg_interval,
                                 temperature, top_k, top_p)
    per_row = bool(getattr(model, "per_row_positions", False))
    step = accept_step or (lambda *a: accept_resample(*a, backend=backend))
    stats = SJDStats(batch_size=cond.shape[0], num_tokens=cond.shape[0] * N)

    was_training = model.training
    model.eval()
    try:
        labels = torch.cat([cond, torch.full_like(cond, model.num_classes)]) if target.use_cfg else cond
        cond_len = int(getattr(model, "cls_token_num", 1))
        model.setup_cache(labels.shape[0], cond_len + N, dtype=next(model.parameters()).dtype)
        state = _start(model, labels, cond.shape[0], target, N, L, generator)
        stats.forwards += 1
        _fill_fresh_drafts(state, draft_init, generator)
        while bool((state.committed < N).any()):
            window = _next_window(state, L, per_row)
            probs = _forward_window(model, state, window, target, cond_len, per_row)
            stats.forwards += 1
            stats.windows += 1
            verdict = _verify(probs, state, window, step, generator)
            _commit(state, verdict, stats)
            _carry_over(state, verdict)
            _fill_fresh_drafts(state, draft_init, generator)
    finally:
        model.train(was_training)

    if return_stats:
        return state.tokens, stats
    return state.tokens
