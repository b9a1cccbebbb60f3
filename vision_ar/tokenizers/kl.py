"""Continuous KL-VAE tokenizer, compatible with MAR's KL-16 (`kl16.ckpt`, used by MAR and xAR).

    images (B,3,H,W) in [-1,1]
      └─ encoder ─ quant_conv ─▶ moments (B,2C,H/f,W/f) = [mean | logvar]     (DiagonalGaussian posterior)
           └─ mean (or a sample) x latent_scale ─▶ tokens: latent map (B,C,H/f,W/f), float
                └─ / latent_scale ─ post_quant_conv ─ decoder ─▶ images

KL-16: C = 16 latent channels, f = 16 (ch_mult of 5 levels), latent_scale = 0.2325 (MAR normalises the latent
std to ~1 with this constant: `posterior.sample().mul_(0.2325)` for training, `decode(tokens / 0.2325)` for
sampling).

Why diffusers' `AutoencoderKL`: MAR's `models/vae.py` is the latent-diffusion KL autoencoder, and diffusers'
AutoencoderKL is that same network, layer for layer: GroupNorm(32, eps 1e-6) + SiLU ResNet blocks with a 1x1
skip conv when the width changes, single-head spatial attention (softmax(q k^T / sqrt(C)) v, residual), the
stride-2 downsampling conv after an asymmetric (0,1,0,1) zero pad, nearest 2x upsampling + 3x3 conv,
num_res_blocks (encoder) / num_res_blocks + 1 (decoder) blocks per level, a mid block (ResNet, attention,
ResNet), and 1x1 quant_conv (2C -> 2C) / post_quant_conv (C -> C). MAR puts encoder attention after every block
of the level whose resolution is in `attn_resolutions` (the last, stride-16 level of KL-16): that is diffusers'
`AttnDownEncoderBlock2D`; the decoder has attention only in its mid block, as diffusers' decoder. The
project's own conv body (`nn/conv_blocks.py`) would need a second attention layout (separate q/k/v convs) and a
second key map to do the same, so the field library's module is used (DESIGN.md: use it where it exists) and
only the key names differ. `official_to_diffusers_key` / `diffusers_to_official_key` convert them (the
attention's 1x1 convs become diffusers' linear layers by dropping the two unit dims).

Not supported: MAR's `use_variational=False` (a C-channel quant_conv and a constant logvar of 1), which no
released checkpoint uses and diffusers' module cannot express.

The posterior is diffusers' `DiagonalGaussianDistribution`, which computes what MAR's does: logvar clamped to
[-30, 20], std = exp(logvar / 2), sample = mean + std * N(0, 1) (drawn from the `generator` given, or from the
global RNG like the official `torch.randn(mean.shape)`), KL to N(0, I) summed over C, H, W, mode = mean.

Official checkpoint: `KLVAE.from_official_checkpoint("kl16.ckpt")` (its `['model']` state_dict, strict).
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import CheckpointError, ConfigError
from ..io import PretrainedMixin, load_checkpoint, mismatch_lines, unwrap_state_dict
from ..registry import register_preset
from ..tokens import TokenLayout, image_hw

MAR_LATENT_SCALE = 0.2325  # engine_xar.py / MAR: normalises the KL-16 latent std to about 1


# ----------------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------------
@dataclass
class KLConfig:
    latent_channels: int = 16          # C (official `embed_dim`)
    ch: int = 128                      # base width of the conv body
    ch_mult: tuple = (1, 1, 2, 2, 4)   # one entry per resolution level; downsample = 2**(len-1)
    num_res_blocks: int = 2
    encoder_attn_levels: tuple = (4,)  # levels (0 = full resolution) with attention after every encoder block
    in_channels: int = 3
    norm_groups: int = 32
    latent_scale: float = MAR_LATENT_SCALE
    # training only: the KL term in latent-diffusion's units (KL summed over the latent, per image, against the
    # reconstruction summed over pixels; LDM / MAR KL-16: 1e-6). training_forward divides both by the pixel
    # count so the reconstruction stays a per-pixel mean.
    kl_weight: float = 1e-6

    def __post_init__(self):
        self.ch_mult = tuple(int(m) for m in self.ch_mult)
        self.encoder_attn_levels = tuple(sorted(int(lv) for lv in self.encoder_attn_levels))
        if self.latent_channels < 1 or self.ch < 1 or self.in_channels < 1 or self.num_res_blocks < 1:
            raise ConfigError(f"KLConfig: latent_channels, ch, in_channels and num_res_blocks must be >= 1, got "
                              f"{self.latent_channels}, {self.ch}, {self.in_channels}, {self.num_res_blocks}")
        if not self.ch_mult or any(m < 1 for m in self.ch_mult):
            raise ConfigError(f"KLConfig.ch_mult must be a non-empty tuple of positive ints, got {self.ch_mult}")
        bad = [lv for lv in self.encoder_attn_levels if not 0 <= lv < len(self.ch_mult)]
        if bad:
            raise ConfigError(f"KLConfig.encoder_attn_levels {bad} outside 0..{len(self.ch_mult) - 1} "
                              f"(one level per ch_mult entry)")
        for width in self.widths:
            if width % self.norm_groups:
                raise ConfigError(f"KLConfig: width {width} (ch={self.ch} x ch_mult {self.ch_mult}) is not a "
                                  f"multiple of norm_groups={self.norm_groups} (GroupNorm); change ch.")
        if not self.latent_scale > 0:
            raise ConfigError(f"KLConfig.latent_scale must be > 0, got {self.latent_scale}")
        if not self.kl_weight >= 0:
            raise ConfigError(f"KLConfig.kl_weight must be >= 0, got {self.kl_weight}")

    @property
    def widths(self) -> tuple:
        return tuple(self.ch * m for m in self.ch_mult)

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    @classmethod
    def from_official_kwargs(cls, embed_dim: int, ch_mult, ch: int = 128, num_res_blocks: int = 2,
                             attn_resolutions=(16,), resolution: int = 256, **extra) -> "KLConfig":
        """MAR's `AutoencoderKL(embed_dim, ch_mult)` + its Encoder defaults -> KLConfig.

        The official encoder puts attention at the levels whose nominal resolution (resolution / 2**level)
        is in attn_resolutions."""
        levels = tuple(i for i in range(len(ch_mult)) if resolution // 2 ** i in set(attn_resolutions))
        return cls(latent_channels=embed_dim, ch=ch, ch_mult=tuple(ch_mult), num_res_blocks=num_res_blocks,
                   encoder_attn_levels=levels, **extra)

    def replace(self, **changes) -> "KLConfig":
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise ConfigError(f"unknown KLConfig fields {unknown}; known: {[f.name for f in dataclasses.fields(self)]}")
        return dataclasses.replace(self, **changes)


# ----------------------------------------------------------------------------------------------------
# Official (latent-diffusion / MAR) <-> diffusers key names
# ----------------------------------------------------------------------------------------------------
_RESNET = {"nin_shortcut": "conv_shortcut"}
_ATTN = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}

# One table serves both directions: (official, diffusers) templates of the key after "encoder." / "decoder.".
# Fields: {l} a level, kept; {L} a decoder level, which diffusers stores in execution order (deepest first):
# level x <-> num_levels - 1 - x; {i} a block index, kept; {m} the mid resnet, 1-based officially, 0-based in
# diffusers; {resnet} / {attn} the rest of a ResNet / attention key, whose leaf module is renamed (_RESNET /
# _ATTN); {rest} the rest, kept. Keys no template matches (conv_in, conv_out, quant_conv, ...) keep their names.
_KEY_TEMPLATES = (
    ("down.{l}.block.{i}.{resnet}", "down_blocks.{l}.resnets.{i}.{resnet}"),
    ("down.{l}.attn.{i}.{attn}", "down_blocks.{l}.attentions.{i}.{attn}"),
    ("down.{l}.downsample.{rest}", "down_blocks.{l}.downsamplers.0.{rest}"),
    ("up.{L}.block.{i}.{resnet}", "up_blocks.{L}.resnets.{i}.{resnet}"),
    ("up.{L}.attn.{i}.{attn}", "up_blocks.{L}.attentions.{i}.{attn}"),
    ("up.{L}.upsample.{rest}", "up_blocks.{L}.upsamplers.0.{rest}"),
    ("mid.block_{m}.{resnet}", "mid_block.resnets.{m}.{resnet}"),
    ("mid.attn_1.{attn}", "mid_block.attentions.0.{attn}"),
    ("norm_out.{rest}", "conv_norm_out.{rest}"),
)
_FIELD = re.compile(r"\{(\w+)\}")


def _rename_leaf(rest: str, table: dict) -> str:
    """'q.weight' -> 'to_q.weight' with table {'q': 'to_q'}; longest names first so 'to_out.0' wins."""
    for old in sorted(table, key=len, reverse=True):
        if rest.startswith(old + "."):
            return table[old] + rest[len(old):]
    return rest


def _template_regex(template: str) -> re.Pattern:
    parts = _FIELD.split(template)  # literal, field, literal, field, ...
    return re.compile("".join(re.escape(p) if i % 2 == 0 else
                              (f"(?P<{p}>\\d+)" if p in ("l", "L", "i", "m") else f"(?P<{p}>.*)")
                              for i, p in enumerate(parts)))


# compiled once: (source regex, destination template) per direction
_RULES = {True: [(_template_regex(o), d) for o, d in _KEY_TEMPLATES],
          False: [(_template_regex(d), o) for o, d in _KEY_TEMPLATES]}
_LEAF_TABLES = {("resnet", True): _RESNET, ("attn", True): _ATTN,
                ("resnet", False): {v: k for k, v in _RESNET.items()}, ("attn", False): {v: k for k, v in _ATTN.items()}}


def _convert_field(name: str, value: str, to_diffusers: bool, num_levels: int) -> str:
    if name == "L":
        return str(num_levels - 1 - int(value))
    if name == "m":
        return str(int(value) + (-1 if to_diffusers else 1))
    if name in ("resnet", "attn"):
        return _rename_leaf(value, _LEAF_TABLES[name, to_diffusers])
    return value


def _convert_key(key: str, num_levels: int, to_diffusers: bool) -> str:
    m = re.fullmatch(r"(encoder|decoder)\.(.*)", key)
    if not m:
        return key
    part, rest = m.groups()
    for pattern, dst in _RULES[to_diffusers]:
        mm = pattern.fullmatch(rest)
        if mm:
            fields = {k: _convert_field(k, v, to_diffusers, num_levels) for k, v in mm.groupdict().items()}
            return f"{part}.{dst.format(**fields)}"
    return key


def official_to_diffusers_key(key: str, num_levels: int) -> str:
    """One MAR `AutoencoderKL` key -> the diffusers `AutoencoderKL` key (num_levels = len(ch_mult))."""
    return _convert_key(key, num_levels, to_diffusers=True)


def diffusers_to_official_key(key: str, num_levels: int) -> str:
    """The inverse of `official_to_diffusers_key` (used to name mismatches in the official key scheme)."""
    return _convert_key(key, num_levels, to_diffusers=False)


def _is_attention_projection(diffusers_key: str) -> bool:
    return re.search(r"\.attentions\.\d+\.(to_q|to_k|to_v|to_out\.0)\.weight$", diffusers_key) is not None


# ----------------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------------
class KLVAE(PretrainedMixin, nn.Module):
    """The project's KL tokenizer: `encode(images) -> latents (B,C,h,w)`, `decode(latents) -> images`.

    Latents ("tokens") are normalised: latent = z * latent_scale, the space the xAR generator models.
    `self.autoencoder` is the diffusers `AutoencoderKL` (its own save_pretrained gives a diffusers folder).
    """

    config_class = KLConfig

    def __init__(self, config: KLConfig):
        super().__init__()
        if not isinstance(config, KLConfig):
            raise ConfigError(f"KLVAE takes a KLConfig, got {type(config).__name__}")
        from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL

        self.config = c = config
        attn = set(c.encoder_attn_levels)
        self.autoencoder = AutoencoderKL(
            in_channels=c.in_channels, out_channels=c.in_channels,
            down_block_types=tuple("AttnDownEncoderBlock2D" if i in attn else "DownEncoderBlock2D"
                                   for i in range(len(c.ch_mult))),
            up_block_types=("UpDecoderBlock2D",) * len(c.ch_mult),
            block_out_channels=c.widths, layers_per_block=c.num_res_blocks, act_fn="silu",
            latent_channels=c.latent_channels, norm_num_groups=c.norm_groups, scaling_factor=c.latent_scale,
            mid_block_add_attention=True)

    # ---- layout facts the generator / cache read ---------------------------------------------------
    @property
    def latent_channels(self) -> int:
        return self.config.latent_channels

    @property
    def downsample(self) -> int:
        return self.config.downsample

    @property
    def latent_scale(self) -> float:
        return self.config.latent_scale

    def token_layout(self, image_size) -> TokenLayout:
        """The (C, H/f, W/f) float latent map `encode` makes of images of `image_size` (an int or (H, W))."""
        h, w = image_hw(image_size)
        f = self.downsample
        if h % f or w % f:
            raise ConfigError(f"image size {(h, w)} is not a multiple of the downsampling factor {f}; resize or "
                              f"crop to a multiple of {f}.")
        return TokenLayout.latent(self.config.latent_channels, h // f, w // f)

    def moments_layout(self, image_size) -> TokenLayout:
        """The layout of `encode_moments` (mean and logvar: 2C channels), what the xAR family caches."""
        c, h, w = self.token_layout(image_size).shape
        return TokenLayout.latent(2 * c, h, w)

    # ---- checks ------------------------------------------------------------------------------------
    def _check_images(self, images: torch.Tensor) -> None:
        c, f = self.config, self.downsample
        if not isinstance(images, torch.Tensor) or not images.is_floating_point() or images.ndim != 4 \
                or images.shape[1] != c.in_channels:
            raise ConfigError(f"images must be a float tensor (B, {c.in_channels}, H, W) in [-1, 1], got "
                              f"{getattr(images, 'shape', type(images))} {getattr(images, 'dtype', '')}.")
        if images.shape[2] % f or images.shape[3] % f:
            raise ConfigError(f"image size {tuple(images.shape[2:])} is not a multiple of the downsampling "
                              f"factor {f}; resize or crop to a multiple of {f}.")

    def _check_latents(self, z: torch.Tensor, what: str = "latents") -> None:
        C = self.config.latent_channels
        if not isinstance(z, torch.Tensor) or not z.is_floating_point() or z.ndim != 4 or z.shape[1] != C:
            raise ConfigError(f"{what} must be a float tensor (B, {C}, h, w) ({C} latent channels), got "
                              f"{getattr(z, 'shape', type(z))} {getattr(z, 'dtype', '')}.")

    # ---- encoding ----------------------------------------------------------------------------------
    def encode_moments(self, images: torch.Tensor) -> torch.Tensor:
        """images -> posterior parameters (B, 2C, h, w) = [mean | logvar (not clamped)], what MAR caches."""
        self._check_images(images)
        return self.autoencoder.quant_conv(self.autoencoder.encoder(images))

    @staticmethod
    def posterior_from_moments(moments: torch.Tensor):
        """(B, 2C, h, w) -> diffusers DiagonalGaussianDistribution (logvar clamped to [-30, 20])."""
        from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

        return DiagonalGaussianDistribution(moments)

    def posterior(self, images: torch.Tensor):
        return self.posterior_from_moments(self.encode_moments(images))

    def latents_from_moments(self, moments: torch.Tensor, sample: bool = True,
                             generator: torch.Generator | None = None) -> torch.Tensor:
        """Normalised latents from cached moments: (mean or mean + std * eps) * latent_scale."""
        post = self.posterior_from_moments(moments)
        z = post.sample(generator=generator) if sample else post.mode()
        return z * self.config.latent_scale

    @torch.no_grad()
    def encode(self, images: torch.Tensor, sample: bool = False,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """images (B,3,H,W) in [-1,1] -> normalised latents (B, C, H/f, W/f): the posterior mean (default) or
        a posterior sample, times latent_scale."""
        return self.latents_from_moments(self.encode_moments(images), sample=sample, generator=generator)

    # ---- decoding ----------------------------------------------------------------------------------
    def decode_unscaled(self, z: torch.Tensor) -> torch.Tensor:
        """Official `vae.decode(z)`: post_quant_conv + decoder on an un-normalised latent (not clamped)."""
        self._check_latents(z)
        return self.autoencoder.decoder(self.autoencoder.post_quant_conv(z))

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents (B, C, h, w) -> images (B, 3, h*f, w*f) clamped to [-1, 1]."""
        self._check_latents(latents)
        return self.decode_unscaled(latents / self.config.latent_scale).clamp(-1, 1)

    # ---- training ----------------------------------------------------------------------------------
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Activation checkpointing of the encoder/decoder blocks (the training loop's switch)."""
        if enable:
            self.autoencoder.enable_gradient_checkpointing()
        else:
            self.autoencoder.disable_gradient_checkpointing()

    def forward(self, images: torch.Tensor, generator: torch.Generator | None = None):
        """Training pass: (reconstruction from a posterior sample (not clamped), KL per image (B,))."""
        post = self.posterior(images)
        return self.decode_unscaled(post.sample(generator=generator)), post.kl()

    def training_forward(self, images: torch.Tensor, forward=None):
        """The tokenizer-training interface (train/tokenizer_task.py): (reconstruction, kl_loss, stats).

        kl_loss = kl_weight * KL(posterior || N(0, I)) summed over the latent / pixels per image (batch mean):
        latent-diffusion's KL term, scaled like the per-pixel mean reconstruction loss the task adds.
        `forward`: the DDP wrapper of this module, if any (its forward carries the gradient sync)."""
        rec, kl = (forward or self)(images)
        pixels = images.shape[1] * images.shape[2] * images.shape[3]
        loss = self.config.kl_weight * kl.mean() / pixels
        return rec, loss, {"kl_per_image": float(kl.detach().mean())}

    # ---- decoder fine-tuning on the frozen encoder (train/tokenizer_task.py, decoder_only) ----------
    def frozen_for_decoder_finetune(self) -> list[nn.Module]:
        """What decoder-only fine-tuning keeps fixed: the encoder and quant_conv, so the posterior of every
        image, and with it a generator trained on its latents, stays valid."""
        return [self.autoencoder.encoder, self.autoencoder.quant_conv]

    @torch.no_grad()
    def quantized_latents(self, images: torch.Tensor) -> torch.Tensor:
        """images -> what the decoder is fine-tuned on: a posterior SAMPLE (un-normalised, global RNG), the kind
        of latent the generator learns to draw (it trains on posterior samples), not only the mean."""
        return self.posterior(images).sample()

    def decode_latents(self, z: torch.Tensor) -> torch.Tensor:
        """Un-normalised latents -> images, not clamped (decoder fine-tuning)."""
        return self.decode_unscaled(z)

    @torch.no_grad()
    def estimate_latent_scale(self, images: torch.Tensor, generator: torch.Generator | None = None) -> float:
        """1 / std of posterior samples over `images` (how MAR's 0.2325 normalises KL-16 to unit variance):
        set it with `config.latent_scale = ...` after training a new KL-VAE, before training a generator."""
        moments = torch.cat([self.encode_moments(chunk) for chunk in images.split(256)])
        z = self.posterior_from_moments(moments).sample(generator=generator)
        return float(1.0 / z.float().std())

    # ---- official checkpoints ----------------------------------------------------------------------
    def official_state_dict_spec(self) -> dict[str, tuple]:
        """Official key -> shape this config expects (what `kl16.ckpt['model']` holds for KL-16)."""
        n = len(self.config.ch_mult)
        spec = {}
        for key, t in self.autoencoder.state_dict().items():
            shape = tuple(t.shape)
            if _is_attention_projection(key):
                shape = shape + (1, 1)  # official 1x1 convs
            spec[diffusers_to_official_key(key, n)] = shape
        return spec

    def load_official_state_dict(self, sd, what: str = "KL-VAE checkpoint") -> "KLVAE":
        """Load a MAR-format state_dict (strict): every missing / unexpected / mis-shaped key is listed."""
        sd = unwrap_state_dict(sd, prefer=("model", "state_dict"))
        spec = self.official_state_dict_spec()
        lines = mismatch_lines(spec, sd)
        if lines:
            raise CheckpointError("\n".join([f"{what} does not fit this KL-VAE ({self.config}):", *lines,
                                             "  It is not a MAR KL-VAE of this architecture: check latent_channels, "
                                             "ch, ch_mult, num_res_blocks and encoder_attn_levels (kl16.ckpt: "
                                             "preset 'kl-16')."]))
        n = len(self.config.ch_mult)
        converted = {}
        for key, t in sd.items():
            new = official_to_diffusers_key(key, n)
            converted[new] = t.flatten(1) if _is_attention_projection(new) else t
        self.autoencoder.load_state_dict(converted, strict=True)
        return self

    def official_state_dict(self) -> dict[str, torch.Tensor]:
        """This model's weights under the official key names and shapes (the inverse of loading)."""
        n = len(self.config.ch_mult)
        out = {}
        for key, t in self.autoencoder.state_dict().items():
            out[diffusers_to_official_key(key, n)] = t[..., None, None] if _is_attention_projection(key) else t
        return out

    @classmethod
    def from_official_checkpoint(cls, path, preset: str = "kl-16", **overrides) -> "KLVAE":
        """MAR's `kl16.ckpt` (`{'model': state_dict}`), read with weights_only=True and loaded strictly."""
        from ..registry import create

        model = create(preset, **overrides)
        sd = load_checkpoint(path, what="KL-VAE checkpoint (MAR kl16.ckpt)")
        return model.load_official_state_dict(sd, what=f"KL-VAE checkpoint {path}").eval()


# ----------------------------------------------------------------------------------------------------
# Presets
# ----------------------------------------------------------------------------------------------------
@register_preset("kl-16", family="kl-tokenizer",
                 description="MAR/xAR KL-16 VAE (official kl16.ckpt): 16 latent channels, stride 16, scale 0.2325")
def kl_16(**overrides) -> KLVAE:
    return KLVAE(KLConfig().replace(**overrides))


@register_preset("kl-fmnist", family="kl-tokenizer",
                 description="small KL-VAE for 32x32 Fashion-MNIST: stride 4, 8x8x16 latents")
def kl_fmnist(**overrides) -> KLVAE:
    # 3 levels (stride 4): 32x32 images -> an 8x8 grid of 16-channel latents, which 2x2 / 4x4 cells,
    # stride-2 subsamples and the scales 1, 2, 4, 8 all tile. Attention only in the mid block (cheap on CPU).
    # kl_weight 1e-2 (LDM units, 1e4 x KL-16's): an 8x8x16 latent barely compresses a 32x32 image, so a stronger
    # KL keeps the latent space smooth for the generator (150-step probe: PSNR 14.5 vs 14.9 dB at 1e-1 vs 1e-3).
    # latent_scale: measured on the trained model by scripts/calibrate_kl_scale.py (1 / std of posterior samples).
    cfg = KLConfig(latent_channels=16, ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, encoder_attn_levels=(),
                   latent_scale=1.0, kl_weight=1e-2)
    return KLVAE(cfg.replace(**overrides))
