"""XARPipeline: KL-VAE + xAR generator + per-entity flow sampler -> images.

    pipe = XARPipeline.from_official("xar-b", "kl16.ckpt", "xAR-B.pth")
    out = pipe(class_labels=[207, 360], guidance_scale=2.7, generator=torch.Generator().manual_seed(0))
    out.images   # PIL images

The sampler draws latents (normalised by the tokenizer's latent_scale) entity by entity; the tokenizer decodes
them (official eval: `vae.decode(tokens / 0.2325)`, then (x + 1) / 2 clamped to [0, 1]).
"""
from __future__ import annotations

import time

import torch

from ..errors import ConfigError
from .base import Pipeline, PipelineOutput, to_output_type

# Official evaluation settings (OliverRensu/xAR README): flow steps per entity and CFG scale of each size.
OFFICIAL_SAMPLING = {"xar-b": {"num_steps": 40, "guidance_scale": 2.7},
                     "xar-l": {"num_steps": 50, "guidance_scale": 2.3},
                     "xar-h": {"num_steps": 50, "guidance_scale": 2.2}}


class XARPipeline(Pipeline):
    def default_settings(self) -> dict:
        # xAR's CFG: drift = uncond + w_k (cond - uncond), w_k ramped from 1 (first entity) to the scale (last
        # entity), so 1 means no guidance. Euler-Maruyama is what the official sample_tokens integrates with.
        return {"guidance_scale": 2.7, "num_steps": 40, "method": "euler_maruyama", "guidance_schedule": "linear"}

    # the names people know from the official code
    @property
    def vae(self):
        return self.tokenizer

    @property
    def xar(self):
        return self.generator

    @torch.inference_mode()
    def __call__(self, class_labels, guidance_scale: float | None = None, generator: torch.Generator | None = None,
                 num_steps: int | None = None, method: str | None = None, guidance_schedule: str | None = None,
                 output_type: str = "pil", sampler: str = "default") -> PipelineOutput:
        from ..sampling.flow import check_flow_args, network_calls, sample_flow

        if sampler not in ("flow", "default"):
            raise ConfigError(f"xAR integrates a flow per entity; sampler {sampler!r} does not apply (choose the "
                              f"integration with method='euler_maruyama' or 'euler')")
        pick = self.setting
        labels, cfg = self.check_request(class_labels, pick(guidance_scale, "guidance_scale"))
        steps, method, schedule = pick(num_steps, "num_steps"), pick(method, "method"), \
            pick(guidance_schedule, "guidance_schedule")
        check_flow_args(steps, method, cfg, schedule)  # before any work
        device = self.generator.mask.device
        t0 = time.perf_counter()
        latents = sample_flow(self.generator, torch.tensor(labels, device=device), num_steps=steps,
                              guidance_scale=cfg, method=method, guidance_schedule=schedule, generator=generator)
        images01 = (self.tokenizer.decode(latents) + 1) / 2
        stats = {"seconds": time.perf_counter() - t0, "forward_passes": network_calls(self.generator, steps)}
        return PipelineOutput(images=to_output_type(images01.float(), output_type), tokens=latents, labels=labels,
                              stats=stats)

    @classmethod
    def from_official(cls, preset: str, vae_path: str, checkpoint_path: str, device: str = "cpu"):
        """An official release: MAR's `kl16.ckpt` + `xAR-{B,L,H}.pth`, loaded strictly as they are."""
        from ..models.next_x import XAR
        from ..tokenizers.kl import KLVAE

        xar = XAR.from_official_checkpoint(checkpoint_path, preset=preset)
        vae = KLVAE.from_official_checkpoint(vae_path)
        return cls(vae, xar, defaults=OFFICIAL_SAMPLING.get(preset)).to(device)
