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
(`token_filters.logits_to_probs`). Only the guided, filtered distribution is verified, and the residual is
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

Map: SJDStats | argument checks | draft initialisation | the sampler `sjd_generate`.
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
from .token_filters import check_sampling_args, logits_to_probs
from .token_loop import guided_logits

DEFAULT_WINDOW = 16
DRAFT_INITS = ("random", "horizontal", "horizontal-argmax", "vertical")
INCREMENTAL_API = ("setup_cache", "prefill", "decode", "truncate_cache", "cache_length")


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


def _check_args(model, cond, max_new_tokens, cfg_scale, cfg_interval, window_length, init, grid_width):
    if not isinstance(cond, torch.Tensor) or cond.ndim != 1 or cond.is_floating_point() or cond.numel() == 0:
        raise ConfigError(f"cond must be a non-empty 1-D integer tensor of class labels (B,), got "
                          f"{getattr(cond, 'shape', type(cond))}.")
    num_classes = getattr(model, "num_classes", None)
    if num_classes is not None:
        check_label_range(cond.tolist(), num_classes)
    block_size = getattr(model, "block_size", None)
    if max_new_tokens < 1 or (block_size is not None and max_new_tokens > block_size):
        raise ConfigError(f"max_new_tokens={max_new_tokens} must be in [1, block_size={block_size}].")
    check_guidance(cfg_scale, name="cfg_scale", off="<= 1 disables guidance")
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


def _grid_width(num_tokens: int, grid_width: int | None, init: str) -> int:
    """Tokens per image row: given, or the side of a square grid; a non-square sequence is one long row."""
    if grid_width is not None:
        return int(grid_width)
    side = math.isqrt(num_tokens)
    if side * side == num_tokens:
        return side
    if init == "vertical":
        raise ConfigError(f"init='vertical' needs the grid width, and {num_tokens} tokens are not a square grid; "
                          f"pass grid_width=<tokens per row>.")
    return num_tokens


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
# Draft initialisation: fill the window's empty draft slots left to right
# ----------------------------------------------------------------------------------------------------------
def _init_drafts(tokens, draft_q, committed, carried, last_argmax, init, width, vocab, generator):
    """Fresh drafts for positions committed + j (j >= carried) with one-hot q, written into `tokens` (B, N)
    and `draft_q` (B, L-1, V) in place.

    random: uniform token. horizontal: the left neighbour's token (committed or draft). horizontal-argmax: the
    most likely token of the left neighbour's distribution. vertical: the token one image row above. The
    neighbour may be missing (first column / first row): then the uniform draw is used. One (B, L-1) uniform
    draw is made every call, whatever the mode, so a seed fixes the whole run.
    """
    B, N = tokens.shape
    slots = draft_q.shape[1]
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
                left = last_argmax
            else:  # the left neighbour is a draft: the mode of its q (its own token when freshly initialised)
                left = draft_q[:, j - 1].argmax(-1)
            guess = torch.where(has_left, left, guess)
        elif init == "vertical":
            has_above = pos_c >= width
            guess = torch.where(has_above, tokens[rows, (pos_c - width).clamp(min=0)], guess)
        tokens[rows[fresh], pos_c[fresh]] = guess[fresh]
        draft_q[fresh, j] = F.one_hot(guess[fresh], vocab).to(draft_q.dtype)


# ----------------------------------------------------------------------------------------------------------
# The sampler
# ----------------------------------------------------------------------------------------------------------
AcceptStep = Callable[..., tuple[torch.Tensor, torch.Tensor]]


