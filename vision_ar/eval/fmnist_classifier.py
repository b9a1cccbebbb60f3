"""A small CNN that classifies Fashion-MNIST; its penultimate layer is the feature space of the domain FID.

Inception-v3 features mean little for 32x32 grey clothing, so the Fashion-MNIST metrics of vision-ar use this
network instead: `accuracy` asks whether a generated sample looks like its conditioning class, and the FID is
computed on the `feature_dim`-d vector just before the linear head.

Input: `B,3,32,32` float images in `[-1, 1]` (the project's Fashion-MNIST layout: 28x28 padded with background
-1 and repeated to 3 channels). The network reads the channel mean, so a grey image repeated over 3 channels and
a 1-channel image give the same answer, and a generator whose channels drift apart is judged on its luminance.

    x (B,3,32,32) -> mean over channels (B,1,32,32)
      -> [conv3x3-BN-ReLU x2, maxpool] for each width   (32 -> 16 -> 8 -> 4)
      -> global average pool -> linear -> BN -> ReLU    (feature_dim: the FID features)
      -> dropout -> linear                              (num_classes logits)
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..io import PretrainedMixin


@dataclass
class FashionMNISTClassifierConfig:
    widths: tuple = (32, 64, 128)    # channels of each conv stage; each stage halves the resolution
    convs_per_stage: int = 2
    feature_dim: int = 256           # penultimate width = dimension of the FID feature space
    num_classes: int = 10
    dropout: float = 0.2
    image_size: int = 32


def _conv_bn_relu(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class FashionMNISTClassifier(PretrainedMixin, nn.Module):
    config_class = FashionMNISTClassifierConfig

    def __init__(self, config: FashionMNISTClassifierConfig):
        super().__init__()
        self.config = config
        stages, c_in = [], 1
        for width in config.widths:
            layers = [_conv_bn_relu(c_in if i == 0 else width, width) for i in range(config.convs_per_stage)]
            stages.append(nn.Sequential(*layers, nn.MaxPool2d(2)))
            c_in = width
        self.stages = nn.Sequential(*stages)
        self.to_features = nn.Sequential(
            nn.Linear(c_in, config.feature_dim, bias=False), nn.BatchNorm1d(config.feature_dim), nn.ReLU(inplace=True))
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.feature_dim, config.num_classes)

    # ------------------------------------------------------------------------------------------------
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """`B,C,H,W` images in [-1, 1] (C = 1 or 3) -> `B,feature_dim` penultimate activations."""
        x = images.mean(dim=1, keepdim=True)  # repeated grey channels -> one channel
        x = self.stages(x)
        x = x.mean(dim=(2, 3))                # global average pool
        return self.to_features(x)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits `B,num_classes`."""
        return self.head(self.dropout(self.features(images)))
