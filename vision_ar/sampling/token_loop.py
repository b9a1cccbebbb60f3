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
"""
from __future__ import annotations

import torch

from ..conditioning import check_guidance, check_label_range
from ..errors import ConfigError
from .logits import LLAMAGEN_SAMPLING, SamplingConvention, check_sampling_args, guided_logits, sample_tokens


def _check_args(model, cond, max_new_tokens, cfg_scale, cfg_interval, no_guidance):
    if not isinstance(cond, torch.Tensor) or cond.ndim != 1 or cond.is_floating_point() or cond.numel() == 0:
        raise ConfigError(f"cond must be a non-empty 1-D integer tensor of class labels (B,), got "
                          f"{getattr(cond, 'shape', type(cond))}.")
    check_label_range(cond.tolist(), model.num_classes)
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
             convention: SamplingConvention = LLAMAGEN_SAMPLING):
    """Sample `max_new_tokens` (default block_size) image tokens per label -> (B, max_new_tokens) int64.

    With return_probs=True also returns the distributions drawn from, (B, max_new_tokens, V).
    `convention`: how guidance and the filters are applied (LlamaGen's by default, see sampling/logits.py).
    The model is run in eval mode (restored afterwards); its KV cache is (re)used and left allocated.
    """
    max_new_tokens = model.block_size if max_new_tokens is None else int(max_new_tokens)
    _check_args(model, cond, max_new_tokens, cfg_scale, cfg_interval, convention.no_guidance)
    check_sampling_args(convention, top_k=top_k, top_p=top_p, temperature=temperature)
    use_cfg = cfg_scale > convention.no_guidance

    def draw(logits: torch.Tensor):
        drawn = sample_tokens(logits, convention, generator, top_k=top_k, top_p=top_p, temperature=temperature,
                              greedy=not sample)
        return drawn.tokens[:, None], drawn.probs

    was_training = model.training
    model.eval()
    try:
        labels = torch.cat([cond, torch.full_like(cond, model.num_classes)]) if use_cfg else cond
        model.setup_cache(labels.shape[0], model.cls_token_num + max_new_tokens,
                          dtype=model.tok_embeddings.weight.dtype)

        logits = model.prefill(labels)
        token, probs = draw(guided_logits(logits, cfg_scale, convention) if use_cfg else logits)
        tokens, all_probs = [token], [probs]
        for i in range(max_new_tokens - 1):
            guide = not (cfg_interval > -1 and i > cfg_interval)
            fed = torch.cat([token, token]) if use_cfg else token
            logits = model.decode(fed, start_pos=model.cls_token_num + i)[:, -1]
            if use_cfg:
                logits = guided_logits(logits, cfg_scale, convention) if guide else logits.chunk(2)[0]
            token, probs = draw(logits)
            tokens.append(token)
            all_probs.append(probs)
    finally:
        model.train(was_training)

    tokens = torch.cat(tokens, dim=1).long()
    if return_probs:
        return tokens, torch.stack(all_probs, dim=1)
    return tokens