@torch.no_grad()
def sjd_generate(model, cond: torch.Tensor, max_new_tokens: int | None = None, cfg_scale: float = 1.0,
                 cfg_interval: int = -1, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                 generator: torch.Generator | None = None, window_length: int | None = None, init: str = "random",
                 grid_width: int | None = None, backend: str = "auto", accept_step: AcceptStep | None = None,
                 return_stats: bool = False):
    """Sample (B, max_new_tokens) int64 image tokens per label with SJD; same distribution as
    `token_loop.generate` with the same settings.

    window_length: tokens per forward (the last committed token + window_length - 1 drafts); default
        min(16, max_new_tokens), 16 being the paper's setting.
    init: 'random' | 'horizontal' | 'horizontal-argmax' | 'vertical' draft initialisation;
    grid_width: tokens per image row (default: the side of the square grid).
    backend: fused accept/resample step, 'auto' (Triton on CUDA) | 'torch' | 'triton'.
    accept_step: replace that step (same signature as jacobi_kernels.accept_resample_torch); tests only.
    return_stats: also return an `SJDStats` (forwards, acceptance lengths).
    """
    _check_model(model)
    if max_new_tokens is None:
        max_new_tokens = getattr(model, "block_size", None)
        if max_new_tokens is None:
            raise ConfigError("max_new_tokens is required for a model without `block_size`.")
    N = int(max_new_tokens)
    if window_length is None:
        window_length = min(DEFAULT_WINDOW, max(N, 1))
    L = window_length
    _check_args(model, cond, N, cfg_scale, cfg_interval, window_length, init, grid_width)
    check_sampling_args(temperature, top_k, top_p)
    width = _grid_width(N, grid_width, init)
    use_cfg = cfg_scale > 1.0
    per_row = bool(getattr(model, "per_row_positions", False))
    step = accept_step or (lambda *a: accept_resample(*a, backend=backend))
    device = cond.device
    B = cond.shape[0]
    stats = SJDStats(batch_size=B, num_tokens=B * N)

    def distributions(logits: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Model logits (rows, T, V) predicting image positions (B, T) -> the distribution the plain loop
        would draw each of them from (guidance, temperature, top-k, top-p), float32 (B, T, V)."""
        logits = logits.float()
        if use_cfg:
            guided = guided_logits(logits, cfg_scale)
            if cfg_interval > -1:  # plain loop: decode step i (token i+1) is unguided when i > cfg_interval
                guide = (positions - 1 <= cfg_interval) | (positions == 0)
                logits = torch.where(guide[..., None], guided, logits[:B])
            else:
                logits = guided
        return logits_to_probs(logits, temperature, top_k, top_p)

    def race(probs: torch.Tensor) -> torch.Tensor:
        """One draw per row of probs (..., V) by the exponential race (same law as torch.multinomial)."""
        return (probs * _inv_exponential(probs.shape, generator, probs.device)).argmax(-1)

    was_training = model.training
    model.eval()
    try:
        labels = torch.cat([cond, torch.full_like(cond, model.num_classes)]) if use_cfg else cond
        cond_len = int(getattr(model, "cls_token_num", 1))
        dtype = next(model.parameters()).dtype
        model.setup_cache(labels.shape[0], cond_len + N, dtype=dtype)

        # --- token 0 from the prefill, like the plain loop -------------------------------------------
        p0 = distributions(model.prefill(labels)[:, None], torch.zeros(B, 1, dtype=torch.long, device=device))
        stats.forwards += 1
        V = p0.shape[-1]
        tokens = torch.zeros(B, N, dtype=torch.long, device=device)  # committed prefix, then the drafts
        tokens[:, 0] = race(p0[:, 0])
        committed = torch.ones(B, dtype=torch.long, device=device)  # tokens[b, :committed[b]] are final
        carried = torch.zeros(B, dtype=torch.long, device=device)   # drafts with a model distribution as q
        last_argmax = p0[:, 0].argmax(-1)
        draft_q = torch.zeros(B, L - 1, V, device=device)            # q of the drafts at committed + j
        _init_drafts(tokens, draft_q, committed, carried, last_argmax, init, width, V, generator)
        rows = torch.arange(B, device=device)

        while bool((committed < N).any()):
            # --- the window: image positions c .. c+T-1 (c = last committed position, the same for all
            # rows unless the model takes per-row positions); inputs never go past position N-2 ------------
            unfinished = committed < N
            lowest = int((committed - 1)[unfinished].min())
            T = min(L, N - 1 - lowest)
            if per_row:
                start = (committed - 1).clamp(max=N - 1 - T)
            else:
                start = torch.full_like(committed, lowest)
            positions = start[:, None] + torch.arange(T, device=device)          # (B, T) input positions
            window = tokens.gather(1, positions)
            fed = torch.cat([window, window]) if use_cfg else window
            if per_row:
                start_pos = cond_len + (torch.cat([start, start]) if use_cfg else start)
            else:
                start_pos = cond_len + lowest
                if model.cache_length > start_pos:
                    model.truncate_cache(start_pos)  # roll back rejected positions (nothing recomputed)
            probs = distributions(model.decode(fed, start_pos), positions + 1)  # probs[:, t] for position c+t+1
            stats.forwards += 1
            stats.windows += 1

            # --- align each row on its first draft: aligned[:, i] is p at position committed + i ----------
            fixed = committed - start                     # window slots holding committed tokens (>= 1)
            num_drafts = T - fixed                        # < 0: a row far ahead only re-feeds its prefix
            active = unfinished & (num_drafts >= 0)
            K = T - 1
            offsets = torch.arange(T, device=device)
            aligned_idx = (fixed[:, None] - 1 + offsets).clamp(0, T - 1)
            aligned = probs.gather(1, aligned_idx[..., None].expand(-1, -1, V))         # (B, T, V)
            draft_pos = (committed[:, None] + offsets[:K]).clamp(max=N - 1)
            drafts = tokens.gather(1, draft_pos)

            # --- random numbers: fixed shapes per window, one generator ------------------------------------
            uniforms = _uniform((B, K), generator, device)
            inv_exp = _inv_exponential((B, V), generator, device)
            fresh = race(aligned)                     # a sample from every p: bonus token and next drafts

            num_accepted, resampled = step(aligned[:, :K], draft_q[:, :K], drafts,
                                           num_drafts.clamp(min=0), uniforms, inv_exp)

            # --- commit: accepted drafts (already in `tokens`) + the resampled or bonus token -----------------
            bonus = fresh.gather(1, num_drafts.clamp(0, T - 1)[:, None]).squeeze(1)
            new_token = torch.where(num_accepted < num_drafts, resampled, bonus)
            new_pos = (committed + num_accepted).clamp(max=N - 1)
            tokens[rows[active], new_pos[active]] = new_token[active]
            last_argmax = torch.where(active, aligned[rows, num_accepted.clamp(max=T - 1)].argmax(-1), last_argmax)
            for n_acc in (num_accepted[active] + 1).tolist():
                stats.accepted_lengths.append(n_acc)

            # --- the samples after the rejection become the next drafts, their p becomes their q --------------
            keep = torch.where(active, num_drafts - num_accepted, carried)
            src = (num_accepted[:, None] + 1 + torch.arange(draft_q.shape[1], device=device)).clamp(max=T - 1)
            moved_q = aligned.gather(1, src[..., None].expand(-1, -1, V))
            moved_tok = fresh.gather(1, src)
            committed = torch.where(active, committed + num_accepted + 1, committed)
            draft_q = torch.where(active[:, None, None], moved_q, draft_q)
            slot = torch.arange(draft_q.shape[1], device=device)
            write = active[:, None] & (slot[None] < keep[:, None])
            target_pos = (committed[:, None] + slot).clamp(max=N - 1)
            tokens[rows[:, None].expand_as(write)[write], target_pos[write]] = moved_tok[write]
            carried = keep
            _init_drafts(tokens, draft_q, committed, carried, last_argmax, init, width, V, generator)
    finally:
        model.train(was_training)

    if return_stats:
        return tokens, stats
    return tokens
