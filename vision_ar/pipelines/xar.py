"""XARPipeline: KL-VAE + xAR generator + per-entity flow sampler -> images.

    pipe = XARPipeline.from_official("xar-b", "kl16.ckpt", "xAR-B.pth")
    out = pipe(class_labels=[207, 360], guidance_scale=2.7, generator=torch.Generator().manual_seed(0))
    out.images   # PIL images

The sampler draws latents (normalised by the tokenizer's latent_scale) entity by entity; the tokenizer decodes
them (official eval: `vae.decode(tokens / 0.2325)`, then (x + 1) / 2 clamped to [0, 1]).

Editing (`pipe.inpaint / outpaint / edit`, pipelines/editing.py): a latent cell is known when its whole pixel
footprint is (masks.py); the known cells are encoded (posterior mean) and held fixed while the flow sampler
generates the rest, entity by entity (sampling/flow.py: an entity known everywhere is fixed, one straddling the
mask's border keeps its known positions on the path to the input's latents). Scale entities: a coarse token is
known when every cell it averages is. A model with ONE entity (`image`) is refused: nothing can be kept fixed
while the rest is generated.
"""
from __future__ import annotations

import time

import torch

from ..errors import ConfigError
from ..sampling.flow import check_flow_args, network_calls, sample_flow
from ..sampling.forcing import KnownTokens
from .base import Pipeline, PipelineOutput, to_output_type

# Official evaluation settings (OliverRensu/xAR README): flow steps per entity and CFG scale of each size.
OFFICIAL_SAMPLING = {"xar-b": {"num_steps": 40, "guidance_scale": 2.7},
                     "xar-l": {"num_steps": 50, "guidance_scale": 2.3},
                     "xar-h": {"num_steps": 50, "guidance_scale": 2.2}}


XAR_EDIT_STRATEGIES = ("hold", "fresh")


