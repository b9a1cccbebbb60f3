"""Next-scale sampling for VAR (the official `VAR.autoregressive_infer_cfg`, as a function outside the model).

For each scale si = 0 .. S-1, coarse to fine:
    1. the transformer gives logits for all pn_si^2 tokens of the scale, for the conditional and the
       unconditional (null class) halves of a doubled batch (KV caches hold every earlier scale);
    2. CFG with VAR's ramp: t = cfg * si / (S - 1),  logits = (1 + t) * cond - t * uncond;
    3. top-k, top-p, one multinomial draw per token (generator), or with `more_smooth` a Gumbel-softmax mixture
       of codebook vectors (a second draw) in place of the hard token's embedding;
    4. the VQ-VAE adds the scale's codes to f_hat and gives the next scale's input (area-downsampled f_hat).
Finally the VQ-VAE decodes f_hat. Same generator, same draws, same order as the official code, so a CPU
generator with the same seed gives the official tokens.

Zero-shot editing (in-/out-painting, class-conditional editing; the official `demo_zero_shot_edit.ipynb`) is the
optional `forcing` input: after step 3 of every scale, the positions it marks as known take the input image's
token (and its code vector, in place of the sampled or smoothed one) before step 4, so the transformer sees them
through f_hat and its KV cache. Every position is still drawn (the random stream is that of plain sampling).
"""
from __future__ import annotations

import numbers
from typing import Sequence

import torch

from ..conditioning import check_guidance, check_label_range
from ..errors import ConfigError
from .forcing import KnownTokens, ParticleResampler
from .logits import (VAR_SAMPLING, apply_temperature, check_sampling_args, gumbel_softmax, sample_tokens, var_cfg,
                     var_guidance_ratio)


# ----------------------------------------------------------------------------------------------------
# Argument checks (all before any model call)
# ----------------------------------------------------------------------------------------------------
def resolve_class_labels(class_labels, batch_size: int | None, num_classes: int, device,
                         generator: torch.Generator | None) -> torch.Tensor:
    """Labels (B,) int64 on `device`; -1 means the unconditional (null) class, stored as num_classes.

    None draws B labels uniformly from `generator` (official: multinomial over a uniform (1, num_classes) row).
    An int is repeated batch_size times.
    """
    if class_labels is None or isinstance(class_labels, numbers.Integral):
        if batch_size is None:
            raise ConfigError("batch_size is required when class_labels is None (random classes) or a single int; "
                              "pass batch_size=B or a list of labels.")
        if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size <= 0:
            raise ConfigError(f"batch_size={batch_size!r} must be a positive integer.")
        B = int(batch_size)
        if class_labels is None:
            uniform = torch.full((1, num_classes), 1.0 / num_classes, dtype=torch.float32, device=device)
            return torch.multinomial(uniform, num_samples=B, replacement=True, generator=generator).reshape(B)
        labels = torch.full((B,), int(class_labels), dtype=torch.int64, device=device)
    else:
        if isinstance(class_labels, torch.Tensor):
            if class_labels.dtype.is_floating_point or class_labels.ndim != 1:
                raise ConfigError(f"class_labels must be a 1-D integer tensor, got shape {tuple(class_labels.shape)} "
                                  f"dtype {class_labels.dtype}.")
            labels = class_labels.to(device=device, dtype=torch.int64)
        else:
            if not isinstance(class_labels, Sequence) or not all(isinstance(c, numbers.Integral) for c in class_labels):
                raise ConfigError(f"class_labels must be None, an int, a list of ints or a 1-D tensor; got "
                                  f"{class_labels!r}.")
            labels = torch.tensor([int(c) for c in class_labels], dtype=torch.int64, device=device)
        if labels.numel() == 0:
            raise ConfigError("class_labels is empty: give at least one class id.")
        if batch_size is not None and batch_size != labels.numel():
            raise ConfigError(f"batch_size={batch_size} but {labels.numel()} class labels were given; drop batch_size "
                              f"or give one label per image.")
    check_label_range(labels.tolist(), num_classes, allow_unconditional=True)
    return torch.where(labels < 0, num_classes, labels)


