"""What a tokenizer's tokens look like: the one description that caching, training, the generators' positions,
samplers and editing read instead of guessing (no `side = sqrt(n)`).

    TokenLayout.grid(h, w, vocab_size=V)            B,h,w int codes, raster order           (2D VQ)
    TokenLayout.pyramid([(1, 1), (2, 2)], V)        list of B,h_k,w_k int codes, coarse first (VAR multi-scale)
    TokenLayout.sequence(n, vocab_size=V)           B,n int codes, ordered                  (1D tokenizers)
    TokenLayout.latent(c, h, w)                     B,c,h,w float latents                   (continuous tokenizers)

`flatten(tokens)` gives one row per image, `(B, flat_size)` (a pyramid's scales concatenated coarse to
fine, each row-major); `unflatten(flat)` gives the tokenizer's native form back, ready for `decode`.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass

import torch

from .errors import ConfigError

KINDS = ("grid", "pyramid", "sequence", "latent")


@dataclass(frozen=True)
class TokenLayout:
    kind: str                      # one of KINDS
    shape: tuple                   # grid (h, w); pyramid ((h1, w1), ...); sequence (n,); latent (c, h, w)
    dtype: str = "int"             # "int" (codebook indices) or "float" (continuous latents)
    vocab_size: int | None = None  # number of codes (int layouts)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ConfigError(f"token layout kind {self.kind!r} is unknown; use one of {', '.join(KINDS)}")
        if self.dtype not in ("int", "float"):
            raise ConfigError(f"token layout dtype {self.dtype!r} must be 'int' (codes) or 'float' (latents)")
        shape = tuple(tuple(int(x) for x in s) for s in self.shape) if self.kind == "pyramid" \
            else tuple(int(x) for x in self.shape)
        object.__setattr__(self, "shape", shape)
        want = {"grid": 2, "sequence": 1, "latent": 3}.get(self.kind)
        ok = (len(shape) == want) if want else (len(shape) > 0 and all(len(s) == 2 for s in shape))
        if not ok or any(x < 1 for x in (_leaves(shape))):
            raise ConfigError(f"a {self.kind} token layout needs shape {_SHAPE_HELP[self.kind]} of positive sizes, "
                              f"got {self.shape}")

    # ---- constructors --------------------------------------------------------------------------------
    @classmethod
    def grid(cls, h: int, w: int, vocab_size: int | None = None) -> "TokenLayout":
        return cls("grid", (h, w), "int", vocab_size)

    @classmethod
    def pyramid(cls, scales, vocab_size: int | None = None) -> "TokenLayout":
        """scales: (h, w) per scale, or side lengths (square scales)."""
        return cls("pyramid", tuple((s, s) if isinstance(s, int) else tuple(s) for s in scales), "int", vocab_size)

    @classmethod
    def sequence(cls, n: int, vocab_size: int | None = None) -> "TokenLayout":
        return cls("sequence", (n,), "int", vocab_size)

    @classmethod
    def latent(cls, c: int, h: int, w: int) -> "TokenLayout":
        return cls("latent", (c, h, w), "float")

    # ---- sizes ---------------------------------------------------------------------------------------
    @property
    def num_tokens(self) -> int:
        """Positions a generator predicts per image (a latent map: one position per h, w cell)."""
        if self.kind == "pyramid":
            return sum(h * w for h, w in self.shape)
        if self.kind == "latent":
            return self.shape[1] * self.shape[2]
        return math.prod(self.shape)

    @property
    def flat_size(self) -> int:
        """Numbers per image once flattened (a latent map: c * h * w)."""
        return math.prod(self.shape) if self.kind == "latent" else self.num_tokens

    @property
    def torch_dtype(self) -> torch.dtype:
        return torch.int64 if self.dtype == "int" else torch.float32

    @property
    def grid_width(self) -> int:
        """Tokens per image row, for what needs a neighbour above (SJD's vertical init, mask mapping)."""
        if self.kind in ("grid", "latent"):
            return self.shape[-1]
        raise ConfigError(f"a {self.kind} token layout has no image rows (only grid and latent layouts do)")

    # ---- conversions ---------------------------------------------------------------------------------
    def flatten(self, tokens) -> torch.Tensor:
        """Native tokens -> (B, flat_size)."""
        self.check(tokens)
        if self.kind == "pyramid":
            return torch.cat([t.reshape(t.shape[0], -1) for t in tokens], dim=1)
        return tokens.reshape(tokens.shape[0], -1)

    def unflatten(self, flat: torch.Tensor):
        """(B, flat_size) -> native tokens (a list of per-scale grids for a pyramid)."""
        if not isinstance(flat, torch.Tensor) or flat.ndim != 2 or flat.shape[1] != self.flat_size:
            raise ConfigError(f"flat tokens must be (B, {self.flat_size}) for a {self.describe()}, got "
                              f"{tuple(getattr(flat, 'shape', ())) or type(flat).__name__}")
        b = flat.shape[0]
        if self.kind == "pyramid":
            parts = flat.split([h * w for h, w in self.shape], dim=1)
            return [p.reshape(b, h, w) for p, (h, w) in zip(parts, self.shape)]
        return flat.reshape(b, *self.shape)

    def check(self, tokens, who: str = "tokens") -> None:
        """ConfigError naming `who` unless `tokens` have this layout (per-image shape and int/float dtype)."""
        parts = list(tokens) if isinstance(tokens, (list, tuple)) else [tokens]
        if not all(isinstance(p, torch.Tensor) and p.ndim >= 1 for p in parts):
            raise ConfigError(f"{who}: expected tensors for a {self.describe()}, got {type(tokens).__name__}")
        got = [tuple(p.shape[1:]) for p in parts]
        want = list(self.shape) if self.kind == "pyramid" else [self.shape]
        if (self.kind == "pyramid") != isinstance(tokens, (list, tuple)) or got != want:
            raise ConfigError(f"{who}: per-image token shape {got if len(got) > 1 else got[0]} does not match the "
                              f"declared {self.describe()}; make the tokenizer's token_layout() and encode() agree")
        if any(p.is_floating_point() != (self.dtype == "float") for p in parts):
            raise ConfigError(f"{who}: got {parts[0].dtype} tokens but the layout declares {self.dtype} tokens")

    def describe(self) -> str:
        vocab = f", vocab {self.vocab_size}" if self.vocab_size else ""
        return f"{self.kind} layout {self.shape} ({self.dtype}{vocab})"

    def to_json(self) -> str:
        return json.dumps({"kind": self.kind, "shape": self.shape, "dtype": self.dtype,
                           "vocab_size": self.vocab_size})

    @classmethod
    def from_json(cls, text: str) -> "TokenLayout":
        d = json.loads(text)
        return cls(d["kind"], tuple(d["shape"]), d["dtype"], d.get("vocab_size"))


_SHAPE_HELP = {"grid": "(h, w)", "pyramid": "((h1, w1), (h2, w2), ...)", "sequence": "(n,)",
               "latent": "(c, h, w)"}


def _leaves(shape):
    for s in shape:
        yield from (_leaves(s) if isinstance(s, tuple) else (s,))


def image_hw(image_size) -> tuple[int, int]:
    """An image size given as an int (square) or (H, W)."""
    if isinstance(image_size, int):
        return image_size, image_size
    h, w = (int(x) for x in image_size)
    return h, w
