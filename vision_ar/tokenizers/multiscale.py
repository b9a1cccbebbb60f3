"""VAR's multi-scale residual VQ-VAE tokenizer (FoundationVision/VAR `VQVAE`), state_dict-compatible.

    images (B,3,H,W) in [-1,1]
      └─ encoder ─ quant_conv ─▶ f (B,Cvae,pn_last,pn_last)
           └─ quantize (multi-scale residual) ─▶ tokens: [(B,pn,pn) for pn in patch_nums]
                └─ embed, upsample, Phi, sum ─▶ f_hat ─ post_quant_conv ─ decoder ─▶ images

H = W = downsample * patch_nums[-1], downsample = 2**(len(ch_mult)-1) (16 for the official f16 body).

The tokenizer interface of the project is `encode(images) -> list of (B,pn,pn)` and `decode(tokens) -> images`;
the other methods mirror the official ones under shorter names (img_to_idxBl -> img_to_idx, idxBl_to_img ->
idx_to_img, ...), for the VAR transformer, its sampler and VQ-VAE training.

Official checkpoint: `vae_ch160v4096z32.pth` -> `MultiScaleVQVAE.from_official(path)` (preset "var-vqvae-f16").
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from ..errors import ConfigError
from ..io import PretrainedMixin, describe_source, load_state_dict_strict, read_official_checkpoint
from ..nn.conv_blocks import Decoder, Encoder
from ..registry import register_preset
from ..tokens import TokenLayout, image_hw
from .quantizers import MultiScaleResidualQuantizer

# Image -> latent resolution levels of the official VAR VQ-VAE (latent-diffusion "vq-f16").
OFFICIAL_CH_MULT = (1, 1, 2, 2, 4)
OFFICIAL_PATCH_NUMS = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)


# ----------------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------------
@dataclass
class MultiScaleVQVAEConfig:
    vocab_size: int = 4096
    z_channels: int = 32               # Cvae: latent / code width
    ch: int = 128                      # base width of the conv body (official checkpoint: 160)
    ch_mult: tuple = OFFICIAL_CH_MULT  # one entry per resolution level; downsample = 2**(len-1)
    num_res_blocks: int = 2
    dropout: float = 0.0
    beta: float = 0.25                 # commitment loss weight
    using_znorm: bool = False          # cosine instead of Euclidean nearest code
    quant_conv_ks: int = 3
    quant_resi: float = 0.5            # Phi(h) = (1-r) h + r conv(h)
    share_quant_resi: int = 4          # 0: one Phi per scale, 1: one Phi, K: K shared Phis
    default_qresi_counts: int = 0      # number of Phis when share_quant_resi == 0 (0: one per scale)
    patch_nums: tuple = OFFICIAL_PATCH_NUMS
    test_mode: bool = True             # official: eval() and freeze parameters at construction
    in_channels: int = 3
    using_sa: bool = True              # attention blocks at the lowest resolution level
    using_mid_sa: bool = True          # attention block in the middle
    dead_code_restart: int = 0         # training: re-seed unused codes every N steps (0 = off, as official)

    def __post_init__(self):
        self.ch_mult = tuple(int(m) for m in self.ch_mult)
        self.patch_nums = tuple(int(p) for p in self.patch_nums)
        if self.vocab_size < 1 or self.z_channels < 1 or self.in_channels < 1:
            raise ConfigError(f"vocab_size, z_channels and in_channels must be positive, got {self.vocab_size}, "
                              f"{self.z_channels}, {self.in_channels}")
        if len(self.patch_nums) < 2 or any(p < 1 for p in self.patch_nums) or \
                any(a >= b for a, b in zip(self.patch_nums, self.patch_nums[1:])):
            raise ConfigError(f"patch_nums must be >= 2 strictly increasing positive sides, got {self.patch_nums} "
                              f"(official: {OFFICIAL_PATCH_NUMS}).")
        if self.quant_conv_ks < 1 or self.quant_conv_ks % 2 == 0:
            raise ConfigError(f"quant_conv_ks must be odd (same-size conv), got {self.quant_conv_ks}")
        if self.share_quant_resi < 0 or self.default_qresi_counts < 0:
            raise ConfigError("share_quant_resi and default_qresi_counts must be >= 0")

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    @property
    def image_size(self) -> int:
        return self.downsample * self.patch_nums[-1]

    @classmethod
    def from_official_kwargs(cls, kwargs: dict) -> "MultiScaleVQVAEConfig":
        """Build from the official `VQVAE(**kwargs)` arguments (v_patch_nums -> patch_nums)."""
        kw = dict(kwargs)
        if "v_patch_nums" in kw:
            kw["patch_nums"] = kw.pop("v_patch_nums")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(kw) - known)
        if unknown:
            raise ConfigError(f"unknown VQVAE arguments {unknown}; known: {sorted(known)}")
        return cls(**kw)


# ----------------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------------
class MultiScaleVQVAE(PretrainedMixin, nn.Module):
    config_class = MultiScaleVQVAEConfig
    preset_family = "var-tokenizer"

    def __init__(self, config: MultiScaleVQVAEConfig):
        super().__init__()
        self.config = config
        c = config
        self.V, self.Cvae = c.vocab_size, c.z_channels
        self.patch_nums = c.patch_nums
        self.downsample = c.downsample
        body = dict(ch=c.ch, ch_mult=c.ch_mult, num_res_blocks=c.num_res_blocks, dropout=c.dropout,
                    z_channels=c.z_channels, using_sa=c.using_sa, using_mid_sa=c.using_mid_sa)
        # Registration order = official state_dict order: encoder, decoder, quantize, quant_conv, post_quant_conv.
        self.encoder = Encoder(in_channels=c.in_channels, double_z=False, **body)
        self.decoder = Decoder(out_channels=c.in_channels, **body)
        self.quantize = MultiScaleResidualQuantizer(
            vocab_size=c.vocab_size, Cvae=c.z_channels, patch_nums=c.patch_nums, using_znorm=c.using_znorm,
            beta=c.beta, quant_resi=c.quant_resi, share_quant_resi=c.share_quant_resi,
            default_qresi_counts=c.default_qresi_counts, dead_code_restart=c.dead_code_restart)
        ks = c.quant_conv_ks
        self.quant_conv = nn.Conv2d(c.z_channels, c.z_channels, ks, stride=1, padding=ks // 2)
        self.post_quant_conv = nn.Conv2d(c.z_channels, c.z_channels, ks, stride=1, padding=ks // 2)
        if c.test_mode:
            self.eval()
            self.requires_grad_(False)

    @property
    def image_size(self) -> int:
        return self.config.image_size

    # ---- input checks (before any work) ------------------------------------------------------------
    def _check_images(self, images: torch.Tensor) -> None:
        c, size = self.config, self.image_size
        if not isinstance(images, torch.Tensor) or not images.is_floating_point():
            raise ConfigError("images must be a float tensor (B,3,H,W) in [-1,1]; convert uint8 images with "
                              "x.float() / 127.5 - 1.")
        if images.ndim != 4 or images.shape[1] != c.in_channels:
            raise ConfigError(f"images must be (B,{c.in_channels},H,W), got shape {tuple(images.shape)}. "
                              f"Add a batch dimension with x[None] / repeat gray images to {c.in_channels} channels.")
        if tuple(images.shape[2:]) != (size, size):
            raise ConfigError(f"this tokenizer takes {size}x{size} images (downsample {self.downsample} x last "
                              f"patch_num {self.patch_nums[-1]}), got {images.shape[2]}x{images.shape[3]}. "
                              f"Resize/crop the images to {size}x{size}.")

    def _as_idx_Bl(self, idx_list: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Validate per-scale tokens ((B,pn,pn) or (B,pn*pn)) and return them as (B, pn*pn) LongTensors."""
        S = len(self.patch_nums)
        if isinstance(idx_list, torch.Tensor) or len(idx_list) != S:
            got = "a tensor" if isinstance(idx_list, torch.Tensor) else f"{len(idx_list)} entries"
            raise ConfigError(f"tokens must be a list of {S} per-scale index tensors (patch_nums {self.patch_nums}), "
                              f"got {got}. Pass what encode() returns.")
        B = idx_list[0].shape[0] if idx_list[0].ndim else -1
        out = []
        for si, (idx, pn) in enumerate(zip(idx_list, self.patch_nums)):
            if idx.is_floating_point() or idx.is_complex() or idx.dtype == torch.bool:
                raise ConfigError(f"tokens of scale {si} must be an integer tensor, got {idx.dtype}")
            if tuple(idx.shape) not in {(B, pn, pn), (B, pn * pn)}:
                raise ConfigError(f"tokens of scale {si} must be ({B},{pn},{pn}) or ({B},{pn * pn}), "
                                  f"got {tuple(idx.shape)}")
            if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= self.V):
                raise ConfigError(f"tokens of scale {si} hold values in [{int(idx.min())}, {int(idx.max())}], "
                                  f"outside the vocabulary [0, {self.V - 1}]. Use tokens made by this tokenizer.")
            out.append(idx.reshape(B, pn * pn).long())
        return out

    # ---- project tokenizer interface ---------------------------------------------------------------
    def token_layout(self, image_size=None) -> TokenLayout:
        """The per-scale pyramid `encode` makes; this tokenizer takes images of one size only."""
        size = self.image_size
        if image_size is not None and image_hw(image_size) != (size, size):
            raise ConfigError(f"this tokenizer takes {size}x{size} images (downsample {self.downsample} x last "
                              f"patch_num {self.patch_nums[-1]}), got {image_hw(image_size)}. "
                              f"Resize/crop the images to {size}x{size}.")
        return TokenLayout.pyramid(self.patch_nums, vocab_size=self.V)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> list[torch.LongTensor]:
        """images (B,3,H,W) in [-1,1] -> [LongTensor (B,pn,pn) for pn in patch_nums]."""
        B = images.shape[0] if isinstance(images, torch.Tensor) and images.ndim else 0
        return [idx.view(B, pn, pn) for idx, pn in zip(self.img_to_idx(images), self.patch_nums)]

    @torch.no_grad()
    def decode(self, idx_list: Sequence[torch.Tensor]) -> torch.Tensor:
        """Per-scale tokens ((B,pn,pn) or (B,pn*pn)) -> images (B,3,H,W) clamped to [-1,1]."""
        return self.idx_to_img(idx_list, same_shape=True, last_one=True)

    # ---- official-style paths ----------------------------------------------------------------------
    def img_to_latent(self, images: torch.Tensor) -> torch.Tensor:
        """f = quant_conv(encoder(images)) (B,Cvae,pn_last,pn_last), before quantization."""
        self._check_images(images)
        return self.quant_conv(self.encoder(images))

    def img_to_idx(self, images: torch.Tensor) -> list[torch.LongTensor]:
        """images -> [LongTensor (B, pn*pn)] per scale (official img_to_idxBl)."""
        return self.quantize.f_to_idx_or_fhat(self.img_to_latent(images), to_fhat=False)

    def embed_tokens(self, idx_list: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Per-scale tokens -> per-scale code embeddings (B,Cvae,pn,pn)."""
        out = []
        for idx, pn in zip(self._as_idx_Bl(idx_list), self.patch_nums):
            B = idx.shape[0]
            out.append(self.quantize.embedding(idx).transpose(1, 2).reshape(B, self.Cvae, pn, pn))
        return out

    def idx_to_img(self, idx_list: Sequence[torch.Tensor], same_shape: bool = True, last_one: bool = True):
        """Tokens -> image(s) clamped to [-1,1] (official idxBl_to_img).

        same_shape=True: the real path (every scale upsampled to the full latent before summing).
        last_one=False returns one image per prefix of scales (progressive reconstruction).
        """
        f_hats = self.quantize.embed_to_fhat(self.embed_tokens(idx_list), all_to_max_scale=same_shape,
                                             last_one=last_one)
        return self.fhat_to_img(f_hats) if last_one else [self.fhat_to_img(f) for f in f_hats]

    def fhat_to_img(self, f_hat: torch.Tensor) -> torch.Tensor:
        return self.decode_latents(f_hat).clamp_(-1, 1)

    # ---- decoder fine-tuning: frozen codes in, trainable decoder out --------------------------------
    def frozen_for_decoder_finetune(self) -> list[nn.Module]:
        """What decoder-only fine-tuning keeps fixed: encoder, quant_conv and the quantizer (codebook), so the
        codes of every image, and a generator trained on them, stay valid."""
        return [self.encoder, self.quant_conv, self.quantize]

    @torch.no_grad()
    def quantized_latents(self, images: torch.Tensor) -> torch.Tensor:
        """images -> the f_hat the decoder sees (sum of every scale's codes), without gradients."""
        return self.quantize.f_to_idx_or_fhat(self.img_to_latent(images), to_fhat=True)[-1]

    def decode_latents(self, f_hat: torch.Tensor) -> torch.Tensor:
        """f_hat (B,Cvae,h,w) -> images, not clamped (the decoder half, trained by decoder fine-tuning)."""
        return self.decoder(self.post_quant_conv(f_hat))

    def img_to_reconstructed_img(self, images: torch.Tensor, last_one: bool = False):
        """images -> reconstruction from all scales (last_one) or one per prefix of scales, clamped."""
        f_hats = self.quantize.f_to_idx_or_fhat(self.img_to_latent(images), to_fhat=True)
        return self.fhat_to_img(f_hats[-1]) if last_one else [self.fhat_to_img(f) for f in f_hats]

    # ---- training ----------------------------------------------------------------------------------
    def forward(self, images: torch.Tensor, ret_usages: bool = False):
        """VQ-VAE training pass -> (reconstruction (not clamped), per-scale code usage % or None, vq_loss).

        The reconstruction gets the encoder's gradient through the straight-through f_hat; vq_loss carries the
        commitment (encoder) and codebook (embedding, Phi) terms. Usage needs training-mode steps to accumulate.
        """
        f_hat, usages, vq_loss = self.quantize(self.img_to_latent(images), ret_usages=ret_usages)
        return self.decoder(self.post_quant_conv(f_hat)), usages, vq_loss

    def training_forward(self, images: torch.Tensor, forward=None):
        """The tokenizer-training interface (vision_ar.train.tokenizer_task): (reconstruction, vq_loss, stats).

        `forward` is the DDP/FSDP wrapper of this module when there is one: calling it (not `self`) keeps the
        gradient all-reduce hooks of the wrapper in the graph."""
        rec, usages, vq_loss = (forward or self)(images, ret_usages=True)
        stats = {}
        if usages:
            stats = {"code_usage_first_scale": usages[0], "code_usage_last_scale": usages[-1],
                     "code_usage_mean": sum(usages) / len(usages)}
        return rec, vq_loss, stats

    @classmethod
    def from_official(cls, path_or_state_dict, config: MultiScaleVQVAEConfig | str = "var-vqvae-f16",
                      **overrides) -> "MultiScaleVQVAE":
        """Load the official `vae_ch160v4096z32.pth` (a plain state_dict; or the dict itself) into preset
        "var-vqvae-f16" (or another preset / config), strictly. Eval mode.

        Pass patch_nums=... for the 512px schedule (1,2,3,4,6,9,13,18,24,32); its Phi convs are the same weights.
        """
        model = cls.build_for_official(config, overrides)
        sd = read_official_checkpoint(path_or_state_dict, what="VAR VQ-VAE checkpoint")
        # The EMA hit table is training statistics sized by the number of scales; like the official loader, keep
        # our own when a checkpoint made for another scale schedule has a different one.
        key = "quantize.ema_vocab_hit_SV"
        if key in sd and sd[key].shape != model.quantize.ema_vocab_hit_SV.shape:
            sd[key] = model.quantize.ema_vocab_hit_SV.clone()
        load_state_dict_strict(model, sd, what=f"VAR VQ-VAE checkpoint {describe_source(path_or_state_dict)}")
        return model.eval()


# ----------------------------------------------------------------------------------------------------
# Presets
# ----------------------------------------------------------------------------------------------------
@register_preset("var-vqvae-f16", family="var-tokenizer",
                 description="VAR VQ-VAE (official vae_ch160v4096z32.pth): ch160, V4096, Cvae32, 256px, 10 scales")
def var_vqvae_f16(**overrides) -> MultiScaleVQVAE:
    cfg = MultiScaleVQVAEConfig(vocab_size=4096, z_channels=32, ch=160, share_quant_resi=4,
                                patch_nums=OFFICIAL_PATCH_NUMS)
    return MultiScaleVQVAE(dataclasses.replace(cfg, **overrides))


@register_preset("var-vqvae-fmnist", family="var-tokenizer",
                 description="small multi-scale VQ-VAE for 32x32 Fashion-MNIST: f4, 8x8 latent, V1024, 6 scales")
def var_vqvae_fmnist(**overrides) -> MultiScaleVQVAE:
    # f4 (ch_mult of 3 levels) keeps an 8x8 latent for 32x32 images; no attention (cheap on CPU).
    cfg = MultiScaleVQVAEConfig(vocab_size=1024, z_channels=32, ch=32, ch_mult=(1, 2, 2), num_res_blocks=1,
                                share_quant_resi=4, patch_nums=(1, 2, 3, 4, 6, 8), test_mode=False,
                                using_sa=False, using_mid_sa=False, dead_code_restart=25)
    return MultiScaleVQVAE(dataclasses.replace(cfg, **overrides))
