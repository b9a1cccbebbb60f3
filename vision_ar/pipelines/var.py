"""VARPipeline: multi-scale VQ-VAE + VAR transformer + next-scale sampler -> images."""
from __future__ import annotations

import time
from pathlib import Path

import torch

from ..errors import ConfigError
from .base import (PipelineOutput, check_class_labels, check_guidance, read_pipeline_config, to_output_type,
                   write_pipeline_config)


class VARPipeline:
    family = "var"

    def __init__(self, vae, var, defaults: dict | None = None, class_names: list[str] | None = None):
        self.vae = vae.eval()
        self.var = var.eval()
        self.defaults = {"guidance_scale": 4.0, "top_k": 900, "top_p": 0.96, "more_smooth": False, **(defaults or {})}
        self.class_names = class_names

    @property
    def num_classes(self) -> int:
        return self.var.config.num_classes

    def to(self, device):
        self.vae.to(device)
        self.var.to(device)
        return self

    # ------------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def __call__(self, class_labels, guidance_scale: float | None = None, generator: torch.Generator | None = None,
                 top_k: int | None = None, top_p: float | None = None, more_smooth: bool | None = None,
                 output_type: str = "pil", sampler: str = "next_scale") -> PipelineOutput:
        from ..sampling.next_scale import sample_next_scale

        if sampler not in ("next_scale", "default"):
            raise ConfigError(f"VAR draws whole scales at once; sampler {sampler!r} does not apply "
                              f"(use the default next-scale sampler)")
        d = self.defaults
        labels = check_class_labels(class_labels, self.num_classes)
        cfg = check_guidance(d["guidance_scale"] if guidance_scale is None else guidance_scale)
        t0 = time.perf_counter()
        idx_list, images01 = sample_next_scale(
            self.var, self.vae, labels, generator=generator, cfg=cfg,
            top_k=d["top_k"] if top_k is None else top_k, top_p=d["top_p"] if top_p is None else top_p,
            more_smooth=d["more_smooth"] if more_smooth is None else more_smooth)
        stats = {"seconds": time.perf_counter() - t0, "forward_passes": len(idx_list)}
        return PipelineOutput(images=to_output_type(images01.float(), output_type), tokens=idx_list,
                              labels=labels, stats=stats)

    # ------------------------------------------------------------------------------------------------
    def save_pretrained(self, folder):
        folder = Path(folder)
        self.vae.save_pretrained(folder / "tokenizer")
        self.var.save_pretrained(folder / "generator")
        write_pipeline_config(folder, {"_class": "VARPipeline", "defaults": self.defaults,
                                       "class_names": self.class_names})
        return folder

    @classmethod
    def from_pretrained(cls, folder, device: str = "cpu"):
        from ..models.next_scale import VAR
        from ..tokenizers.multiscale import MultiScaleVQVAE

        folder = Path(folder)
        cfg = read_pipeline_config(folder)
        vae = MultiScaleVQVAE.from_pretrained(folder / "tokenizer")
        var = VAR.from_pretrained(folder / "generator")
        return cls(vae, var, cfg.get("defaults"), cfg.get("class_names")).to(device)

    @classmethod
    def from_official(cls, preset: str, vae_path: str, checkpoint_path: str, device: str = "cpu"):
        """An official VAR release: `vae_ch160v4096z32.pth` + `var_d{16,20,24,30,36}.pth`, loaded as they are."""
        from ..models.next_scale import VAR
        from ..tokenizers.multiscale import from_official_checkpoint

        var = VAR.from_official_checkpoint(checkpoint_path, preset=preset)
        # The 512px model (var-d36) uses the same VQ-VAE weights with its own scale schedule.
        vae = from_official_checkpoint(vae_path, patch_nums=var.config.patch_nums)
        return cls(vae, var).to(device)
