"""Feed-forward blocks shared by the transformers.

`FFN` is the ViT/GPT-2 MLP used by VAR: Linear -> GELU(tanh approximation) -> Linear (-> dropout); FlexTok's
ungated option passes its own activation and bias. `GatedMLP` is FlexTok's SiLU-gated block (fc1/fc3/fc2),
`GatedFFN` timm's SwiGLU layout used by xAR (fc1_g/fc1_x/fc2).
Parameter names `fc1` / `fc2` (/ `fc3`) are the official VAR, timm `Mlp` and FlexTok key names, so checkpoints load
as they are.
"""
from __future__ import annotations

import torch
from torch import nn


class FFN(nn.Module):
    def __init__(self, in_features: int, hidden_features: int | None = None, out_features: int | None = None,
                 drop: float = 0.0, act_layer: type[nn.Module] | None = None, bias: bool = True):
        super().__init__()
        hidden_features = hidden_features or in_features
        out_features = out_features or in_features
        self.fc1 = nn.Linear(in_features, hidden_features, bias=bias)
        # default: tanh-approximate GELU, what VAR was trained with (its fused kernel is "gelu_approx").
        self.act = act_layer() if act_layer is not None else nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden_features, out_features, bias=bias)
        self.drop = nn.Dropout(drop) if drop > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.act(self.fc1(x))))


class GatedMLP(nn.Module):
    """Gated feed-forward block (SwiGLU with SiLU): fc2( act(fc1 x) * fc3 x ), FlexTok's `GatedMlp`.

    The hidden width is int(2 * hidden_features / 3) (three matrices instead of two at about the parameter count of
    an ungated MLP), without LLaMA's rounding up; names fc1 (gate), fc3 (up), fc2 (down) are the official FlexTok
    key names. (LLaMA-style checkpoints use `swiglu.FeedForward`, whose names and rounding differ.)
    """

    def __init__(self, in_features: int, hidden_features: int | None = None, out_features: int | None = None,
                 bias: bool = False, act_layer: type[nn.Module] = nn.SiLU, drop: float = 0.0):
        super().__init__()
        out_features = out_features or in_features
        hidden = int(2 * (hidden_features or in_features) / 3)
        self.fc1 = nn.Linear(in_features, hidden, bias=bias)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden, out_features, bias=bias)
        self.fc3 = nn.Linear(in_features, hidden, bias=bias)
        self.drop = nn.Dropout(drop) if drop > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.act(self.fc1(x)) * self.fc3(x)))


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
