"""The plain next-token sampling loop for LlamaGen-style GPTs (official `autoregressive/models/generate.py`).

    tokens = generate(gpt, torch.tensor([207, 360]), 256, cfg_scale=4.0, temperature=1.0, top_k=0, top_p=1.0,
                      generator=torch.Generator().manual_seed(0))       # (2, 256) int64 -> vq.decode_code(...)

Classifier-free guidance runs the conditional and unconditional rows as ONE doubled batch:
rows [0:B] carry the labels, rows [B:2B] the null class (`num_classes`); the guided logits are
`uncond + (cond - uncond) * cfg_scale` and the token drawn from them is fed to both halves. cfg_scale <= 1
means no unconditional rows at all. `cfg_interval = k > -1` switches guidance off (conditional logits only)
for every decode step i > k (token index i + 1); token 0 (prefill) is always guided. That is LlamaGen's
`SamplingConvention`; passing another changes the CFG form, the "no guidance" value and the filters
(sampling/logits.py).

Randomness: exactly one `torch.multinomial(probs, 1)` per image token over the conditional rows, drawn from
`generator` (the global RNG when None). `torch.manual_seed(s)` + generator=None and
`generator=torch.Generator().manual_seed(s)` give the same CPU tokens as the official code seeded with s.

Editing (in-/out-painting): the optional `forcing=KnownTokens(known (B, N) bool, values (B, N))` keeps the input
image's token wherever `known` is True, in raster order: the token is still drawn (same random stream), then
replaced, and the kept token is what both CFG halves are fed next. With `return_known_logprob=True` the loop also
returns, per row, the summed log-probability of the kept tokens under the distribution it drew from (guided,
temperature-scaled, before top-k/top-p): how well the generated tokens agree with the known tokens that follow
them, which `generate_infill` uses to choose between candidates.
"""
from __future__ import annotations

import torch

from ..conditioning import check_guidance, check_label_range
from ..errors import ConfigError
from .forcing import KnownTokens, ParticleResampler, choose_candidates, repeat_rows
from .logits import (LLAMAGEN_SAMPLING, SamplingConvention, apply_temperature, check_sampling_args, guided_logits,
                     sample_tokens)


def _check_args(model, cond, max_new_tokens, cfg_scale, cfg_interval, no_guidance, allow_null=False):
    if not isinstance(cond, torch.Tensor) or cond.ndim != 1 or cond.is_floating_point() or cond.numel() == 0:
        raise ConfigError(f"cond must be a non-empty 1-D integer tensor of class labels (B,), got "
                          f"{getattr(cond, 'shape', type(cond))}.")
    # allow_null: the null class (label num_classes) as a row's label, i.e. an unconditional row (editing)
    check_label_range(cond.tolist(), model.num_classes, allow_null=allow_null and model.cls_embedding.has_null_class)
    if not 1 <= max_new_tokens <= model.block_size:
        raise ConfigError(f"max_new_tokens={max_new_tokens} must be in [1, block_size={model.block_size}].")
    check_guidance(cfg_scale, name="cfg_scale", off=f"<= {no_guidance:g} disables guidance")
    if cfg_scale > no_guidance and not model.cls_embedding.has_null_class:
        raise ConfigError("classifier-free guidance needs the learned null class, but this model was built with "
                          f"class_dropout_prob=0 (no null row); use cfg_scale={no_guidance!r}.")
    if int(cfg_interval) != cfg_interval or cfg_interval < -1:
        raise ConfigError(f"cfg_interval={cfg_interval} must be an integer >= -1 (-1 = guide every token).")


