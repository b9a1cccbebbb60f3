"""The plain next-token sampling loop for LlamaGen-style GPTs (official `autoregressive/models/generate.py`).

    tokens = generate(gpt, torch.tensor([207, 360]), 256, cfg_scale=4.0, temperature=1.0, top_k=0, top_p=1.0,
                      generator=torch.Generator().manual_seed(0))       # (2, 256) int64 -> vq.decode_code(...)

Classifier-free guidance runs the conditional and unconditional rows as ONE doubled batch:
rows [0:B] carry the labels, rows [B:2B] the null class (`num_classes`); the guided logits are
`uncond + (cond - uncond) * cfg_scale` and the token drawn from them is fed to both halves. cfg_scale <= 1
means no unconditional rows at all. `cfg_interval = k > -1` switches guidance off (conditional logits only)
for every decode step i > k (token index i + 1); token 0 (prefill) is always guided.

Randomness: exactly one `torch.multinomial(probs, 1)` per image token over the conditional rows, drawn from
`generator` (the global RNG when None). `torch.manual_seed(s)` + generator=None and
`generator=torch.Generator().manual_seed(s)` give the same CPU tokens as the official code seeded with s.
"""
from __future__ import annotations

import torch

from ..errors import ConfigError
from .token_filters import check_sampling_args, sample_from_logits


def guided_logits(logits: torch.Tensor, cfg_scale: float, guide: bool = True) -> torch.Tensor:
    """Doubled-batch logits [cond; uncond] (2B, V) -> (B, V). `guide=False` keeps the conditional half."""
    cond, uncond = logits.chunk(2, dim=0)
    return uncond + (cond - uncond) * cfg_scale if guide else cond


def _check_args(model, cond, max_new_tokens, cfg_scale, cfg_interval):
    if not isinstance(cond, torch.Tensor) or cond.ndim != 1 or cond.is_floating_point() or cond.numel() == 0:
        raise ConfigError(f"cond must be a non-empty 1-D integer tensor of class labels (B,), got "
                          f"{getattr(cond, 'shape', type(cond))}.")
    if int(cond.min()) < 0 or int(cond.max()) >= model.num_classes:
        raise ConfigError(f"class labels must be in [0, {model.num_classes - 1}], got min {int(cond.min())}, "
                          f"max {int(cond.max())}.")
    if not 1 <= max_new_tokens <= model.block_size:
        raise ConfigError(f"max_new_tokens={max_new_tokens} must be in [1, block_size={model.block_size}].")
    if cfg_scale < 0:
        raise ConfigError(f"cfg_scale={cfg_scale} must be >= 0 (<= 1 disables guidance).")
    if cfg_scale > 1.0 and not model.cls_embedding.has_null_class:
        raise ConfigError("classifier-free guidance needs the learned null class, but this model was built with "
                          "class_dropout_prob=0 (no null row); use cfg_scale=1.0.")
    if int(cfg_interval) != cfg_interval or cfg_interval < -1:
        raise ConfigError(f"cfg_interval={cfg_interval} must be an integer >= -1 (-1 = guide every token).")


@torch.no_grad()
def generate(model, cond: torch.Tensor, max_new_tokens: int | None = None, cfg_scale: float = 1.0,
             cfg_interval: int = -1, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
             generator: torch.Generator | None = None, sample: bool = True, return_probs: bool = False):
    """Sample `max_new_tokens` (default block_size) image tokens per label -> (B, max_new_tokens) int64.

    With return_probs=True also returns the distributions drawn from, (B, max_new_tokens, V).
    The model is run in eval mode (restored afterwards); its KV cache is (re)used and left allocated.
    """
    max_new_tokens = model.block_size if max_new_tokens is None else int(max_new_tokens)
    _check_args(model, cond, max_new_tokens, cfg_scale, cfg_interval)
    check_sampling_args(temperature, top_k, top_p)
    use_cfg = cfg_scale > 1.0
    draw = dict(temperature=temperature, top_k=top_k, top_p=top_p, generator=generator, sample=sample)

    was_training = model.training
    model.eval()
    try:
        labels = torch.cat([cond, torch.full_like(cond, model.num_classes)]) if use_cfg else cond
        model.setup_cache(labels.shape[0], model.cls_token_num + max_new_tokens,
                          dtype=model.tok_embeddings.weight.dtype)

        logits = model.prefill(labels)
        token, probs = sample_from_logits(guided_logits(logits, cfg_scale) if use_cfg else logits, **draw)
        tokens, all_probs = [token], ([probs] if return_probs else None)  # (B, V) per step only when asked
        for i in range(max_new_tokens - 1):
            guide = not (cfg_interval > -1 and i > cfg_interval)
            fed = torch.cat([token, token]) if use_cfg else token
            logits = model.decode(fed, start_pos=model.cls_token_num + i)[:, -1]
            if use_cfg:
                logits = guided_logits(logits, cfg_scale, guide)
            token, probs = sample_from_logits(logits, **draw)
            tokens.append(token)
            if return_probs:
                all_probs.append(probs)
    finally:
        model.train(was_training)

    tokens = torch.cat(tokens, dim=1).long()
    if return_probs:
        return tokens, torch.stack(all_probs, dim=1)
    return tokens
