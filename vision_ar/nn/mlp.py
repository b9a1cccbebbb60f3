"""Feed-forward blocks shared by the transformers.

`FFN` is the ViT/GPT-2 MLP used by VAR: Linear -> GELU(tanh approximation) -> Linear (-> dropout).
Parameter names `fc1` / `fc2` are the official VAR (and timm `Mlp`) key names, so checkpoints load as they are.
"""
from __future__ import annotations

import torch
from torch import nn


class FFN(nn.Module):
    def __init__(self, in_features: int, hidden_features: int | None = None, out_features: int | None = None,
                 drop: float = 0.0):
        super().__init__()
        hidden_features = hidden_features or in_features
        out_features = out_features or in_features
        self.fc1 = nn.Linear(in_features, hidden_features)
        # tanh-approximate GELU: what VAR was trained with (its fused kernel is "gelu_approx").
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden_features, out_features)
        self.drop = nn.Dropout(drop) if drop > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.act(self.fc1(x))))


class GatedFFN(nn.Module):
    """Gated feed-forward block in timm's `SwiGLU` layout (used by xAR): fc2(drop(act(fc1_g x) * fc1_x x)).

    Key names `fc1_g` (gate), `fc1_x` (value), `fc2` and the biases are timm's, so xAR checkpoints load as they
    are. xAR builds it with act = exact GELU (timm's argument `act_layer=nn.GELU`), hidden = int(dim * 4 * 2/3).
    """

    def __init__(self, in_features: int, hidden_features: int, drop: float = 0.0, act: nn.Module | None = None):
        super().__init__()
        self.fc1_g = nn.Linear(in_features, hidden_features)
        self.fc1_x = nn.Linear(in_features, hidden_features)
        self.act = act if act is not None else nn.GELU()
        self.drop1 = nn.Dropout(drop) if drop > 0 else nn.Identity()
        self.fc2 = nn.Linear(hidden_features, in_features)
        self.drop2 = nn.Dropout(drop) if drop > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1_g(x)) * self.fc1_x(x))))
