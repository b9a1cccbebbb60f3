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
        # edit_candidates: edits drawn per image when in-/out-painting, one kept; edit_strategy: "passes" weighs
        # whole edits at the end, "particles" resamples them scale by scale at the known tokens
        return {"guidance_scale": 4.0, "top_k": 900, "top_p": 0.96, "more_smooth": False, "temperature": 1.0,
                "edit_candidates": 8, "edit_strategy": "passes"}

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
        if sampler not in ("next_scale", "default"):
            raise ConfigError(f"VAR draws whole scales at once; sampler {sampler!r} does not apply "
                              f"(use the default next-scale sampler)")
        pick = self.setting
        labels, cfg = self.check_request(class_labels, pick(guidance_scale, "guidance_scale"))
        t0 = time.perf_counter()
        idx_list, images01 = self.sample_with_forcing(labels, None, generator, guidance_scale=cfg,
                                                      top_k=top_k, top_p=top_p, more_smooth=more_smooth,
                                                      temperature=temperature)
        stats = {"seconds": time.perf_counter() - t0, "forward_passes": len(idx_list)}
        return PipelineOutput(images=to_output_type(images01.float(), output_type), tokens=idx_list,
                              labels=labels, stats=stats)

    # ---- editing (pipelines/editing.py): the official zero-shot edit, known tokens forced at every scale ----
    edit_settings = ("scale_rule",)

    def edit_defaults(self, method: str) -> dict:
        # A new class needs a new global layout: edit() generates every coarse token its mask touches; and the kept
        # region is evidence of the OLD class, so edits are not weighted by it (one edit per image).
        return {"scale_rule": "footprint", "edit_candidates": 1} if method == "edit" else {}

    def map_known(self, known, any_part, method, scale_rule: str = "official"):
        """Per-scale known maps. scale_rule (masks.py): "official" (VAR's notebook: coarse scales kept, the input's
        global layout stays; inpaint/outpaint) or "footprint" (a coarse token touching the generated region is
        generated; edit's default)."""
        from .masks import known_tokens

        return known_tokens(known, self.edit_layout(), any_part=any_part, scale_rule=scale_rule)

    def edit_image_size(self) -> tuple[int, int]:
        return (self.vae.image_size, self.vae.image_size)

    def encode_for_edit(self, images: torch.Tensor) -> list[torch.Tensor]:
        device = self.var.pos_1LC.device
        return self.vae.img_to_idx(images.to(device))  # per scale (B, pn^2), the official img_to_idxBl

    @torch.inference_mode()
    def sample_with_forcing(self, labels, forcing, generator, guidance_scale: float | None = None,
                            top_k: int | None = None, top_p: float | None = None, more_smooth: bool | None = None,
                            temperature: float | None = None, edit_candidates: int | None = None,
                            edit_strategy: str | None = None):
        """Next-scale sampling with optional known tokens; a None label is the null class (unconditional).
        Labels and guidance come checked (`check_request`, at the caller's boundary).

        With forcing and edit_candidates = K > 1, K edits are drawn per image side by side, weighted by the
        probability the model gives the known tokens (as the GPT's `generate_infill`: the generated coarse scales
        that best predict the known fine tokens win). edit_strategy "particles": a particle filter, resampling the
        K edits before each scale once their weights degenerate, one kept at the end; "passes": one of K
        independent edits kept at the end, by weight."""
        from ..sampling.forcing import KnownTokens, ParticleResampler, choose_candidates, repeat_rows, take_rows
        from ..sampling.token_loop import INFILL_STRATEGIES
        from ..sampling.next_scale import sample_next_scale

        pick = self.setting
        labels = [-1 if c is None else c for c in labels]
        settings = dict(cfg=pick(guidance_scale, "guidance_scale"), top_k=pick(top_k, "top_k"), top_p=pick(top_p, "top_p"),
                        more_smooth=pick(more_smooth, "more_smooth"), temperature=pick(temperature, "temperature"))
        K = 1 if forcing is None else pick(edit_candidates, "edit_candidates")
        if int(K) != K or K < 1:
            raise ConfigError(f"edit_candidates={K} must be an integer >= 1 (1 = a single edit per image)")
        strategy = pick(edit_strategy, "edit_strategy")
        if strategy not in INFILL_STRATEGIES:
            raise ConfigError(f"edit_strategy {strategy!r} is not available for VAR; it takes "
                              f"{', '.join(INFILL_STRATEGIES)}")
        if K == 1:
            return sample_next_scale(self.var, self.vae, labels, generator=generator, forcing=forcing, **settings)
        K = int(K)
        filt = ParticleResampler(len(labels), K, self.var.pos_1LC.device, generator) if strategy == "particles" \
            else None
        tokens, images, logw = sample_next_scale(
            self.var, self.vae, [c for c in labels for _ in range(K)], generator=generator,
            forcing=KnownTokens(repeat_rows(forcing.known, K), repeat_rows(forcing.values, K)),
            return_known_logprob=True, particles=filt, **settings)
        rows = filt.choose() if filt is not None else choose_candidates(logw, K, generator)
        return take_rows(tokens, rows), images[rows]

    @classmethod
    def from_official(cls, preset: str, vae_path: str, checkpoint_path: str, device: str = "cpu"):
        """An official VAR release: `vae_ch160v4096z32.pth` + `var_d{16,20,24,30,36}.pth`, loaded as they are."""
        from ..models.next_scale import VAR
        from ..tokenizers.multiscale import MultiScaleVQVAE

        var = VAR.from_official(checkpoint_path, preset)
        # The 512px model (var-d36) uses the same VQ-VAE weights with its own scale schedule.
        vae = MultiScaleVQVAE.from_official(vae_path, patch_nums=var.config.patch_nums)
        return cls(vae, var).to(device)
