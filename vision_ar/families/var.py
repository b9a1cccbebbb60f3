"""Family "var": VAR, next-scale prediction over the per-scale token pyramid of a multi-scale VQ-VAE.

Tokenizer `tokenizers/multiscale.py`, generator `models/next_scale.py` (presets in both), sampler
`sampling/next_scale.py`, pipeline `pipelines/var.py`, training task `train/generator_tasks.NextScaleTask`.
"""
from __future__ import annotations

from ..family import Family, Flag, Official, SamplingConvention, register_family
from ..models.next_scale import VAR
from ..pipelines.var import VARPipeline
from ..tokenizers.multiscale import MultiScaleVQVAE
from ..train.generator_tasks import NextScaleTask


def size_var(tokenizer: MultiScaleVQVAE, layout) -> dict:
    # vocabulary, code width and scales come from the tokenizer, so they cannot disagree
    return {"vocab_size": tokenizer.config.vocab_size, "Cvae": tokenizer.config.z_channels,
            "patch_nums": tuple(tokenizer.config.patch_nums)}


def load_official(preset: str, paths: dict, device: str) -> VARPipeline:
    return VARPipeline.from_official(preset, paths["vae"], paths["checkpoint"], device)


FAMILY = register_family(Family(
    name="var",
    description="VAR: next-scale prediction over a multi-scale VQ-VAE token pyramid",
    tokenizer_classes=(MultiScaleVQVAE,),
    generator_class=VAR,
    pipeline_class=VARPipeline,
    tokenizer_presets="var-tokenizer",
    generator_presets="var",
    size_generator=size_var,
    generator_task=lambda generator, tokenizer: NextScaleTask(generator, tokenizer),
    sampling=SamplingConvention(
        samplers=("next_scale",),
        guidance="(1 + t) * cond - t * uncond, t ramped from 0 to the scale over the scales (0 = no guidance)",
        no_guidance=0.0, filters="VAR's top-k / top-p (top_p = 0 off); optional Gumbel 'more smooth' mixture"),
    cli_flags=(Flag("--vae", "official VAR VQ-VAE checkpoint (with a var-d* preset)", to="load"),
               Flag("--checkpoint", "official generator checkpoint (with a preset)", to="load"),
               Flag("--more-smooth", "VAR: Gumbel 'more smooth' sampling", to="call", action="store_true")),
    official=Official(paths=("vae", "checkpoint"), files="vae_ch160v4096z32.pth and var_d*.pth files",
                      load=load_official),
    shipped={"fmnist-var": "fmnist_var"},
))