@torch.no_grad()
def generate(model, cond: torch.Tensor, max_new_tokens: int | None = None, cfg_scale: float = 1.0,
             cfg_interval: int = -1, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
             generator: torch.Generator | None = None, sample: bool = True, return_probs: bool = False,
             convention: SamplingConvention = LLAMAGEN_SAMPLING, forcing: KnownTokens | None = None,
             return_known_logprob: bool = False, allow_null: bool = False,
             particles: ParticleResampler | None = None, return_class_evidence: bool = False):
    """Sample `max_new_tokens` (default block_size) image tokens per label -> (B, max_new_tokens) int64.

    With return_probs=True also returns the distributions drawn from, (B, max_new_tokens, V).
    `convention`: how guidance and the filters are applied (LlamaGen's by default, see sampling/logits.py).
    forcing: known tokens kept from an input image (module doc); return_known_logprob=True (with forcing) also
    returns their summed log-probability per row (B,), after the tokens (and probs). allow_null: rows may carry
    the null class `num_classes` (unconditional rows; editing without a class). particles (with forcing): a
    ParticleResampler over the rows (K consecutive rows per image): after every token that some row knows, the
    rows' scores are handed to it and, when it resamples, every per-row state (tokens so far, KV cache, scores)
    follows its permutation; the caller picks one row per image with `particles.choose()`.
    return_class_evidence=True (needs guidance: both CFG halves) also returns, per row, the class evidence of the
    tokens it DREW (not the forced ones): sum over them of log p(x_i | x_<i, class) - log p(x_i | x_<i, null),
    the generator's own log-likelihood ratio of its label against the null class (last in the output).
    The model is run in eval mode (restored afterwards); its KV cache is (re)used and left allocated.
    """
    max_new_tokens = model.block_size if max_new_tokens is None else int(max_new_tokens)
    _check_args(model, cond, max_new_tokens, cfg_scale, cfg_interval, convention.no_guidance, allow_null)
    check_sampling_args(convention, top_k=top_k, top_p=top_p, temperature=temperature)
    use_cfg = cfg_scale > convention.no_guidance
    if forcing is not None:
        known, known_tok = forcing.flat((cond.shape[0], max_new_tokens))
        known, known_tok = known.to(cond.device), known_tok.to(device=cond.device, dtype=torch.long)
    known_logprob = torch.zeros(cond.shape[0], dtype=torch.float32, device=cond.device)
    if particles is not None and forcing is None:
        raise ConfigError("particles (resampling between edit candidates) needs forcing=KnownTokens(...)")
    resampled = [None]  # the particle filter's latest row permutation, applied once the step's token is drawn
    if return_class_evidence and not use_cfg:
        raise ConfigError("class evidence compares the conditional and null-class rows: it needs guidance "
                          f"(cfg_scale > {convention.no_guidance:g})")
    evidence = torch.zeros(cond.shape[0], dtype=torch.float64, device=cond.device)

    def add_evidence(i: int, logits_2B: torch.Tensor, token: torch.Tensor) -> None:
        c, u = logits_2B.float().chunk(2)
        ratio = (c.log_softmax(-1) - u.log_softmax(-1)).gather(1, token)[:, 0]
        drawn_here = ~known[:, i] if forcing is not None else torch.ones_like(ratio, dtype=torch.bool)
        evidence.add_(torch.where(drawn_here, ratio, torch.zeros_like(ratio)).double())

    def draw(i: int, logits: torch.Tensor):
        """Token i: drawn, then the input's where known (its log-probability added to the row's score)."""
        drawn = sample_tokens(logits, convention, generator, top_k=top_k, top_p=top_p, temperature=temperature,
                              greedy=not sample)
        token = drawn.tokens[:, None]
        if forcing is None:
            return token, drawn.probs
        if (return_known_logprob or particles is not None) and bool(known[:, i].any()):
            logp = apply_temperature(logits.float(), temperature, convention).log_softmax(dim=-1)
            lp = logp.gather(1, known_tok[:, i: i + 1])[:, 0]
            step_logprob = torch.where(known[:, i], lp, torch.zeros_like(lp))
            known_logprob.add_(step_logprob)
            if particles is not None:
                resampled[0] = particles.observe(step_logprob)
        return torch.where(known[:, i: i + 1], known_tok[:, i: i + 1], token), drawn.probs

    def follow_resampling(token, tokens, all_probs):
        """Apply the particle filter's row permutation (if it just resampled) to every per-row state."""
        rows = resampled[0]
        if rows is None:
            return token, tokens, all_probs
        resampled[0] = None
        known_logprob.copy_(known_logprob[rows])
        evidence.copy_(evidence[rows])
        model.select_cache_rows(torch.cat([rows, rows + cond.shape[0]]) if use_cfg else rows)
        tokens = [t[rows] for t in tokens]
        all_probs = [p[rows] for p in all_probs] if all_probs is not None else None
        return token[rows], tokens, all_probs

    was_training = model.training
    model.eval()
    try:
        labels = torch.cat([cond, torch.full_like(cond, model.num_classes)]) if use_cfg else cond
        model.setup_cache(labels.shape[0], model.cls_token_num + max_new_tokens,
                          dtype=model.tok_embeddings.weight.dtype)

        logits = model.prefill(labels)
        token, probs = draw(0, guided_logits(logits, cfg_scale, convention) if use_cfg else logits)
        if return_class_evidence:
            add_evidence(0, logits, token)
        tokens, all_probs = [token], ([probs] if return_probs else None)  # (B, V) per step only when asked
        token, tokens, all_probs = follow_resampling(token, tokens, all_probs)
        for i in range(max_new_tokens - 1):
            guide = not (cfg_interval > -1 and i > cfg_interval)
            fed = torch.cat([token, token]) if use_cfg else token
            both = logits = model.decode(fed, start_pos=model.cls_token_num + i)[:, -1]
            if use_cfg:
                logits = guided_logits(logits, cfg_scale, convention) if guide else logits.chunk(2)[0]
            token, probs = draw(i + 1, logits)
            if return_class_evidence:
                add_evidence(i + 1, both, token)
            tokens.append(token)
            if return_probs:
                all_probs.append(probs)
            token, tokens, all_probs = follow_resampling(token, tokens, all_probs)
    finally:
        model.train(was_training)

    tokens = torch.cat(tokens, dim=1).long()
    out = (tokens,) + ((torch.stack(all_probs, dim=1),) if return_probs else ()) + \
        ((known_logprob,) if return_known_logprob else ()) + ((evidence,) if return_class_evidence else ())
    return out[0] if len(out) == 1 else out


