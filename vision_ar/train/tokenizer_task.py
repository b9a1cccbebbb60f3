"""Training task shared by the tokenizers (multi-scale VQ, 2D VQ, and any tokenizer with `training_forward`).

loss = recon (L1 or L2) + quantizer loss (commitment + codebook, or KL) + lpips_weight * LPIPS
       + disc_weight * adversarial (from step `disc_start` on, when the discriminator is trained too)

`decoder_only=True` fine-tunes the decoder of a trained tokenizer on frozen codes (encoder, quantizer and
codebook untouched and in eval mode, so no code usage statistics or dead-code restarts change them): the codes
of every image stay the same, so a generator trained on them keeps working while its images get sharper.
The tokenizer then exposes `frozen_for_decoder_finetune()` (the modules that keep the codes fixed),
`quantized_latents(images)` (no grad) and `decode_latents(latents)` (unclamped).

The tokenizer exposes `training_forward(images) -> (reconstruction, quantizer_loss, stats)`; `stats` is a
dict of floats (codebook usage, perplexity...) that goes to metrics.jsonl. The official VAR repository
publishes no tokenizer training; this follows VQGAN / LlamaGen practice, with a fixed GAN weight (no
adaptive weight: it needs the decoder's last-layer gradient and makes resume depend on graph details).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .task import gan_started, unwrap
from .tokenizer_losses import LPIPS, PatchDiscriminator, generator_adv_loss, hinge_d_loss


@dataclass
class TokenizerLossConfig:
    recon: str = "l1"                  # 'l1' or 'l2'
    quant_weight: float = 1.0
    lpips_weight: float = 0.0          # > 0 needs lpips_vgg_path and lpips_lin_path
    lpips_vgg_path: str | None = None
    lpips_lin_path: str | None = None
    disc_weight: float = 0.0           # > 0 turns the PatchGAN on
    disc_start: int = 0                # step of the GAN phase: adversarial loss and discriminator training
    disc_channels: int = 64
    disc_layers: int = 2
    decoder_only: bool = False         # fine-tune the decoder on frozen codes (see the module docstring)
    family_options: dict = field(default_factory=dict)  # a family's own loss options (`--loss-set K=V`), e.g.
                                                        # FlexTok's REPA; the shared task has none


def _images(batch):
    return batch[0] if isinstance(batch, (tuple, list)) else batch


class TokenizerTask:
    def __init__(self, tokenizer: nn.Module, cfg: TokenizerLossConfig = TokenizerLossConfig()):
        self.model = tokenizer
        self.cfg = cfg
        self.lpips = None
        if cfg.family_options:
            from ..errors import ConfigError

            raise ConfigError(f"--loss-set {sorted(cfg.family_options)}: {type(tokenizer).__name__} trains with the "
                              f"shared tokenizer task, which has no such options (they belong to other families, "
                              f"e.g. FlexTok's repa_weight)")
        if cfg.lpips_weight > 0:
            if not (cfg.lpips_vgg_path and cfg.lpips_lin_path):
                from ..errors import ConfigError

                raise ConfigError("lpips_weight > 0 needs --lpips-vgg PATH (torchvision vgg16 weights) and "
                                  "--lpips-lin PATH (LPIPS vgg.pth); nothing is downloaded")
            self.lpips = LPIPS.from_local(cfg.lpips_vgg_path, cfg.lpips_lin_path)
        self.discriminator = PatchDiscriminator(ch=cfg.disc_channels, n_layers=cfg.disc_layers) \
            if cfg.disc_weight > 0 else None
        if cfg.decoder_only:
            missing = [m for m in ("frozen_for_decoder_finetune", "quantized_latents", "decode_latents")
                       if not hasattr(tokenizer, m)]
            if missing:
                from ..errors import ConfigError

                raise ConfigError(f"decoder_only fine-tuning needs {type(tokenizer).__name__}."
                                  f"{' and .'.join(missing)}(); this tokenizer does not provide it")
            self.frozen = list(tokenizer.frozen_for_decoder_finetune())  # what keeps the codes fixed
            for m in self.frozen:
                m.requires_grad_(False)

    def _reconstruct(self, model, x):
        """(reconstruction, quantizer loss, stats): the whole tokenizer, or the decoder on frozen codes."""
        if not self.cfg.decoder_only:
            return unwrap(model).training_forward(x, forward=model)
        tok = unwrap(model)
        modes = [m.training for m in self.frozen]
        for m in self.frozen:
            m.eval()  # eval: the quantizer must not count hits or restart codes
        try:  # in fp32 even under autocast: the codes must be exactly those the generator was trained on
            with torch.autocast(x.device.type, enabled=False):
                z = tok.quantized_latents(x.float())
        finally:
            for m, mode in zip(self.frozen, modes):
                m.train(mode)
        return tok.decode_latents(z), torch.zeros((), device=x.device), {}

    def settings(self) -> dict:  # compared on resume
        return dataclasses.asdict(self.cfg)

    @property
    def disc_start(self) -> int:  # read by the loop through gan_started: the one GAN start step
        return self.cfg.disc_start

    def _recon_loss(self, rec, x):
        return F.l1_loss(rec, x) if self.cfg.recon == "l1" else F.mse_loss(rec, x)

    def loss(self, model, batch, step):
        x = _images(batch)
        rec, quant_loss, stats = self._reconstruct(model, x)
        rec_loss = self._recon_loss(rec, x)
        loss = rec_loss + self.cfg.quant_weight * quant_loss
        metrics = {"rec_loss": rec_loss.item(), "quant_loss": float(quant_loss.detach()), **stats}
        with torch.no_grad():
            metrics["psnr"] = (10 * torch.log10(4.0 / F.mse_loss(rec.clamp(-1, 1), x).clamp_min(1e-10))).item()
        if self.lpips is not None:
            self.lpips.to(x.device)
            p = self.lpips(rec, x).mean()
            loss = loss + self.cfg.lpips_weight * p
            metrics["lpips"] = p.item()
        if gan_started(self, step):  # the loop keeps the discriminator frozen during this step
            g = generator_adv_loss(self.discriminator(rec))
            loss = loss + self.cfg.disc_weight * g
            metrics["g_adv"] = g.item()
        return loss, metrics

    def disc_loss(self, model, disc, batch, step):
        if not gan_started(self, step):
            return None, {}
        x = _images(batch)
        with torch.no_grad():
            rec, _, _ = self._reconstruct(model, x)
        d = hinge_d_loss(disc(x), disc(rec.detach()))
        return d, {"d_loss": d.item()}
