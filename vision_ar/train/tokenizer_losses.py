"""Optional tokenizer losses: LPIPS perceptual loss and a PatchGAN discriminator.

Both are shared by every tokenizer (2D VQ, multi-scale VQ, ...). Pretrained weights are never
downloaded: LPIPS takes local paths to a torchvision VGG16 state_dict and to the LPIPS linear-layer weights
(the `vgg.pth` of the LPIPS project, keys `lin{i}.model.1.weight`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..io import load_checkpoint, unwrap_state_dict

# ----------------------------------------------------------------------------------------------------
# LPIPS (VGG16 variant)
# ----------------------------------------------------------------------------------------------------
_VGG_SLICES = (4, 9, 16, 23, 30)          # ends (exclusive) of relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
_VGG_CHANNELS = (64, 128, 256, 512, 512)


class LPIPS(nn.Module):
    """Learned perceptual distance between images in [-1, 1]; frozen, returns one value per image."""

    def __init__(self):
        super().__init__()
        from torchvision.models import vgg16

        self.features = vgg16(weights=None).features[: _VGG_SLICES[-1]]
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in _VGG_CHANNELS)
        # LPIPS's input normalisation, constants of the published model
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))
        self.requires_grad_(False).eval()

    @classmethod
    def from_local(cls, vgg_path: str, lin_path: str) -> "LPIPS":
        m = cls()
        vgg = unwrap_state_dict(load_checkpoint(vgg_path, "VGG16 weights (torchvision vgg16 state_dict)"))
        feats = {k[len("features."):]: v for k, v in vgg.items() if k.startswith("features.")}
        feats = {k: v for k, v in feats.items() if int(k.split(".")[0]) < _VGG_SLICES[-1]}
        m.features.load_state_dict(feats, strict=True)
        lin = unwrap_state_dict(load_checkpoint(lin_path, "LPIPS linear weights (vgg.pth)"))
        for i, conv in enumerate(m.lins):
            key = f"lin{i}.model.1.weight"
            if key not in lin:
                raise ConfigError(f"{lin_path} has no key {key}: expected the LPIPS project's vgg.pth "
                                  f"(keys lin0..lin4.model.1.weight)")
            conv.weight.data.copy_(lin[key])
        return m

    def train(self, mode: bool = True):  # always frozen
        return super().train(False)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = (torch.cat([x, y]) - self.shift) / self.scale
        total = 0.0
        start = 0
        for end, lin in zip(_VGG_SLICES, self.lins):
            h = self.features[start:end](h)
            start = end
            a, b = h.chunk(2)
            a = a / (a.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            b = b / (b.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            total = total + lin((a - b).pow(2)).mean(dim=(2, 3))
        return total.flatten()


# ----------------------------------------------------------------------------------------------------
# PatchGAN discriminator + hinge loss
# ----------------------------------------------------------------------------------------------------
class PatchDiscriminator(nn.Module):
    """The pix2pix / VQGAN PatchGAN: strided 4x4 convs, one real/fake logit per patch."""

    def __init__(self, in_channels: int = 3, ch: int = 64, n_layers: int = 3):
        super().__init__()
        layers = [nn.Conv2d(in_channels, ch, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        c = ch
        for i in range(1, n_layers + 1):
            c_next = ch * min(2 ** i, 8)
            stride = 2 if i < n_layers else 1
            layers += [nn.Conv2d(c, c_next, 4, stride, 1, bias=False), nn.BatchNorm2d(c_next),
                       nn.LeakyReLU(0.2, True)]
            c = c_next
        layers.append(nn.Conv2d(c, 1, 4, 1, 1))
        self.net = nn.Sequential(*layers)
        for m in self.modules():  # DCGAN init, as VQGAN
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        return self.net(x)


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def generator_adv_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    return -logits_fake.mean()
