"""GPTPipeline: VQ tokenizer + next-token GPT + a token sampler (the plain KV-cached loop, or SJD).

The GPT's token layout (a 2D grid or a 1D sequence, `GPT.token_layout`) says how its drawn tokens are
shaped for the tokenizer and how many tokens make an image row for SJD's vertical draft initialisation."""
from __future__ import annotations

import time
import torch

from ..errors import ConfigError
from .base import Pipeline, PipelineOutput, to_output_type

SAMPLERS = ("default", "loop", "sjd")  # 'loop' is the default's name inside pipeline.json


def sjd_row_width(layout, init: str) -> int:
    """Tokens per image row for SJD's draft initialisation: a grid's width; a 1D sequence is one long row,
    which the vertical init (the token one row above) cannot use."""
    if layout.kind == "sequence":
        if init == "vertical":
            raise ConfigError(f"SJD's vertical draft initialisation copies the token one image row above, but this "
                              f"model's tokens are a 1D sequence ({layout.describe()}) with no rows; use "
                              f"--sjd-init random, horizontal or horizontal-argmax")
        return layout.num_tokens
    return layout.grid_width


class GPTPipeline(Pipeline):
    def default_settings(self) -> dict:
        # LlamaGen's CFG convention: uncond + (cond - uncond) * scale, so 1.0 means no guidance.
        # edit_candidates: raster passes per image when editing, edit_strategy how one is chosen
        # (sampling.token_loop.generate_infill: "passes" by weight at the end, "particles" resampled at the known
        # tokens; the same in-painting accuracy on Fashion-MNIST at 8 candidates, passes cheaper: docs/editing.md)
        return {"guidance_scale": 2.0, "top_k": 0, "top_p": 1.0, "temperature": 1.0,
                "sampler": "loop", "sjd_window": 16, "sjd_init": "random", "edit_candidates": 8,
                "edit_strategy": "passes"}

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
        labels, cfg_scale = self.check_request(class_labels, self.setting(guidance_scale, "guidance_scale"))
        layout = self.gpt.token_layout
        t0 = time.perf_counter()
        tokens, stats = self.draw_tokens(labels, layout.num_tokens, cfg_scale, generator, top_k, top_p, temperature,
                                         sampler, sjd_window, sjd_init)
        images = self.tokenizer.decode(layout.unflatten(tokens))
        stats["seconds"] = time.perf_counter() - t0
        images01 = (images.float() + 1) / 2
        return PipelineOutput(images=to_output_type(images01.clamp(0, 1), output_type), tokens=tokens,
                              labels=labels, stats=stats)

    def draw_tokens(self, labels: list[int], n: int, cfg_scale: float, generator=None, top_k=None, top_p=None,
                    temperature=None, sampler=None, sjd_window=None, sjd_init=None) -> tuple[torch.Tensor, dict]:
        """The first `n` tokens (B, n) of each image of `labels`, drawn by the chosen sampler, and its stats
        (settings left as None take the pipeline's defaults)."""
        from ..sampling.jacobi import sjd_generate
        from ..sampling.token_loop import generate

        pick = self.setting
        sampler = pick(None if sampler == "default" else sampler, "sampler")
        if sampler not in SAMPLERS:
            raise ConfigError(f"unknown sampler {sampler!r}; choose 'default' (the plain KV-cached loop) or 'sjd' "
                              f"(Speculative Jacobi Decoding)")
        device = next(self.gpt.parameters()).device
        cond = torch.tensor(labels, dtype=torch.long, device=device)
        settings = dict(cfg_scale=cfg_scale,
                        temperature=pick(temperature, "temperature"), top_k=pick(top_k, "top_k"),
                        top_p=pick(top_p, "top_p"), generator=generator)
        if sampler == "sjd":
            init = pick(sjd_init, "sjd_init")
            tokens, st = sjd_generate(self.gpt, cond, n, window_length=pick(sjd_window, "sjd_window"), init=init,
                                      grid_width=min(sjd_row_width(self.gpt.token_layout, init), n),
                                      return_stats=True,
                                      **settings)
            return tokens, st.summary()
        return generate(self.gpt, cond, n, **settings), {"forward_passes": n}

    # ---- editing (pipelines/editing.py): known tokens forced in raster order ------------------------------

    def edit_defaults(self, method: str) -> dict:
        # Class edits: the kept ring is drawn before most of the region in raster order and carries the OLD
        # silhouette, so forced passes redraw the old class (Fashion-MNIST centre edits, N = 500, CFG 1.5: 9.8% new
        # class; 25.8% at CFG 7). A fresh sample of the new class whose border fits the ring best, 8 drawn, rendered
        # from the sample (the input's known pixels put back): 74.8% (benchmarks/edit_quality.py, docs/editing.md).
        return {"edit_candidates": 8, "edit_strategy": "fresh"} if method == "edit" else {}

    def edit_image_size(self) -> tuple[int, int]:
        layout = self.gpt.token_layout
        if layout.kind != "grid":
            raise ConfigError(f"this GPT models a 1D token sequence ({layout.describe()}): its tokens have no "
                              f"place in the image, so a pixel mask cannot say which are known")
        rows, cols = layout.shape
        return rows * self.vq.downsample, cols * self.vq.downsample

    def encode_for_edit(self, images: torch.Tensor) -> torch.Tensor:
        return self.vq.encode(images.to(next(self.vq.parameters()).device))  # (B, rows, cols)

    @torch.inference_mode()
    def sample_with_forcing(self, labels, forcing, generator, guidance_scale: float | None = None,
                            top_k: int | None = None, top_p: float | None = None, temperature: float | None = None,
                            edit_candidates: int | None = None, edit_strategy: str | None = None):
        """The plain loop with known tokens kept in raster order; unknown tokens that precede known ones are
        chosen among `edit_candidates` passes, by a particle filter over the known tokens (`edit_strategy=
        "particles"`) or by weighting whole passes ("passes"); sampling.token_loop.generate_infill.
        A None label is the null class (unconditional)."""
        from ..sampling.token_loop import generate, generate_infill

        pick = self.setting
        if None in labels and not self.gpt.cls_embedding.has_null_class:
            raise ConfigError("this GPT has no null class (trained with class_dropout_prob=0), so it cannot edit "
                              "unconditionally; give a class label")
        device = next(self.gpt.parameters()).device
        cond = torch.tensor([self.num_classes if c is None else c for c in labels], dtype=torch.long, device=device)
        settings = dict(cfg_scale=pick(guidance_scale, "guidance_scale"),
                        temperature=pick(temperature, "temperature"), top_k=pick(top_k, "top_k"),
                        top_p=pick(top_p, "top_p"), generator=generator, allow_null=None in labels)
        layout = self.gpt.token_layout
        strategy = pick(edit_strategy, "edit_strategy")
        from ..sampling.token_loop import EDIT_STRATEGIES

        if strategy not in EDIT_STRATEGIES + ("fresh",):
            raise ConfigError(f"unknown edit_strategy {strategy!r}; the GPT takes "
                              f"{', '.join(EDIT_STRATEGIES + ('fresh',))}")
        if forcing is not None and strategy == "fresh":  # editing.py: plain samples, the best fit kept
            return self.fresh_edit(labels, forcing, generator, pick(edit_candidates, "edit_candidates"),
                                   guidance_scale=guidance_scale, top_k=top_k, top_p=top_p, temperature=temperature)
        if forcing is None:
            tokens = generate(self.gpt, cond, layout.num_tokens, **settings)
        else:
            tokens = generate_infill(self.gpt, cond, forcing, candidates=pick(edit_candidates, "edit_candidates"),
                                     strategy=strategy, **settings)
        images = self.tokenizer.decode(layout.unflatten(tokens))
        return tokens, ((images.float() + 1) / 2).clamp(0, 1)

    def forcing_sequence(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens  # sample_with_forcing returns (B, N) codes in raster order, the forcing's layout

    def token_vectors(self, seq: torch.Tensor) -> torch.Tensor:
        quantize = getattr(self.tokenizer, "quantize", None)
        if not hasattr(quantize, "codebook"):
            raise ConfigError(f"edit_strategy='fresh' compares code vectors, and this tokenizer "
                              f"({type(self.tokenizer).__name__}) has no codebook; use 'passes'")
        return quantize.codebook()[seq]

    @classmethod
    def from_official(cls, preset: str, vq_path: str, checkpoint_path: str, device: str = "cpu"):
        """An official LlamaGen release: `vq_ds16_c2i.pt` + `c2i_{B,L,XL,XXL,3B}_{256,384}.pt`."""
        from ..models.next_token import GPT
        from ..tokenizers.vq import VQModel

        gpt = GPT.from_official(checkpoint_path, preset)
        vq = VQModel.from_official(vq_path, "vq-16")
        return cls(vq, gpt, {"guidance_scale": 2.0}).to(device)