class XARPipeline(Pipeline):
    def default_settings(self) -> dict:
        # xAR's CFG: drift = uncond + w_k (cond - uncond), w_k ramped from 1 (first entity) to the scale (last
        # entity), so 1 means no guidance. Euler-Maruyama is what the official sample_tokens integrates with.
        # Editing: edit_strategy "hold" keeps the known latents on their flow path (sampling/flow.py), "fresh"
        # draws edit_candidates plain samples and keeps the best fit to the known region (pipelines/editing.py).
        return {"guidance_scale": 2.7, "num_steps": 40, "method": "euler_maruyama", "guidance_schedule": "linear",
                "edit_strategy": "hold", "edit_candidates": 8}

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
        if sampler not in ("flow", "default"):
            raise ConfigError(f"xAR integrates a flow per entity; sampler {sampler!r} does not apply (choose the "
                              f"integration with method='euler_maruyama' or 'euler')")
        pick = self.setting
        labels, cfg = self.check_request(class_labels, pick(guidance_scale, "guidance_scale"))
        t0 = time.perf_counter()
        latents, images01 = self.sample_with_forcing(labels, None, generator, guidance_scale=cfg, num_steps=num_steps,
                                                     method=method, guidance_schedule=guidance_schedule)
        stats = {"seconds": time.perf_counter() - t0,
                 "forward_passes": network_calls(self.generator, pick(num_steps, "num_steps"))}
        return PipelineOutput(images=to_output_type(images01.float(), output_type), tokens=latents, labels=labels,
                              stats=stats)

    # ---- editing (pipelines/editing.py): known entities fixed, the rest generated --------------------------
    def edit_defaults(self, method: str) -> dict:
        # Class edits: in entity order the kept ring is integrated before most of the region and carries the OLD
        # silhouette, as with the GPT; 4 fresh samples of the new class, the one nearest the input at the known
        # latents (fmnist-xar centre edits, N = 300, CFG 4: hold 59.7%, fresh 67.7%, oracle 77.3%; 4x the flow
        # work: benchmarks/edit_quality.py, docs/editing.md)
        return {"edit_strategy": "fresh", "edit_candidates": 4} if method == "edit" else {}

    def check_edit_method(self, method: str) -> None:
        super().check_edit_method(method)
        lay = self.xar.layout
        if lay.num_entities == 1:
            raise ConfigError(f"this xAR model generates the whole latent map as ONE entity ({lay.describe()}): "
                              f"there is no entity to keep fixed while the rest is generated, so a partly known "
                              f"image is ill-defined for next-X editing; use a model with token, cell, subsample "
                              f"or scale entities")

    def edit_image_size(self) -> tuple[int, int]:
        _, h, w = self.xar.token_layout.shape
        return h * self.vae.downsample, w * self.vae.downsample

    def encode_for_edit(self, images: torch.Tensor) -> torch.Tensor:
        """The posterior mean (x latent_scale): the latents the known positions are held at."""
        return self.vae.encode(images.to(self.generator.mask.device), sample=False)

    def forcing_for_window(self, maps, tokens) -> KnownTokens:
        """Known latent cells (B, h, w) + encoded latents (B, C, h, w) -> the sampler's forcing, in entity order
        (scale entities: a coarse token is known when every cell it averages is; EntityLayout.known_positions)."""
        lay = self.xar.layout
        return KnownTokens(lay.known_positions(maps.to(tokens.device)), lay.to_sequence(tokens))

    @torch.inference_mode()
    def sample_with_forcing(self, labels, forcing, generator, guidance_scale: float | None = None,
                            num_steps: int | None = None, method: str | None = None,
                            guidance_schedule: str | None = None, edit_strategy: str | None = None,
                            edit_candidates: int | None = None):
        """Flow sampling entity by entity with optional known latents (sampling.flow: held on their path, exact
        at the end; edit_strategy="fresh": the best fitting of `edit_candidates` plain samples, editing.py)
        -> (latents (B, C, h, w), images in [0, 1]). A None label is the null class (unconditional).
        Labels and guidance come checked (`check_request`, at the caller's boundary)."""
        pick = self.setting
        cfg = pick(guidance_scale, "guidance_scale")
        steps, method, schedule = pick(num_steps, "num_steps"), pick(method, "method"), \
            pick(guidance_schedule, "guidance_schedule")
        check_flow_args(steps, method, cfg, schedule)  # before any work
        strategy = pick(edit_strategy, "edit_strategy")
        if strategy not in XAR_EDIT_STRATEGIES:
            raise ConfigError(f"unknown edit_strategy {strategy!r}; xAR takes {', '.join(XAR_EDIT_STRATEGIES)}")
        if forcing is not None and strategy == "fresh":
            return self.fresh_edit(labels, forcing, generator, pick(edit_candidates, "edit_candidates"),
                                   guidance_scale=cfg, num_steps=steps, method=method, guidance_schedule=schedule)
        device = self.generator.mask.device
        rows = torch.tensor([self.xar.num_classes if c is None else c for c in labels], device=device)
        latents = sample_flow(self.generator, rows, num_steps=steps, guidance_scale=cfg, method=method,
                              guidance_schedule=schedule, generator=generator, forcing=forcing)
        return latents, ((self.tokenizer.decode(latents) + 1) / 2).clamp(0, 1)

    def forcing_sequence(self, latents: torch.Tensor) -> torch.Tensor:
        return self.xar.layout.to_sequence(latents)  # (B, C, h, w) -> (B, L, C) in entity order

    def tokens_from_sequence(self, seq: torch.Tensor) -> torch.Tensor:
        return self.xar.layout.from_sequence(seq)

    @classmethod
    def from_official(cls, preset: str, vae_path: str, checkpoint_path: str, device: str = "cpu"):
        """An official release: MAR's `kl16.ckpt` + `xAR-{B,L,H}.pth`, loaded strictly as they are."""
        from ..models.next_x import XAR
        from ..tokenizers.kl import KLVAE

        xar = XAR.from_official_checkpoint(checkpoint_path, preset=preset)
        vae = KLVAE.from_official_checkpoint(vae_path)
        return cls(vae, xar, defaults=OFFICIAL_SAMPLING.get(preset)).to(device)
