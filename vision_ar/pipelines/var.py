"""VARPipeline: multi-scale VQ-VAE + VAR transformer + next-scale sampler -> images."""
from __future__ import annotations

import time

import torch

from ..errors import ConfigError
from .base import Pipeline, PipelineOutput, to_output_type


class VARPipeline(Pipeline):
    def default_settings(self) -> dict:
        # VAR's CFG convention: logits = (1+t) cond - t uncond with t ramped from 0 to cfg over the scales,
        # so cfg=0 means no guidance. top_k/top_p as in VAR's demo.
        return {"guidance_scale": 4.0, "top_k": 900, "top_p": 0.96, "more_smooth": False, "temperature": 1.0}

    # the names people know from the official code
    @property
    def vae(self):
        return self.tokenizer

    @property
    def var(self):
        return self.generator

    @torch.inference_mode()
    def __call__(self, class_labels, guidance_scale: float | None = None, generator: torch.Generator | None = None,
                 top_k: int | None = None, top_p: float | None = None, more_smooth: bool | None = None,
                 temperature: float | None = None, output_type: str = "pil",
                 sampler: str = "default") -> PipelineOutput:
        from ..sampling.next_scale import sample_next_scale

        if sampler not in ("next_scale", "default"):
            raise ConfigError(f"VAR draws whole scales at once; sampler {sampler!r} does not apply "
                              f"(use the default next-scale sampler)")
        pick = self.setting
        labels, cfg = self.check_request(class_labels, pick(guidance_scale, "guidance_scale"))
        t0 = time.perf_counter()
        idx_list, images01 = sample_next_scale(
            self.var, self.vae, labels, generator=generator, cfg=cfg, top_k=pick(top_k, "top_k"),
            top_p=pick(top_p, "top_p"), more_smooth=pick(more_smooth, "more_smooth"),
            temperature=pick(temperature, "temperature"))
        stats = {"seconds": time.perf_counter() - t0, "forward_passes": len(idx_list)}
        return PipelineOutput(images=to_output_type(images01.float(), output_type), tokens=idx_list,
                              labels=labels, stats=stats)

    @classmethod
    def from_official(cls, preset: str, vae_path: str, checkpoint_path: str, device: str = "cpu"):
        """An official VAR release: `vae_ch160v4096z32.pth` + `var_d{16,20,24,30,36}.pth`, loaded as they are."""
        from ..models.next_scale import VAR
        from ..tokenizers.multiscale import MultiScaleVQVAE

        var = VAR.from_official(checkpoint_path, preset)
        # The 512px model (var-d36) uses the same VQ-VAE weights with its own scale schedule.
        vae = MultiScaleVQVAE.from_official(vae_path, patch_nums=var.config.patch_nums)
        return cls(vae, var).to(device)