# ----------------------------------------------------------------------------------------------------
# In-filling: known tokens that come AFTER unknown ones
# ----------------------------------------------------------------------------------------------------
def unknown_before_known(known: torch.Tensor) -> torch.Tensor:
    """(B, N) bool -> (B,) bool: does some unknown position precede a known one in raster order?"""
    N = known.shape[1]
    pos = torch.arange(N, device=known.device)
    first_unknown = torch.where(~known, pos, N).amin(dim=1)
    last_known = torch.where(known, pos, -1).amax(dim=1)
    return first_unknown < last_known


INFILL_STRATEGIES = ("particles", "passes")
# Class edits: the kept region is evidence of the OLD class; among K edits keep the one whose drawn tokens the
# generator itself finds most typical of the NEW class (its label against the null class)
EDIT_STRATEGIES = INFILL_STRATEGIES + ("class_evidence",)


@torch.no_grad()
def generate_infill(model, cond: torch.Tensor, forcing: KnownTokens, candidates: int = 8,
                    generator: torch.Generator | None = None, strategy: str = "passes",
                    **settings) -> torch.Tensor:
    """Tokens (B, N) that keep `forcing`'s known tokens; the unknown ones are sampled.

    A causal model draws token i from p(x_i | x_<i) and never sees the known tokens that come after it, so an
    unknown region ABOVE (or left of) known content would be drawn blind to it. Both strategies run `candidates`
    forced raster passes per image side by side (one batch of B * candidates rows) and weight each by the
    probability the model gives the known tokens along the way, w = prod_{j known} p(x_j | x_<j): a pass is a
    proposal q = prod_{i unknown} p(x_i | x_<i) of the unknown tokens and p(all tokens) / q = w, so weighting by
    w targets the model's conditional p(unknown | known).
      * "particles": a particle filter (sampling.forcing.ParticleResampler). At every known token the
        passes' weights are updated and, once they have degenerated (effective sample size below half),
        the passes are resampled: the ones that explain the known tokens so far are copied, with their KV
        cache, and go on drawing from there. One pass is kept per image at the end, by weight.
      * "class_evidence" (class edits): K independent passes, the one kept per image being the one whose drawn
        tokens have the largest class evidence, sum of log p(x_i | x_<i, class) - log p(x_i | x_<i, null) (the
        generator's own log-likelihood ratio; needs guidance). It does not target p(unknown | known): it picks
        the edit that reads most as the requested class, which is what a class edit asks for.
      * "passes" (default): importance resampling over whole passes: weights only at the end, one pass kept
        per image. On the Fashion-MNIST in-painting benchmark (8 candidates, N = 500) both restore the class
        equally often (75.0% / 74.6%), and this one costs less (no cache copies), so it is the default.
    Rows where no unknown token precedes a known one need no choice, and when that holds for the whole batch one
    pass is drawn. `settings` are those of `generate` (N = forcing's length).
    """
    if int(candidates) != candidates or candidates < 1:
        raise ConfigError(f"candidates={candidates} must be an integer >= 1 (1 = a single forced raster pass).")
    if strategy not in EDIT_STRATEGIES:
        raise ConfigError(f"unknown infill strategy {strategy!r}; known: {', '.join(EDIT_STRATEGIES)}")
    B = cond.shape[0]
    if not isinstance(forcing.known, torch.Tensor):
        raise ConfigError("the next-token loop takes one known map (B, N), not per-scale lists")
    known, values = forcing.flat((B, forcing.known.reshape(B, -1).shape[1]))
    N = known.shape[1]
    K = int(candidates) if strategy == "class_evidence" or bool(unknown_before_known(known).any()) else 1
    if K == 1:
        return generate(model, cond, N, forcing=KnownTokens(known, values), generator=generator, **settings)
    # rows b*K .. b*K+K-1 are row b's candidates
    repeated = dict(forcing=KnownTokens(repeat_rows(known, K), repeat_rows(values, K)), generator=generator)
    if strategy == "class_evidence":
        tokens, evidence = generate(model, repeat_rows(cond, K), N, return_class_evidence=True, **repeated,
                                    **settings)
        best = evidence.view(B, K).argmax(dim=1)
        return tokens[torch.arange(B, device=best.device) * K + best]
    if strategy == "particles":
        filt = ParticleResampler(B, K, cond.device, generator)
        tokens = generate(model, repeat_rows(cond, K), N, particles=filt, **repeated, **settings)
        return tokens[filt.choose()]
    tokens, logw = generate(model, repeat_rows(cond, K), N, return_known_logprob=True, **repeated, **settings)
    return tokens[choose_candidates(logw, K, generator)]
