"""Family "next-token": a LlamaGen-style GPT over the codes of a 2D VQ tokenizer (any grid, or a 1D sequence).

Tokenizer `tokenizers/vq.py`, generator `models/next_token.py` (presets in both), samplers
`sampling/token_loop.py` (plain KV-cached loop) and `sampling/jacobi.py` (SJD), pipeline `pipelines/gpt.py`,
training task `train/generator_tasks.NextTokenTask`.
"""
from __future__ import annotations

from ..errors import ConfigError
from ..family import Family, Flag, Official, SamplingConvention, register_family
from ..models.next_token import GPT
from ..pipelines.gpt import GPTPipeline
from ..tokenizers.vq import VQModel
from ..train.generator_tasks import NextTokenTask


def size_gpt(tokenizer: VQModel, layout) -> dict:
    """Vocabulary from the codebook; length and positions from the layout (a square grid is the official
    default `token_shape=()`; another grid or a 1D sequence is written out)."""
    if layout.kind not in ("grid", "sequence") or layout.dtype != "int":
        raise ConfigError(f"family next-token: the GPT models integer codes on a grid or a 1D sequence, got a "
                          f"{layout.describe()}; use a tokenizer that makes codes")
    square = layout.kind == "grid" and layout.shape[0] == layout.shape[1]
    return {"vocab_size": tokenizer.codebook_size, "block_size": layout.num_tokens,
            "token_shape": () if square else tuple(layout.shape)}


def load_official(preset: str, paths: dict, device: str) -> GPTPipeline:
    return GPTPipeline.from_official(preset, paths["vq"], paths["checkpoint"], device)


FAMILY = register_family(Family(
    name="next-token",
    description="LlamaGen-style GPT: next-token prediction over 2D VQ codes (raster order)",
    tokenizer_classes=(VQModel,),
    generator_class=GPT,
    pipeline_class=GPTPipeline,
    tokenizer_presets="vq-tokenizer",
    generator_presets="next-token",
    size_generator=size_gpt,
    generator_task=lambda generator, tokenizer: NextTokenTask(generator),
    sampling=SamplingConvention(
        samplers=("loop", "sjd"),
        guidance="uncond + (cond - uncond) * scale (1 = no guidance)",
        no_guidance=1.0, filters="LlamaGen's temperature / top-k / top-p (top_k = 0, top_p = 1 off)"),
    cli_flags=(Flag("--vq", "official LlamaGen VQ checkpoint (with a gpt-* preset)", to="load"),
               Flag("--checkpoint", "official generator checkpoint (with a preset)", to="load"),
               Flag("--sjd-window", "SJD window length", to="call", type=int, sampler="sjd"),
               Flag("--sjd-init", "SJD draft initialisation", to="call", sampler="sjd")),
    official=Official(paths=("vq", "checkpoint"), files="vq_ds16_c2i.pt and c2i_*.pt files", load=load_official),
    shipped={"fmnist-gpt": "fmnist_gpt"},
))
