"""FlexTok's VAEs: diffusers' AutoencoderKL (frozen, as every official FlexTok), or `IdentityVAE` (pixels are the
latents) for images small enough to model directly. Both: encode(images) -> {'latents', ...} scaled by the config's
scaling_factor; decode(latents) -> images.
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError
from .flextok_config import VAESpec

# ----------------------------------------------------------------------------------------------------
# VAEs
# ----------------------------------------------------------------------------------------------------
class IdentityVAE(nn.Module):
    """Pixels are the latents (times scaling_factor): for images small enough to model directly (Fashion-MNIST).

    latent_channels 3: the RGB pixels; 1: their grey value (channel mean), decoded by repeating it to 3
    channels (grey data such as Fashion-MNIST, repeated to 3 channels, loses nothing)."""

    downsample_factor = 1

    def __init__(self, spec: VAESpec):
        super().__init__()
        if spec.latent_channels not in (1, 3):
            raise ConfigError(f"the identity VAE has 3 (RGB) or 1 (grey) latent channels, got {spec.latent_channels}")
        self.latent_channels, self.scaling_factor = spec.latent_channels, float(spec.scaling_factor)
        self.frozen = True

    def encode(self, images, sample_posterior=False, generator=None, eps=None) -> dict:
        x = images.float()
        if self.latent_channels == 1:
            x = x.mean(dim=1, keepdim=True)
        return {"latents": x * self.scaling_factor}

    def decode(self, latents):
        x = latents / self.scaling_factor
        return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


class DiffusersVAE(nn.Module):
    """diffusers AutoencoderKL (as `self.vae`, so keys are `vae.vae.*`), frozen; latents = mode or sample, scaled."""

    def __init__(self, spec: VAESpec, vae_config: dict):
        super().__init__()
        from diffusers import AutoencoderKL

        self.vae = AutoencoderKL.from_config(vae_config)
        self.latent_channels = int(self.vae.config.latent_channels)
        self.scaling_factor = float(spec.scaling_factor if spec.scaling_factor is not None
                                    else self.vae.config.scaling_factor)
        self.downsample_factor = 2 ** (len(self.vae.config.down_block_types) - 1)
        self.sample_posterior, self.frozen = spec.sample_posterior, spec.frozen
        self.dtype = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16,
                      "float16": torch.float16}.get(spec.dtype, torch.float32)
        if spec.learnable_logvar:  # an official training option that is part of the state_dict
            self.logvar = nn.Parameter(torch.ones(()) * spec.logvar_init)
        if self.frozen:
            self.requires_grad_(False)

    def _autocast(self, x):
        return torch.autocast(x.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32)

    def encode(self, images, sample_posterior=None, generator=None, eps=None) -> dict:
        """-> {'latents', 'mean', 'logvar'}; the posterior sample is one randn of the latent shape (or `eps`)."""
        sample = self.sample_posterior if sample_posterior is None else sample_posterior
        with self._autocast(images):
            dist = self.vae.encode(images.to(self.dtype)).latent_dist
            if not sample:
                z = dist.mode()
            elif eps is not None:
                z = dist.mean + dist.std * eps.to(dist.mean)
            else:
                z = dist.sample(generator=generator)
        return {"latents": (z * self.scaling_factor).float(), "mean": dist.mean.float(),
                "logvar": dist.logvar.float()}

    def decode(self, latents):
        with self._autocast(latents):
            return self.vae.decode(latents.to(self.dtype) / self.scaling_factor).sample.float()


def build_vae(spec: VAESpec, vae_config: dict | None) -> nn.Module:
    if spec.kind == "identity":
        return IdentityVAE(spec)
    if vae_config is None:
        raise ConfigError("a FlexTok with a diffusers VAE needs the VAE's config.json (a diffusers AutoencoderKL "
                          "folder); pass vae_folder=")
    if int(vae_config.get("latent_channels") or 0) != spec.latent_channels:
        raise ConfigError(f"the VAE config has latent_channels={vae_config.get('latent_channels')} but this FlexTok "
                          f"encodes {spec.latent_channels}-channel latents; pass the VAE this tokenizer was trained "
                          f"with (e.g. EPFL-VILAB/flextok_vae_c{spec.latent_channels})")
    return DiffusersVAE(spec, vae_config)
