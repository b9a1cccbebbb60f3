"""REPA (representation alignment, Yu et al. 2024) for a flow decoder: align its hidden patch tokens, through a
small trained projector, with the features a frozen network sees in the clean image.

    loss_repa = mean over patches of (1 - cos(projector(h_layer), f_frozen(image) at that patch))

The frozen network is loaded from a local path (nothing is downloaded):
  * 'vq-encoder' - the encoder of a trained VQ tokenizer folder (e.g. vision_ar/weights/fmnist_gpt/tokenizer, the
    Fashion-MNIST vq-fmnist): its pre-quantisation features (z_channels x H/f x W/f; 64 x 8 x 8 on 32x32). It
    learned from reconstruction alone, so aligning to it teaches the decoder image structure without touching
    what the evaluation measures.
  * The project's Fashion-MNIST classifier is refused on purpose: its features are what the Fashion-MNIST FID
    and accuracy measure, and a model trained towards them would score the loss, not the images.
  * 'timm:<model name>' - a timm ViT (e.g. timm:vit_small_patch14_dinov2.lvd142m) from a local weights file
    (.safetensors or a weights-only torch file); patch tokens of its last block, ImageNet-normalised input at the
    model's own resolution.
Feature maps are resized (area) to the decoder's patch grid.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, MissingFileError
from ..io import load_checkpoint


class FrozenFeatures(nn.Module):
    """images (B,3,H,W) in [-1,1] -> feature map (B, C, h, w); never trained, always in eval mode."""

    def __init__(self, body: nn.Module, dim: int, kind: str, prefix_tokens: int = 0, input_size: int | None = None,
                 mean=None, std=None):
        super().__init__()
        self.body, self.dim, self.kind = body, dim, kind
        self.prefix_tokens, self.input_size = prefix_tokens, input_size
        self.register_buffer("mean", torch.tensor(mean or [0.0, 0.0, 0.0]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std or [1.0, 1.0, 1.0]).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False).eval()

    def train(self, mode: bool = True):
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.kind == "vq-encoder":
            return self.body(images)
        x = (images + 1) / 2
        if self.input_size and x.shape[-1] != self.input_size:
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bicubic", align_corners=False)
        tokens = self.body.forward_features((x - self.mean) / self.std)[:, self.prefix_tokens:]
        side = int(round(tokens.shape[1] ** 0.5))
        return tokens.transpose(1, 2).reshape(tokens.shape[0], -1, side, side)


EVALUATION_NETWORKS = ("fmnist-classifier",)


def load_feature_network(name: str, weights: str | None) -> FrozenFeatures:
    if name in EVALUATION_NETWORKS:
        raise ConfigError(f"REPA to '{name}' is refused: the Fashion-MNIST accuracy and FID are measured with that "
                          f"classifier's features, so training towards them would make the metrics measure the "
                          f"loss. Align to a network the evaluation does not use, e.g. --loss-set "
                          f"repa_network=vq-encoder --loss-set repa_weights=vision_ar/weights/fmnist_gpt/tokenizer")
    if not weights:
        raise ConfigError(f"REPA with '{name}' needs the local weights of that network (--loss-set "
                          f"repa_weights=PATH); nothing is downloaded")
    path = Path(weights)
    if name == "vq-encoder":
        from ..tokenizers.vq import VQModel

        if not (path / "config.json").is_file():
            raise MissingFileError(f"repa_weights={path}: expected a VQ tokenizer folder (config.json + "
                                   f"model.safetensors), e.g. vision_ar/weights/fmnist_gpt/tokenizer")
        vq = VQModel.from_pretrained(path)
        return FrozenFeatures(vq.encoder, vq.config.z_channels, name)
    if name.startswith("timm:"):
        import timm

        model = timm.create_model(name[5:], pretrained=False, num_classes=0)
        sd = load_checkpoint(path, f"REPA feature network {name}")
        model.load_state_dict({k: v for k, v in sd.items() if not k.startswith("head.")}, strict=False)
        cfg = model.pretrained_cfg or {}
        size = (cfg.get("input_size") or (3, 224, 224))[-1]
        return FrozenFeatures(model, model.num_features, name, getattr(model, "num_prefix_tokens", 1), size,
                              list(cfg.get("mean", (0.485, 0.456, 0.406))), list(cfg.get("std", (0.229, 0.224, 0.225))))
    raise ConfigError(f"unknown REPA feature network {name!r}; known: 'vq-encoder', 'timm:<model name>'")


class REPAProjector(nn.Sequential):
    """The trained map from decoder width to feature width (REPA's 3-layer SiLU MLP)."""

    def __init__(self, dim: int, feature_dim: int, hidden: int = 512):
        super().__init__(nn.Linear(dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                         nn.Linear(hidden, feature_dim))


def repa_loss(projected: torch.Tensor, features: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """projected (B, h*w, C) decoder patch tokens, features (B, C, H', W') -> mean (1 - cosine) per patch."""
    target = F.adaptive_avg_pool2d(features.float(), grid).flatten(2).transpose(1, 2)
    return (1 - F.cosine_similarity(projected.float(), target, dim=-1)).mean()
