"""FlexTokPipeline: FlexTok tokenizer + the next-token GPT over its 1D token sequence.

The GPT draws the first `num_tokens` tokens (any K in 1..N: FlexTok's prefixes are complete descriptions, coarse
to fine) with the plain KV-cached loop or SJD, exactly as for a 2D VQ grid but with 1D positions; the FlexTok
decoder then turns that prefix into an image with its rectified flow (decode_steps Euler steps, decode_guidance
as CFG or APG). Fewer tokens = fewer GPT steps and a coarser, more generic image.

    pipe = load_pipeline("fmnist-flextok")
    pipe(class_labels=[0, 7], num_tokens=8, guidance_scale=3.0, generator=torch.Generator().manual_seed(0))
"""
from __future__ import annotations

import time

import torch

from ..errors import ConfigError
from .base import PipelineOutput, to_output_type
from .gpt import GPTPipeline


class FlexTokPipeline(GPTPipeline):
    def default_settings(self) -> dict:
        dd = self.tokenizer.decode_defaults
        guidance = dd["guidance_scale"]
        return {**super().default_settings(), "num_tokens": self.tokenizer.n_registers,
                "decode_steps": int(dd["steps"]),
                "decode_guidance": float(guidance) if not callable(guidance) else 1.0,
                "decode_apg": bool(dd["apg"])}

    def check_num_tokens(self, num_tokens) -> int:
        n = self.gpt.token_layout.num_tokens
        if isinstance(num_tokens, bool) or not isinstance(num_tokens, int) or not 1 <= num_tokens <= n:
            raise ConfigError(f"num_tokens must be an integer in 1..{n} (this FlexTok's N), got {num_tokens!r}")
        return num_tokens

    def decode_settings(self, decode_steps=None, decode_guidance=None, decode_apg=None) -> dict:
        from ..sampling.rectified_flow import parse_guidance
        from ..tokenizers.flextok import parse_switch

        guidance = self.setting(decode_guidance, "decode_guidance")
        return {"steps": self.setting(decode_steps, "decode_steps"), "guidance_scale": parse_guidance(guidance),
                "apg": parse_switch(self.setting(decode_apg, "decode_apg"))}

    @torch.inference_mode()
    def __call__(self, class_labels, guidance_scale: float | None = None, generator: torch.Generator | None = None,
                 top_k: int | None = None, top_p: float | None = None, temperature: float | None = None,
                 sampler: str | None = None, sjd_window: int | None = None, sjd_init: str | None = None,
                 num_tokens: int | None = None, decode_steps: int | None = None, decode_guidance=None,
                 decode_apg=None, output_type: str = "pil") -> PipelineOutput:
        labels, cfg_scale = self.check_request(class_labels, self.setting(guidance_scale, "guidance_scale"))
        k = self.check_num_tokens(self.setting(num_tokens, "num_tokens"))
        decoding = self.decode_settings(decode_steps, decode_guidance, decode_apg)
        if sjd_window is None:  # SJD's default window, but never longer than the K tokens drawn
            sjd_window = min(self.setting(None, "sjd_window"), k)
        t0 = time.perf_counter()
        tokens, stats = self.draw_tokens(labels, k, cfg_scale, generator, top_k, top_p, temperature, sampler,
                                         sjd_window, sjd_init)
        stats["gpt_seconds"] = time.perf_counter() - t0
        # the flow noise comes from the same generator, after the tokens: one seed fixes the whole image
        images = self.tokenizer.decode(tokens, generator=generator, **decoding)
        stats.update({"num_tokens": k, "decode_steps": decoding["steps"], "seconds": time.perf_counter() - t0})
        images01 = (images.float() + 1) / 2
        return PipelineOutput(images=to_output_type(images01.clamp(0, 1), output_type), tokens=tokens,
                              labels=labels, stats=stats)

    @classmethod
    def from_official(cls, preset: str, tokenizer_folder: str, checkpoint: str, device: str = "cpu",
                      vae_folder: str | None = None):
        """An official FlexTok tokenizer (a local copy of an EPFL-VILAB/flextok_* Hub repository) and a GPT
        trained on its tokens with `vision-ar train generator --model PRESET --tokenizer FOLDER` (its
        OUT/final folder): no FlexTok generator weights are published."""
        from ..families.flextok import load_official_tokenizer
        from ..models.next_token import GPT
        from ..errors import MissingFileError
        from pathlib import Path

        tok = load_official_tokenizer(preset, tokenizer_folder, vae_folder)
        if not (Path(checkpoint) / "config.json").is_file():
            raise MissingFileError(
                f"--checkpoint {checkpoint}: expected a GPT folder (config.json + model.safetensors) trained on this "
                f"tokenizer's tokens; no official FlexTok generator is published, so train one: vision-ar train "
                f"generator --model {preset} --tokenizer {tokenizer_folder} --data IMAGENET_DIR --out RUN, then "
                f"pass --checkpoint RUN/final")
        return cls(tok, GPT.from_pretrained(checkpoint)).to(device)
