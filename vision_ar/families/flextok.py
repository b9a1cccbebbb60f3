"""Family "flextok": FlexTok's 1D token sequences of flexible length + the next-token GPT over them.

Tokenizer `tokenizers/flextok.py` (official checkpoints from their own metadata; the `flextok-fmnist` preset),
its training task `train/flextok_task.FlexTokTask`, generator the LlamaGen-style GPT of `models/next_token.py` with
1D positions (`token_shape=(N,)`), samplers the plain KV-cached loop and SJD (`sampling/`), pipeline
`pipelines/flextok.py` (any number of tokens 1..N, then the rectified-flow decoder).

The GPT presets of this family are sized here for FlexTok's token sequences (vocabulary, length and positions are
set from the tokenizer by `size_generator` anyway): `gpt-flextok-fmnist`, and `flextok-d12-d12` /
`flextok-d18-d18` / `flextok-d18-d28`, GPT-L-sized class-conditional generators for the official tokenizers
(no FlexTok generator weights are published: train one on the tokens of the official tokenizer).
"""
from __future__ import annotations

from ..errors import ConfigError
from ..family import Family, Flag, Official, SamplingConvention, register_family
from ..models.next_token import GPT, GPTConfig
from ..pipelines.flextok import FlexTokPipeline
from ..registry import register_preset
from ..tokenizers.flextok import FlexTok
from ..train.flextok_task import FlexTokLossConfig, FlexTokTask
from ..train.generator_tasks import NextTokenTask

# official tokenizer presets -> (encoder depth, decoder depth) of the released model they expect
OFFICIAL_TOKENIZERS = {"flextok-d12-d12": (12, 12), "flextok-d18-d18": (18, 18), "flextok-d18-d28": (18, 28)}


# ----------------------------------------------------------------------------------------------------
# Generator presets (GPTs over a 1D FlexTok sequence)
# ----------------------------------------------------------------------------------------------------
@register_preset("gpt-flextok-fmnist", family="flextok-gpt",
                 description="small LlamaGen-style GPT over the 32 1D tokens of flextok-fmnist (10 classes, 1D RoPE)")
def gpt_flextok_fmnist(**overrides) -> GPT:
    cfg = dict(dim=192, n_layer=6, n_head=3, multiple_of=64, vocab_size=1000, num_classes=10, cls_token_num=1,
               block_size=32, token_shape=(32,), token_dropout_p=0.0, resid_dropout_p=0.0, ffn_dropout_p=0.0,
               class_dropout_prob=0.1)
    return GPT(GPTConfig(**{**cfg, **overrides}))


def _official_gpt(name: str):
    enc, dec = OFFICIAL_TOKENIZERS[name]

    @register_preset(name, family="flextok-gpt",
                     description=f"GPT-L-sized class-conditional GPT over the 256 tokens of the official FlexTok "
                                 f"d{enc}-d{dec} (ImageNet, 1D RoPE); --tokenizer the official folder (no FlexTok "
                                 f"generator weights are published: train this one)")
    def build(**overrides) -> GPT:
        cfg = dict(dim=1024, n_layer=24, n_head=16, vocab_size=64000, num_classes=1000, cls_token_num=1,
                   block_size=256, token_shape=(256,), class_dropout_prob=0.1)
        return GPT(GPTConfig(**{**cfg, **overrides}))

    return build


for _name in OFFICIAL_TOKENIZERS:
    _official_gpt(_name)


# ----------------------------------------------------------------------------------------------------
# The declaration's parts
# ----------------------------------------------------------------------------------------------------
def size_gpt_1d(tokenizer: FlexTok, layout) -> dict:
    """Vocabulary = the FSQ codebook; length and 1D positions = the N registers."""
    if layout.kind != "sequence" or layout.dtype != "int":
        raise ConfigError(f"family flextok: the GPT models FlexTok's 1D code sequence, got a {layout.describe()}")
    return {"vocab_size": tokenizer.codebook_size, "block_size": layout.num_tokens,
            "token_shape": (layout.num_tokens,)}


def flextok_tokenizer_task(tokenizer: FlexTok, loss_cfg) -> FlexTokTask:
    """`vision-ar train tokenizer` for FlexTok: the rectified-flow task; REPA options come as --loss-set K=V."""
    if loss_cfg.lpips_weight or loss_cfg.disc_weight:
        raise ConfigError("family flextok: the FlexTok decoder trains with the rectified-flow loss; --lpips-weight "
                          "and --disc-weight apply to VQ tokenizers, drop them")
    options = dict(loss_cfg.family_options)
    known = set(FlexTokLossConfig.__dataclass_fields__)
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(f"family flextok: unknown --loss-set option(s) {unknown}; known: {sorted(known)}")
    return FlexTokTask(tokenizer, FlexTokLossConfig(**options), decoder_only=loss_cfg.decoder_only)


