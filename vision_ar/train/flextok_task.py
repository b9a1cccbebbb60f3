"""Training task for FlexTok tokenizers (the official repository publishes no training code).

One step, per image (FlexTok.sample_train_draws draws all of it up front from the global torch RNG, so exact
resume holds):
  * the frozen VAE gives latents x0; the encoder makes the register sequence (its count drawn from the config's
    register sizes), FSQ quantises it with a straight-through gradient;
  * nested dropout keeps the first k registers (k uniform or a power of two, per the config) and replaces the
    rest by the mask token, so every prefix length learns to decode on its own;
  * with the config's probability the whole condition becomes the null condition (for CFG at decode time);
  * t ~ logit-normal (sigmoid of a standard normal), x_t = t * noise + (1 - t) * x0, and the decoder is trained
    on the rectified-flow objective  || v_pred - (noise - x0) ||^2  (mean over pixels and images);
  * optional REPA: + repa_weight * (1 - cos) between projected decoder patch tokens of one layer and a frozen
    network's features of the clean image (train/repa.py).
The encoder learns only through the decoder's loss (as in the paper).
"""
from __future__ import annotations

from dataclasses import dataclass
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .repa import REPAProjector, load_feature_network, repa_loss
from .task import TrainTask, unwrap


@dataclass
class FlexTokLossConfig:
    repa_weight: float = 0.0          # > 0 turns REPA on
    repa_network: str = "vq-encoder"  # a VQ tokenizer folder's encoder, or 'timm:<model name>'
    repa_weights: str | None = None   # local weights of the frozen network
    repa_layer: int | None = None     # decoder block (0-based) whose patch tokens are aligned; default depth // 3
    repa_hidden: int = 512            # projector width


class FlexTokWithProjector(nn.Module):
    """What REPA trains: the tokenizer plus the projector. Saving it saves the tokenizer only."""

    def __init__(self, tokenizer: nn.Module, projector: nn.Module, layer: int):
        super().__init__()
        self.tokenizer, self.projector, self.layer = tokenizer, projector, layer

    def forward(self, images: torch.Tensor) -> dict:
        out = self.tokenizer(images, return_layers=(self.layer,))
        out["projected"] = self.projector(out["hidden"][0])
        return out

    def save_pretrained(self, folder):
        return self.tokenizer.save_pretrained(folder)


def _images(batch):
    return batch[0] if isinstance(batch, (tuple, list)) else batch


class FlexTokTask(TrainTask):
    """decoder_only: fine-tune the decoder on the frozen codes of a trained encoder (a GPT trained on those codes
    stays valid)."""

    def __init__(self, tokenizer: nn.Module, cfg: FlexTokLossConfig = FlexTokLossConfig(),
                 decoder_only: bool = False):
        tokenizer.vae.requires_grad_(False)  # the VAE stays frozen whatever the recipe did
        if decoder_only:
            tokenizer.encoder.requires_grad_(False)
        self.cfg, self.features, self.decoder_only = cfg, None, decoder_only
        if cfg.repa_weight < 0:
            raise ConfigError(f"repa_weight must be >= 0, got {cfg.repa_weight}")
        if cfg.repa_weight > 0:
            depth = tokenizer.spec.decoder.vit.depth
            layer = depth // 3 if cfg.repa_layer is None else cfg.repa_layer
            if not 0 <= layer < depth:
                raise ConfigError(f"repa_layer must be a decoder block index in 0..{depth - 1}, got {layer}")
            self.features = load_feature_network(cfg.repa_network, cfg.repa_weights)
            projector = REPAProjector(tokenizer.spec.decoder.vit.dim, self.features.dim, cfg.repa_hidden)
            super().__init__(FlexTokWithProjector(tokenizer, projector, layer))
        else:
            super().__init__(tokenizer)

    def settings(self) -> dict:
        """What this task computes with (a resume that changes it is refused): the loss options, the decoder-only
        switch and the tokenizer's configuration (a dict, which the loop does not record by itself)."""
        tok = unwrap(self.model)
        tok = tok.tokenizer if isinstance(tok, FlexTokWithProjector) else tok
        return {"loss": self.cfg, "decoder_only": self.decoder_only, "tokenizer_config": tok.config}

    def loss(self, model, batch, step):
        images = _images(batch)
        out = model(images)  # the (DDP-wrapped) module's forward: gradients synchronise
        rf = F.mse_loss(out["v_pred"].float(), out["target"].float())
        loss, metrics = rf, {"rf_loss": rf.item(), "keep_k": out["draws"].keep_k.float().mean().item()}
        if self.features is not None:
            self.features.to(images.device)
            raw = unwrap(model)
            tok = raw.tokenizer
            p = tok.spec.decoder.patch.patch_sizes
            latent_hw = out["latents"].shape[2:]
            grid = (latent_hw[0] // p[0], latent_hw[1] // p[1])
            r = repa_loss(out["projected"], self.features(images), grid)
            loss = loss + self.cfg.repa_weight * r
            metrics["repa_loss"] = r.item()
        return loss, metrics
