"""Training task of the xAR generator on cached KL-VAE outputs (the official `engine_xar.py` with --use_cached).

Batches are (cached (B, flat), labels (B,)). The cache holds either the posterior moments [mean | logvar]
(B, 2C, h, w) flattened, from which every step draws a fresh sample z = mean + std * eps (global RNG, like the
official `DiagonalGaussianDistribution(moments).sample()`), or already-normalised latents (B, C, h, w); the
latents the generator sees are z * latent_scale. Everything else (class dropout, per-entity times and noise,
the flow-matching loss) happens inside the generator's forward.
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError
from .task import unwrap


class NextXTask:
    def __init__(self, xar: nn.Module, tokenizer: nn.Module):
        self.model = xar
        self.tokenizer = tokenizer.eval().requires_grad_(False)  # frozen; only its posterior and scale are used
        cfg = xar.config
        self.latent_shape = (cfg.latent_channels, cfg.grid_size, cfg.grid_size)

    def latents(self, cached: torch.Tensor) -> torch.Tensor:
        """(B, flat) cache rows -> normalised latents (B, C, h, w)."""
        C, h, w = self.latent_shape
        B, flat = cached.shape[0], cached[0].numel()
        cached = cached.float().reshape(B, -1)
        if flat == 2 * C * h * w:  # posterior moments: a fresh sample every step
            moments = cached.reshape(B, 2 * C, h, w)
            return self.tokenizer.posterior_from_moments(moments).sample() * self.tokenizer.latent_scale
        if flat == C * h * w:  # latents already sampled / the posterior mean, normalised by encode()
            return cached.reshape(B, C, h, w)
        raise ConfigError(f"cached tokens of {flat} numbers per image fit neither posterior moments (2*{C}*{h}*{w}) "
                          f"nor latents ({C}*{h}*{w}) of this xAR (latent {C}x{h}x{w}); rebuild the cache with the "
                          f"tokenizer the generator is sized for.")

    def loss(self, model, batch, step):
        cached, labels = batch[0], batch[1]
        out = model(self.latents(cached), labels)
        with torch.no_grad():  # how well the first and the last entity are predicted (context helps the last)
            err = (out.prediction.float() - out.target.float()).pow(2).mean(dim=(0, 2))
            lay = unwrap(model).layout
            first, last = lay.bounds[0], lay.bounds[-1]
            metrics = {"mse_first_entity": err[first[0]:first[1]].mean().item(),
                       "mse_last_entity": err[last[0]:last[1]].mean().item()}
        return out.loss, metrics
