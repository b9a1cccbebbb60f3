"""2D VQ tokenizer, LlamaGen VQ-16 / VQ-8 compatible (`tokenizer/tokenizer_image/vq_model.py`).

    images (B,3,H,W) in [-1,1] ──encoder──quant_conv──▶ z (B,8,H/f,W/f) ──nearest l2-normalised code──▶ (B,h,w) ids
    ids ──codebook rows (l2-normalised)──post_quant_conv──decoder──▶ images (B,3,H,W)

State-dict keys equal the official ones, so `vq_ds16_c2i.pt` (weights under "model") loads as it is:
    encoder.*, decoder.*  (see llamagen_conv.py), quant_conv, post_quant_conv,
    quantize.embedding.weight (codebook, NOT stored unit-norm: rows are normalised at use time),
    quantize.codebook_used (rolling window of the last 65536 chosen ids, for the usage statistic).

Map: VQConfig | VectorQuantizer (nearest code, losses, usage) | VQModel (encode / decode / forward) | presets.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..io import PretrainedMixin, load_state_dict_strict, read_official_checkpoint
from ..nn.conv_blocks import Decoder, Encoder
from ..registry import register_preset
from ..tokens import TokenLayout, image_hw
from .llamagen_conv import LLAMAGEN_CONV_BODY

USAGE_WINDOW = 65536  # length of the official `codebook_used` buffer


# ----------------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------------
@dataclass
class VQConfig:
    """The official `ModelArgs` of VQModel, plus the encoder/decoder width the official code hard-codes."""

    codebook_size: int = 16384
    codebook_embed_dim: int = 8
    codebook_l2_norm: bool = True
    codebook_show_usage: bool = True
    commit_loss_beta: float = 0.25
    entropy_loss_ratio: float = 0.0
    encoder_ch_mult: tuple = (1, 1, 2, 2, 4)
    decoder_ch_mult: tuple = (1, 1, 2, 2, 4)
    z_channels: int = 256
    dropout_p: float = 0.0
    ch: int = 128  # official Encoder/Decoder default
    num_res_blocks: int = 2
    in_channels: int = 3
    out_channels: int = 3

    def __post_init__(self):
        self.encoder_ch_mult = tuple(self.encoder_ch_mult)
        self.decoder_ch_mult = tuple(self.decoder_ch_mult)
        if len(self.encoder_ch_mult) != len(self.decoder_ch_mult):
            raise ConfigError(f"encoder_ch_mult {self.encoder_ch_mult} and decoder_ch_mult {self.decoder_ch_mult} "
                              f"must have the same length (same downsampling factor).")
        if self.codebook_size < 1 or self.codebook_embed_dim < 1:
            raise ConfigError("codebook_size and codebook_embed_dim must be >= 1.")

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.encoder_ch_mult) - 1)

    def replace(self, **changes) -> "VQConfig":
        return dataclasses.replace(self, **changes)


# ----------------------------------------------------------------------------------------------------
# Quantizer
# ----------------------------------------------------------------------------------------------------
def entropy_loss(affinity: torch.Tensor, temperature: float = 0.01) -> torch.Tensor:
    """Per-sample entropy minus batch-average entropy of softmax(affinity / T) (MaskGIT), as LlamaGen."""
    logits = affinity.reshape(-1, affinity.shape[-1]) / temperature
    probs = F.softmax(logits, dim=-1)
    log_probs = F.log_softmax(logits + 1e-5, dim=-1)
    avg_probs = probs.mean(dim=0)
    avg_entropy = -torch.sum(avg_probs * torch.log(avg_probs + 1e-5))
    sample_entropy = -torch.mean(torch.sum(probs * log_probs, dim=-1))
    return sample_entropy - avg_entropy


class VectorQuantizer(nn.Module):
    def __init__(self, cfg: VQConfig):
        super().__init__()
        self.n_e, self.e_dim = cfg.codebook_size, cfg.codebook_embed_dim
        self.beta, self.entropy_loss_ratio = cfg.commit_loss_beta, cfg.entropy_loss_ratio
        self.l2_norm, self.show_usage = cfg.codebook_l2_norm, cfg.codebook_show_usage
        self.embedding = nn.Embedding(self.n_e, self.e_dim)
        with torch.no_grad():  # official init
            self.embedding.weight.uniform_(-1.0 / self.n_e, 1.0 / self.n_e)
            if self.l2_norm:
                self.embedding.weight.copy_(F.normalize(self.embedding.weight, p=2, dim=-1))
        if self.show_usage:
            self.register_buffer("codebook_used", torch.zeros(USAGE_WINDOW))

    def codebook(self) -> torch.Tensor:
        """The code vectors actually used (unit-norm rows when codebook_l2_norm)."""
        w = self.embedding.weight
        return F.normalize(w, p=2, dim=-1) if self.l2_norm else w

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """(B, h, w) ids -> (B, e_dim, h, w) code vectors."""
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= self.n_e):
            raise ConfigError(f"code ids must be in [0, {self.n_e - 1}], got min {int(indices.min())}, "
                              f"max {int(indices.max())}: the tokens come from a different codebook/vocabulary.")
        return self.codebook()[indices].permute(0, 3, 1, 2).contiguous()

    def forward(self, z: torch.Tensor):
        """z (B, C, h, w) -> (z_q straight-through (B,C,h,w), (vq_loss, commit_loss, entropy_loss), usage, ids (B,h,w)).

        Losses are computed in training only (None in eval), usage is the fraction of the codebook seen in the
        rolling window (0 in eval or without show_usage), as officially.
        """
        b, _, h, w = z.shape
        z = z.permute(0, 2, 3, 1).contiguous()  # B,h,w,C
        codebook = self.codebook()
        if self.l2_norm:
            z = F.normalize(z, p=2, dim=-1)
        flat = z.reshape(-1, self.e_dim)
        # |z|^2 + |e|^2 - 2 z.e, in the official order (near-ties resolve the same way).
        d = (flat.pow(2).sum(dim=1, keepdim=True) + codebook.pow(2).sum(dim=1)
             - 2 * torch.einsum("bd,dn->bn", flat, codebook.t()))
        ids = torch.argmin(d, dim=1)
        z_q = codebook[ids].view(z.shape)

        usage = 0.0
        if self.show_usage and self.training:
            new = ids[-USAGE_WINDOW:].to(self.codebook_used.dtype)
            n = new.shape[0]
            self.codebook_used[:-n] = self.codebook_used[n:].clone()
            self.codebook_used[-n:] = new
            usage = len(torch.unique(self.codebook_used)) / self.n_e

        losses = (None, None, None)
        if self.training:
            vq_loss = torch.mean((z_q - z.detach()) ** 2)
            commit_loss = self.beta * torch.mean((z_q.detach() - z) ** 2)
            ent = self.entropy_loss_ratio * entropy_loss(-d)
            losses = (vq_loss, commit_loss, ent)

        z_q = z + (z_q - z).detach()  # straight-through gradient to the encoder
        return z_q.permute(0, 3, 1, 2), losses, usage, ids.view(b, h, w)


# ----------------------------------------------------------------------------------------------------
# The tokenizer
# ----------------------------------------------------------------------------------------------------
class VQModel(PretrainedMixin, nn.Module):
    config_class = VQConfig
    preset_family = "vq-tokenizer"

    def __init__(self, config: VQConfig):
        super().__init__()
        self.config = cfg = config
        body = dict(ch=cfg.ch, num_res_blocks=cfg.num_res_blocks, dropout=cfg.dropout_p, z_channels=cfg.z_channels,
                    style=LLAMAGEN_CONV_BODY)  # attention at the deepest level and in the middle, as official
        self.encoder = Encoder(in_channels=cfg.in_channels, ch_mult=cfg.encoder_ch_mult, **body)
        self.decoder = Decoder(out_channels=cfg.out_channels, ch_mult=cfg.decoder_ch_mult, **body)
        self.quantize = VectorQuantizer(cfg)
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.codebook_embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(cfg.codebook_embed_dim, cfg.z_channels, 1)

    @property
    def downsample(self) -> int:
        return self.config.downsample

    @property
    def codebook_size(self) -> int:
        return self.config.codebook_size

    def _check_images(self, images: torch.Tensor) -> None:
        f = self.downsample
        if (not isinstance(images, torch.Tensor) or images.ndim != 4 or not images.is_floating_point()
                or images.shape[1] != self.config.in_channels):
            raise ConfigError(f"images must be a float tensor (B, {self.config.in_channels}, H, W) in [-1, 1], got "
                              f"{getattr(images, 'shape', type(images))} {getattr(images, 'dtype', '')}.")
        if images.shape[2] % f or images.shape[3] % f:
            raise ConfigError(f"image size {tuple(images.shape[2:])} is not divisible by the downsampling factor "
                              f"{f}; resize or crop to a multiple of {f}.")

    def token_layout(self, image_size) -> TokenLayout:
        """The (H/f, W/f) code grid `encode` makes of images of `image_size` (an int or (H, W))."""
        h, w = image_hw(image_size)
        f = self.downsample
        if h % f or w % f:
            raise ConfigError(f"image size {(h, w)} is not divisible by the downsampling factor {f}; resize or crop "
                              f"to a multiple of {f}.")
        return TokenLayout.grid(h // f, w // f, vocab_size=self.codebook_size)

    # --- images -> tokens ----------------------------------------------------------------------------
    def encode_with_latents(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images -> (quantised latents (B, e_dim, h, w), ids (B, h, w)). Official `encode(x)[0]` / `[2][2]`."""
        self._check_images(images)
        z = self.quant_conv(self.encoder(images))
        quant, _, _, ids = self.quantize(z)
        return quant, ids

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W) in [-1, 1] -> code ids (B, H/f, W/f) int64, raster order when flattened."""
        return self.encode_with_latents(images)[1]

    def frozen_for_decoder_finetune(self) -> list[nn.Module]:
        """What decoder-only fine-tuning keeps fixed: encoder, quant_conv and the quantizer (codebook), so the
        codes of every image, and a generator trained on them, stay valid."""
        return [self.encoder, self.quant_conv, self.quantize]

    @torch.no_grad()
    def quantized_latents(self, images: torch.Tensor) -> torch.Tensor:
        """images -> the code vectors the decoder sees, without gradients (decoder fine-tuning)."""
        return self.encode_with_latents(images)[0]

    # --- tokens -> images ----------------------------------------------------------------------------
    def decode_latents(self, quant: torch.Tensor) -> torch.Tensor:
        """(B, e_dim, h, w) code vectors -> images (B, 3, h*f, w*f) (not clamped: may leave [-1, 1])."""
        return self.decoder(self.post_quant_conv(quant))

    def decode(self, indices: torch.Tensor) -> torch.Tensor:
        """(B, h, w) code ids -> images (B, 3, h*f, w*f), roughly in [-1, 1] (not clamped)."""
        if not isinstance(indices, torch.Tensor) or indices.ndim != 3 or indices.is_floating_point():
            raise ConfigError(f"indices must be an integer tensor (B, h, w), got "
                              f"{getattr(indices, 'shape', type(indices))}; for flat (B, h*w) tokens use "
                              f"decode_code(tokens).")
        return self.decode_latents(self.quantize.lookup(indices.long()))

    def decode_code(self, codes: torch.Tensor, shape=None) -> torch.Tensor:
        """Official `decode_code(code_b, shape)`: codes (B, N) raster-ordered (or any shape holding B*h*w ids),
        shape = [B, e_dim, h, w]; without shape, (B, h, w) is used as is and (B, N) must be a square grid."""
        if not isinstance(codes, torch.Tensor) or codes.is_floating_point():
            raise ConfigError(f"codes must be an integer tensor, got {getattr(codes, 'dtype', type(codes))}.")
        if shape is not None:
            b, c, h, w = (int(s) for s in shape)
            if c != self.config.codebook_embed_dim or codes.numel() != b * h * w:
                raise ConfigError(f"shape {list(shape)} does not fit {codes.numel()} codes of dimension "
                                  f"{self.config.codebook_embed_dim}; pass [B, {self.config.codebook_embed_dim}, h, w] "
                                  f"with B*h*w = number of codes.")
            grid = codes.reshape(b, h, w)
        elif codes.ndim == 3:
            grid = codes
        elif codes.ndim == 2 and math.isqrt(codes.shape[1]) ** 2 == codes.shape[1]:
            side = math.isqrt(codes.shape[1])
            grid = codes.reshape(codes.shape[0], side, side)
        else:
            raise ConfigError(f"cannot infer the token grid of codes {tuple(codes.shape)}; pass "
                              f"shape=[B, {self.config.codebook_embed_dim}, h, w].")
        return self.decode(grid)

    # --- training ------------------------------------------------------------------------------------
    def forward(self, images: torch.Tensor):
        """Training pass: images -> (reconstruction, (vq_loss, commit_loss, entropy_loss), codebook_usage)."""
        self._check_images(images)
        quant, losses, usage, _ = self.quantize(self.quant_conv(self.encoder(images)))
        return self.decode_latents(quant), losses, usage

    def training_forward(self, images: torch.Tensor, forward=None):
        """The tokenizer-training interface (vision_ar.train.tokenizer_task): (reconstruction, vq_loss, stats).
        `forward`: the DDP/FSDP wrapper of this module, if any (its forward carries the gradient sync)."""
        rec, (vq_loss, commit_loss, entropy_loss), usage = (forward or self)(images)
        quant_loss = sum(l for l in (vq_loss, commit_loss, entropy_loss) if torch.is_tensor(l))
        stats = {"codebook_usage": float(usage)} if usage is not None else {}
        return rec, quant_loss, stats

    # --- official checkpoints ------------------------------------------------------------------------
    @classmethod
    def from_official(cls, path_or_state_dict, config: VQConfig | str = "vq-16", **overrides) -> "VQModel":
        """`VQModel.from_official("vq_ds16_c2i.pt", "vq-16")`: the weights under "model" (or a plain
        state_dict, or the dict itself), loaded strictly into the preset or config. Returns it in eval mode."""
        what = "LlamaGen VQ checkpoint"
        sd = read_official_checkpoint(path_or_state_dict, what, prefer=("model", "state_dict", "ema"))
        model = cls.build_for_official(config, overrides)
        load_state_dict_strict(model, sd, what=what)
        return model.eval()


# ----------------------------------------------------------------------------------------------------
# Presets (official VQ_models; ImageNet tokenizers with a 16384 x 8 codebook)
# ----------------------------------------------------------------------------------------------------
@register_preset("vq-16", family="vq-tokenizer", description="LlamaGen VQ-16: 16x downsampling, 16384 x 8 codebook")
def vq_16(**overrides) -> VQModel:
    return VQModel(VQConfig(**{"encoder_ch_mult": (1, 1, 2, 2, 4), "decoder_ch_mult": (1, 1, 2, 2, 4), **overrides}))


@register_preset("vq-8", family="vq-tokenizer", description="LlamaGen VQ-8: 8x downsampling, 16384 x 8 codebook")
def vq_8(**overrides) -> VQModel:
    return VQModel(VQConfig(**{"encoder_ch_mult": (1, 2, 2, 4), "decoder_ch_mult": (1, 2, 2, 4), **overrides}))


@register_preset("vq-fmnist", family="vq-tokenizer",
                 description="small LlamaGen-style VQ for 32x32 Fashion-MNIST: f4, 8x8 codes, 1024 x 8 l2-normalised codebook")
def vq_fmnist(**overrides) -> VQModel:
    cfg = {"codebook_size": 1024, "codebook_embed_dim": 8, "encoder_ch_mult": (1, 2, 2), "decoder_ch_mult": (1, 2, 2),
           "z_channels": 64, "ch": 32, "num_res_blocks": 1, "dropout_p": 0.0}
    return VQModel(VQConfig(**{**cfg, **overrides}))