def load_official_tokenizer(preset: str, folder: str, vae_folder: str | None = None, device: str = "cpu") -> FlexTok:
    """The official FlexTok of `preset` from a local Hub folder; its encoder/decoder depths must be the preset's."""
    tok = FlexTok.from_pretrained(folder, vae_folder=vae_folder)
    want = OFFICIAL_TOKENIZERS.get(preset)
    have = (tok.spec.encoder.vit.depth, tok.spec.decoder.vit.depth)
    if want is not None and have != want:
        match = [p for p, depths in OFFICIAL_TOKENIZERS.items() if depths == have]
        fix = f"pass --model {match[0]}" if match else \
            f"the released ones are {', '.join(OFFICIAL_TOKENIZERS)}: pass the folder of one of them"
        raise ConfigError(f"{folder} holds a FlexTok d{have[0]}-d{have[1]}, but {preset} is for the d{want[0]}-"
                          f"d{want[1]} release; {fix}")
    return tok.to(device)


def _load_official(preset: str, paths: dict, device: str) -> FlexTokPipeline:
    return FlexTokPipeline.from_official(preset, paths["tokenizer"], paths["checkpoint"], device, paths.get("vae"))


def _load_official_tokenizer(preset: str, paths: dict, device: str) -> FlexTok:
    if not paths.get("tokenizer"):
        raise ConfigError(f"{preset}: pass --tokenizer FOLDER (a local copy of the EPFL-VILAB/flextok_* Hub "
                          f"repository; nothing is downloaded)")
    return load_official_tokenizer(preset, paths["tokenizer"], paths.get("vae"), device)


FAMILY = register_family(Family(
    name="flextok",
    description="FlexTok: 1D token sequences of flexible length (1..N tokens, coarse to fine) + next-token GPT",
    tokenizer_classes=(FlexTok,),
    generator_class=GPT,
    pipeline_class=FlexTokPipeline,
    tokenizer_presets="flextok-tokenizer",
    generator_presets="flextok-gpt",
    size_generator=size_gpt_1d,
    generator_task=lambda generator, tokenizer: NextTokenTask(generator),
    tokenizer_task=flextok_tokenizer_task,
    sampling=SamplingConvention(
        samplers=("loop", "sjd"),
        guidance="GPT: uncond + (cond - uncond) * scale (1 = no guidance); the decoder has its own CFG / APG "
                 "(--decode-cfg, --decode-apg)",
        no_guidance=1.0, filters="LlamaGen's temperature / top-k / top-p (top_k = 0, top_p = 1 off)"),
    cli_flags=(Flag("--num-tokens", "FlexTok: tokens drawn and decoded per image (1..N; default N)", to="call",
                    type=int),
               Flag("--decode-steps", "FlexTok: rectified-flow steps of the decoder", to="call", type=int),
               Flag("--decode-cfg", "FlexTok: decoder guidance scale, or a schedule in t such as '1+6.5*t'",
                    to="call", kwarg="decode_guidance"),
               Flag("--decode-apg", "FlexTok: adaptive projected guidance in the decoder (on / off)", to="call"),
               Flag("--sjd-window", "SJD window length", to="call", type=int, sampler="sjd"),
               Flag("--sjd-init", "SJD draft initialisation", to="call", sampler="sjd"),
               Flag("--tokenizer", "official FlexTok folder (a local EPFL-VILAB/flextok_* repository)", to="load"),
               Flag("--checkpoint", "official generator checkpoint (with a preset)", to="load"),
               Flag("--vae", "official VAE (VAR VQ-VAE .pth, MAR kl16.ckpt, or the FlexTok VAE folder EPFL-VILAB/"
                    "flextok_vae_c16 when it is not inside --tokenizer)",
                    to="load")),
    official=Official(paths=("tokenizer", "checkpoint"), optional=("vae",),
                      files="FlexTok tokenizer folder (a local EPFL-VILAB/flextok_d*_* repository) and a GPT "
                            "folder trained on its tokens",
                      load=_load_official, load_tokenizer=_load_official_tokenizer),
    # scripts/train_fmnist_flextok.sh (tests/test_shipped_models.py requires every declared shipped model present)
    shipped={"fmnist-flextok": "fmnist_flextok"},
))
