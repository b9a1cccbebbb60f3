"""Family "xar": next-X prediction (xAR), a flow-matching generator over the entities of a KL-VAE latent map.

Tokenizer `tokenizers/kl.py` (MAR's KL-16, diffusers' AutoencoderKL), generator `models/next_x.py` with its
entity layouts `models/entities.py` (token / cell / subsample / scale / image; presets in both), sampler
`sampling/flow.py` (per-entity Euler-Maruyama or Euler ODE, CFG ramp, KV cache across entities), pipeline
`pipelines/xar.py`, training task `train/flow_task.NextXTask` on the cached KL posterior.
"""
from __future__ import annotations

from ..errors import ConfigError
from ..family import Family, Flag, Official, SamplingConvention, register_family
from ..models.next_x import XAR
from ..pipelines.xar import XARPipeline
from ..tokenizers.kl import KLVAE
from ..train.flow_task import NextXTask


def size_xar(tokenizer: KLVAE, layout) -> dict:
    """Latent channels from the tokenizer, the grid side from the latent map of the data's image size."""
    if layout.kind != "latent" or layout.dtype != "float":
        raise ConfigError(f"family xar: xAR models a float latent map, got a {layout.describe()}; use a KL-VAE "
                          f"tokenizer (kl-16, kl-fmnist)")
    _, h, w = layout.shape
    if h != w:
        raise ConfigError(f"family xar: xAR models square latent grids, got {h}x{w}; use square images")
    return {"latent_channels": tokenizer.latent_channels, "grid_size": h}


def cache_posterior(tokenizer: KLVAE, layout):
    """Cache the posterior moments (mean | logvar, 2C channels): the task draws a new sample every step, as the
    official training on cached latents (`--use_cached`) does."""
    c, h, w = layout.shape
    return tokenizer.encode_moments, tokenizer.moments_layout((h * tokenizer.downsample, w * tokenizer.downsample))


def load_official(preset: str, paths: dict, device: str) -> XARPipeline:
    return XARPipeline.from_official(preset, paths["vae"], paths["checkpoint"], device)


FAMILY = register_family(Family(
    name="xar",
    description="xAR: next-X prediction (token / cell / subsample / scale / image entities) with flow matching "
                "on KL-VAE latents",
    tokenizer_classes=(KLVAE,),
    generator_class=XAR,
    pipeline_class=XARPipeline,
    tokenizer_presets="kl-tokenizer",
    generator_presets="xar",
    shipped={"fmnist-xar": "fmnist_xar"},  # scripts/train_fmnist_xar.sh
    size_generator=size_xar,
    generator_task=lambda generator, tokenizer: NextXTask(generator, tokenizer),
    cache_encoder=cache_posterior,
    sampling=SamplingConvention(
        samplers=("flow",),
        guidance="drift = uncond + w_k (cond - uncond), w_k ramped from 1 (first entity) to the scale (last); "
                 "1 = no guidance",
        no_guidance=1.0, filters="none: continuous latents (flow steps and integration method instead)"),
    cli_flags=(Flag("--vae", "official VAE checkpoint (VAR VQ-VAE with var-d*, MAR kl16.ckpt with xar-*)", to="load"),
               Flag("--checkpoint", "official generator checkpoint (with a preset)", to="load"),
               Flag("--flow-steps", "xAR: flow integration steps per entity", to="call", kwarg="num_steps", type=int),
               Flag("--flow-method", "xAR: euler_maruyama (official SDE) or euler (ODE)", to="call", kwarg="method")),
    official=Official(paths=("vae", "checkpoint"), files="MAR's kl16.ckpt and xAR-{B,L,H}.pth files",
                      load=load_official),
    # known entities fixed, the rest generated (pipelines/xar.py; refused for one-entity `image` models)
    edit_methods=("inpaint", "outpaint", "edit"),
))