def _check_pair(var, vae) -> None:
    emb = vae.quantize.embedding.weight
    if tuple(emb.shape) != (var.V, var.Cvae):
        raise ConfigError(f"the VQ-VAE codebook is {tuple(emb.shape)} but the VAR expects (vocab_size, Cvae) = "
                          f"({var.V}, {var.Cvae}); pair the transformer with the tokenizer it was trained with.")
    vae_pn = tuple(getattr(vae.quantize, "patch_nums", var.patch_nums))
    if vae_pn != tuple(var.patch_nums):
        raise ConfigError(f"the VQ-VAE uses patch_nums {vae_pn} but the VAR uses {tuple(var.patch_nums)}; build the "
                          f"VQ-VAE with the VAR's patch_nums (e.g. the 512px schedule for var-d36).")


# ----------------------------------------------------------------------------------------------------
# The sampler
# ----------------------------------------------------------------------------------------------------
@torch.no_grad()
def sample_next_scale(var, vae, class_labels=None, generator: torch.Generator | None = None, *,
                      cfg: float = 1.5, top_k: int = 0, top_p: float = 0.0, more_smooth: bool = False,
                      temperature: float = 1.0, batch_size: int | None = None,
                      forcing: KnownTokens | None = None, return_known_logprob: bool = False,
                      particles: ParticleResampler | None = None, trace: dict | None = None) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Sample images with a VAR transformer and its multi-scale VQ-VAE.

    class_labels: list/1-D tensor of class ids (-1 = unconditional), one int for the whole batch, or None for
        random classes drawn from `generator` (then batch_size is required).
    generator: a torch.Generator on the model's device; None uses torch's global RNG.
    cfg: guidance scale (>= 0), ramped over scales; top_k (0 = off), top_p (0 = off): VAR's filters;
    more_smooth: Gumbel-softmax codebook mixture (visualisation only, not for FID);
    temperature: divides the guided logits before filtering (1 = official behaviour).
    forcing: known tokens (editing): per scale a (B, pn_si^2) bool map and the input image's (B, pn_si^2) tokens
        (`vision_ar.pipelines.masks` makes the maps from a pixel mask); None = plain sampling.
    return_known_logprob: (with forcing) also return, per row, the summed log-probability of the known tokens
        under the distribution each scale draws from (guided, temperature-scaled, before top-k/top-p): how well
        the generated coarser scales agree with them (importance weights for choosing between edits).
    particles: (with forcing) a ParticleResampler over the rows (K consecutive rows per image): at every scale
        the known tokens' log-probability given the coarser scales is handed to it BEFORE the scale's unknown
        tokens are drawn and, when it resamples, every per-row state (f_hat, tokens so far, KV caches, the
        condition, scores) follows its permutation; the caller keeps one row per image with `particles.choose()`.
    trace: if a dict is given it is filled with `label_B`, and per scale si `f_hat.{si}`, `kept_count.{si}`,
        `logits_cfg.{si}` (guided logits before temperature/filtering); with forcing also `sampled_idx_Bl.{si}`
        (the draws, before the known tokens replace them), `force_gt.{si}` (0/1 int64) and `h_BChw.{si}`.

    Returns (tokens: list of (B, pn_si^2) int64 per scale, the ones that entered f_hat, images (B, 3, H, W) in
    [0, 1]) [, known log-probability (B,)].
    """
    cfg = check_guidance(cfg, name="cfg", off="0 = no guidance; VAR uses 1.5 for FID, ~4 for visuals")
    check_sampling_args(VAR_SAMPLING, top_k=top_k, top_p=top_p, temperature=temperature)
    _check_pair(var, vae)
    device = var.pos_1LC.device
    if generator is not None and torch.device(generator.device).type != device.type:
        raise ConfigError(f"the generator is on {generator.device} but the model is on {device}; create it with "
                          f"torch.Generator(device='{device.type}').")
    labels = resolve_class_labels(class_labels, batch_size, var.num_classes, device, generator)
    B, S, last = labels.shape[0], len(var.patch_nums), var.patch_nums[-1]
    codebook = vae.quantize.embedding
    if forcing is not None:
        known, known_idx = forcing.per_scale([(B, pn * pn) for pn in var.patch_nums])
        known = [k.to(device) for k in known]
        known_idx = [v.to(device=device, dtype=torch.long) for v in known_idx]
    known_logprob = torch.zeros(B, dtype=torch.float32, device=device)
    if particles is not None and forcing is None:
        raise ConfigError("particles (resampling between edit candidates) needs forcing=KnownTokens(...)")
    if trace is not None:
        trace["label_B"] = labels.clone()

    cond_BD = var.class_condition(torch.cat((labels, torch.full_like(labels, var.num_classes))))  # [cond; uncond]
    x = var.first_scale_input(cond_BD)
    f_hat = cond_BD.new_zeros(B, var.Cvae, last, last)
    tokens: list[torch.Tensor] = []
    var.start_inference(2 * B)
    try:
        for si, pn in enumerate(var.patch_nums):
            ratio = var_guidance_ratio(si, S)
            logits = var_cfg(var.forward_scale(x, cond_BD), cfg, si, S)  # (B, pn^2, V)
            if forcing is not None and (return_known_logprob or particles is not None):
                logp = apply_temperature(logits.float(), temperature, VAR_SAMPLING).log_softmax(dim=-1)
                logp = logp.gather(2, known_idx[si][..., None])[..., 0]
                step_logprob = torch.where(known[si], logp, torch.zeros_like(logp)).sum(1)
                known_logprob += step_logprob
                rows = particles.observe(step_logprob) if particles is not None else None
                if rows is not None:  # resampled: the rows that explain the known tokens go on
                    logits, f_hat, known_logprob = logits[rows], f_hat[rows], known_logprob[rows]
                    tokens = [t[rows] for t in tokens]
                    both = torch.cat([rows, rows + B])
                    cond_BD = cond_BD[both]
                    var.select_cache_rows(both)
            drawn = sample_tokens(logits, VAR_SAMPLING, generator, top_k=top_k, top_p=top_p,
                                  temperature=temperature)
            idx_Bl = drawn.tokens
            if not more_smooth:
                h_BlC = codebook(idx_Bl)
            else:  # soft mixture of codes; temperature of the Gumbel-softmax anneals over scales (MaskGIT-style)
                tau = max(0.27 * (1 - ratio * 0.95), 0.005)
                weights = gumbel_softmax(drawn.filtered_logits.mul(1 + ratio), tau=tau, hard=False, generator=generator)
                h_BlC = weights @ codebook.weight.unsqueeze(0)
            if forcing is not None:  # known positions: the input's token and its exact code vector
                if trace is not None:
                    trace[f"sampled_idx_Bl.{si}"] = idx_Bl
                    trace[f"force_gt.{si}"] = known[si].long()
                h_BlC = torch.where(known[si][..., None], codebook(known_idx[si]), h_BlC)
                idx_Bl = torch.where(known[si], known_idx[si], idx_Bl)
            h_BChw = h_BlC.transpose(1, 2).reshape(B, var.Cvae, pn, pn)
            if trace is not None and forcing is not None:
                trace[f"h_BChw.{si}"] = h_BChw.clone()
            f_hat, next_map = vae.quantize.next_ar_input(si, f_hat, h_BChw)
            tokens.append(idx_Bl)
            if trace is not None:
                trace[f"f_hat.{si}"] = f_hat.clone()
                trace[f"kept_count.{si}"] = drawn.kept_count
                trace[f"logits_cfg.{si}"] = logits
            if si != S - 1:
                next_map = next_map.view(B, var.Cvae, -1).transpose(1, 2)  # (B, pn_next^2, Cvae)
                x = var.scale_input(si + 1, next_map).repeat(2, 1, 1)  # same input for both CFG halves
    finally:
        var.end_inference()
    images = vae.fhat_to_img(f_hat).add_(1).mul_(0.5)
    if return_known_logprob:
        return tokens, images, known_logprob
    return tokens, images
