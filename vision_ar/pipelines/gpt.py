"""GPTPipeline: 2D VQ tokenizer + next-token GPT + a token sampler (the plain KV-cached loop, or SJD)."""
from __future__ import annotations

import time
import torch

from ..errors import ConfigError
from .base import Pipeline, PipelineOutput, check_class_labels, check_guidance, to_output_type

SAMPLERS = ("default", "loop", "sjd")


class GPTPipeline(Pipeline):
    family = "next-token"
    tokenizer_class = "vision_ar.tokenizers.vq.VQModel"
    generator_class = "vision_ar.models.next_token.GPT"

    def default_settings(self) -> dict:
        # LlamaGen's CFG convention: uncond + (cond - uncond) * scale, so 1.0 means no guidance.
        # edit_candidates: raster passes per image when editing (generate_infill's importance resampling)
        return {"guidance_scale": 2.0, "top_k": 0, "top_p": 1.0, "temperature": 1.0,
                "sampler": "loop", "sjd_window": 16, "sjd_init": "random", "edit_candidates": 8}

    @property
    def vq(self):
        return self.tokenizer

    @property
    def gpt(self):
        return self.generator

    @torch.inference_mode()
    def __call__(self, class_labels, guidance_scale: float | None = None, generator: torch.Generator | None = None,
                 top_k: int | None = None, top_p: float | None = None, temperature: float | None = None,
                 sampler: str | None = None, sjd_window: int | None = None, sjd_init: str | None = None,
                 output_type: str = "pil") -> PipelineOutput:
        from ..sampling.jacobi import sjd_generate
        from ..sampling.token_loop import generate

        pick = self.setting
        sampler = pick(None if sampler == "default" else sampler, "sampler")
        if sampler not in SAMPLERS:
            raise ConfigError(f"unknown sampler {sampler!r}; choose 'loop' (plain KV-cached loop) or 'sjd'")
        labels = check_class_labels(class_labels, self.num_classes)
        device = next(self.gpt.parameters()).device
        cond = torch.tensor(labels, dtype=torch.long, device=device)
        settings = dict(cfg_scale=check_guidance(pick(guidance_scale, "guidance_scale")),
                        temperature=pick(temperature, "temperature"), top_k=pick(top_k, "top_k"),
                        top_p=pick(top_p, "top_p"), generator=generator)
        n = self.gpt.config.block_size
        t0 = time.perf_counter()
        if sampler == "sjd":
            tokens, st = sjd_generate(self.gpt, cond, n, window_length=pick(sjd_window, "sjd_window"),
                                      init=pick(sjd_init, "sjd_init"), return_stats=True, **settings)
            stats = st.summary()
        else:
            tokens = generate(self.gpt, cond, n, **settings)
            stats = {"forward_passes": n}
        images = self.vq.decode(tokens.view(len(labels), *self._grid()))
        stats["seconds"] = time.perf_counter() - t0
        images01 = (images.float() + 1) / 2
        return PipelineOutput(images=to_output_type(images01.clamp(0, 1), output_type), tokens=tokens,
                              labels=labels, stats=stats)

    def _grid(self) -> tuple[int, int]:
        """(rows, cols) of the token grid the generator draws (raster order)."""
        side = self.gpt.config.grid_size
        return side, side

    # ---- editing (pipelines/editing.py): known tokens forced in raster order ------------------------------
    edit_methods = ("inpaint", "outpaint", "edit")

    def edit_defaults(self, method: str) -> dict:
        # Class edits: the kept region is evidence of the OLD class, so weighting passes by it pulls the edit back
        # (Fashion-MNIST, 100 centre edits at CFG 7: 35% new class with one pass, 29% with 8); one pass.
        return {"edit_candidates": 1} if method == "edit" else {}

    def edit_image_size(self) -> tuple[int, int]:
        rows, cols = self._grid()
        return rows * self.vq.downsample, cols * self.vq.downsample

    def encode_for_edit(self, images: torch.Tensor) -> torch.Tensor:
        return self.vq.encode(images.to(next(self.vq.parameters()).device))  # (B, rows, cols)

    @torch.inference_mode()
    def sample_with_forcing(self, labels, forcing, generator, guidance_scale: float | None = None,
                            top_k: int | None = None, top_p: float | None = None, temperature: float | None = None,
                            edit_candidates: int | None = None):
        """The plain loop with known tokens kept in raster order; unknown tokens that precede known ones are
        chosen by importance resampling over `edit_candidates` passes (sampling.token_loop.generate_infill).
        A None label is the null class (unconditional)."""
        from ..sampling.token_loop import generate, generate_infill

        pick = self.setting
        if None in labels and not self.gpt.cls_embedding.has_null_class:
            raise ConfigError("this GPT has no null class (trained with class_dropout_prob=0), so it cannot edit "
                              "unconditionally; give a class label")
        device = next(self.gpt.parameters()).device
        cond = torch.tensor([self.num_classes if c is None else c for c in labels], dtype=torch.long, device=device)
        settings = dict(cfg_scale=check_guidance(pick(guidance_scale, "guidance_scale")),
                        temperature=pick(temperature, "temperature"), top_k=pick(top_k, "top_k"),
                        top_p=pick(top_p, "top_p"), generator=generator, allow_null=None in labels)
        rows, cols = self._grid()
        if forcing is None:
            tokens = generate(self.gpt, cond, rows * cols, **settings)
        else:
            tokens = generate_infill(self.gpt, cond, forcing, candidates=pick(edit_candidates, "edit_candidates"),
                                     **settings)
        images = self.vq.decode(tokens.view(len(labels), rows, cols))
        return tokens, ((images.float() + 1) / 2).clamp(0, 1)

    @classmethod
    def from_official(cls, preset: str, vq_path: str, checkpoint_path: str, device: str = "cpu"):
        """An official LlamaGen release: `vq_ds16_c2i.pt` + `c2i_{B,L,XL,XXL,3B}_{256,384}.pt`."""
        from ..models.next_token import GPT
        from ..tokenizers.vq import VQModel

        gpt = GPT.from_official(checkpoint_path, preset)
        vq = VQModel.from_official(vq_path, "vq-16")
        return cls(vq, gpt, {"guidance_scale": 2.0}).to(device)
