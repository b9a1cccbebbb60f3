"""Editing masks: what the user gives in pixels, checked, and mapped onto a tokenizer's token layout.

Convention (the diffusers one): a mask marks the region to GENERATE. True / white / 1 = generate there,
False / black / 0 = keep the input image there. Internally the code works on its complement, `known`
(B, H, W) bool: the pixels that are kept.

A mask may be
  * a PIL image of the image's size (any mode; converted to grey, > 127 = generate),
  * a numpy array or torch tensor (H, W), (B, H, W) or (B, 1, H, W): bool, or integers / floats that are all 0 or 1,
  * a box (top, left, bottom, right): ints are pixels (bottom and right exclusive), floats in [0, 1] are fractions
    of the image's height and width (rounded to the nearest pixel),
  * the path of a mask image file.

THE RULE that maps a pixel mask onto tokens (the same for every tokenizer):
  a token is known (kept from the input) when every pixel of its footprint is known. The footprint of token
  (i, j) of a rows x cols grid laid over an H x W image is the rectangle rows [i*H/rows, (i+1)*H/rows) x
  columns [j*W/cols, (j+1)*W/cols); every pixel overlapping that rectangle belongs to it. With `any_part=True` a
  token is known when ANY pixel of its footprint is known (more of the input is kept; only tokens lying entirely
  in the generated region are generated).

Layouts: the tokenizer's own `TokenLayout` (`tokenizer.token_layout(image_size)`, vision_ar/tokens.py), never a
square-root guess:
  * a 2-D grid (VQ tokenizers): the rule above, once;
  * a latent map (C, h, w) (KL tokenizers, xAR): the rule above on its h x w positions (all C channels of a
    position are known or not together);
  * a per-scale pyramid (VAR's multi-scale tokens), two ways (`scale_rule`):
      "official": the rule above gives the finest scale (P x P); each coarser scale follows from the finest
        exactly as VAR's official zero-shot edit does it (so the official edits are reproduced): the finest map
        resized with bilinear interpolation (align_corners=False, float32) and kept where the value is > 1/2; a
        scale of at most 3 tokens (the 1 x 1 first scale) is always kept, whatever the mask. Coarse scales are
        thus mostly kept: the input's global layout stays (good for restoring a region);
      "footprint": the rule above at every scale, the first one included: a coarse token whose footprint touches
        the generated region is generated, so the global layout can change (what a new class needs);
  * a 1-D sequence (FlexTok): tokens have no footprint, so a pixel mask cannot be mapped (error).
"""
from __future__ import annotations

import numbers
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError, DataError
from ..tokens import TokenLayout


# ----------------------------------------------------------------------------------------------------
# Reading the user's mask -> `generate` (B, H, W) bool
# ----------------------------------------------------------------------------------------------------
def _box_to_pixels(box: Sequence, H: int, W: int) -> tuple[int, int, int, int]:
    if len(box) != 4 or not all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in box):
        raise ConfigError(f"a box is (top, left, bottom, right) as 4 numbers, got {box!r}")
    if any(isinstance(v, float) for v in box):  # fractions of the image
        if not all(0.0 <= v <= 1.0 for v in box):
            raise ConfigError(f"a box given as floats is in fractions of the image (0..1), got {box!r}; give "
                              f"pixel boxes as ints.")
        top, left, bottom, right = (round(box[0] * H), round(box[1] * W), round(box[2] * H), round(box[3] * W))
    else:
        top, left, bottom, right = (int(v) for v in box)
    if not (0 <= top < bottom <= H and 0 <= left < right <= W):
        raise ConfigError(f"box (top, left, bottom, right) = {(top, left, bottom, right)} pixels is empty or leaves "
                          f"the {H}x{W} image; need 0 <= top < bottom <= {H} and 0 <= left < right <= {W}.")
    return top, left, bottom, right


def read_image_file(path: str | os.PathLike, what: str = "image"):
    """Open an image file with PIL; a missing or non-image file raises an error naming it."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} file {path} not found; give the path of a PNG or JPEG file.")
    try:
        with Image.open(path) as im:
            im.load()
            return im.copy()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{what} file {path} is not an image PIL can read ({e}); give a PNG or JPEG file.") from e


def _array_to_bool(arr: torch.Tensor, what: str) -> torch.Tensor:
    if arr.dtype == torch.bool:
        return arr
    if arr.is_complex():
        raise ConfigError(f"{what} must be bool or 0/1 values, got dtype {arr.dtype}")
    vals = torch.unique(arr)
    if not bool(((vals == 0) | (vals == 1)).all()):
        raise ConfigError(f"{what} must be bool or hold only 0 and 1 (1 = generate), got values "
                          f"{vals[:6].tolist()}{'...' if vals.numel() > 6 else ''}; threshold it first.")
    return arr != 0


def generate_region(mask, image_size: tuple[int, int], batch_size: int = 1) -> torch.Tensor:
    """The user's mask -> (B, H, W) bool, True where the image is to be generated (see the module doc)."""
    H, W = image_size
    if mask is None:
        raise ConfigError("no mask given: pass a mask image, a bool tensor or a box (top, left, bottom, right) "
                          "marking the region to generate.")
    if isinstance(mask, (str, os.PathLike)):
        mask = read_image_file(mask, "mask")
    if isinstance(mask, (tuple, list)) and len(mask) == 4 and all(isinstance(v, numbers.Real) for v in mask):
        top, left, bottom, right = _box_to_pixels(mask, H, W)
        out = torch.zeros(batch_size, H, W, dtype=torch.bool)
        out[:, top:bottom, left:right] = True
        return out
    if hasattr(mask, "convert") and hasattr(mask, "size"):  # a PIL image
        grey = np.asarray(mask.convert("L"))
        region = torch.from_numpy(grey > 127)
    elif isinstance(mask, np.ndarray):
        region = _array_to_bool(torch.from_numpy(np.array(mask, copy=True)), "the mask array")
    elif isinstance(mask, torch.Tensor):
        region = _array_to_bool(mask.detach().cpu(), "the mask tensor")
    else:
        raise ConfigError(f"cannot use a {type(mask).__name__} as a mask: give a PIL image, a bool array/tensor, a box "
                          f"(top, left, bottom, right) or a mask file path.")
    if region.ndim == 4 and region.shape[1] == 1:
        region = region[:, 0]
    if region.ndim == 2:
        region = region[None]
    if region.ndim != 3:
        raise ConfigError(f"a mask is (H, W), (B, H, W) or (B, 1, H, W), got shape {tuple(region.shape)}")
    if tuple(region.shape[1:]) != (H, W):
        raise ConfigError(f"the mask is {region.shape[1]}x{region.shape[2]} but the image is {H}x{W}; give a mask "
                          f"of the image's size (or a box).")
    if region.shape[0] not in (1, batch_size):
        raise ConfigError(f"{region.shape[0]} masks for {batch_size} images; give one mask, or one per image.")
    return region.expand(batch_size, H, W).clone()


# ----------------------------------------------------------------------------------------------------
# Out-painting: where the input goes on a larger canvas
# ----------------------------------------------------------------------------------------------------
DIRECTIONS = {"left": "left", "right": "right", "top": "top", "up": "top", "bottom": "bottom", "down": "bottom"}


@dataclass(frozen=True)
class Canvas:
    """An out-painting canvas of height x width pixels with the input image's top-left corner at (top, left)."""
    height: int
    width: int
    top: int = 0
    left: int = 0


def outpaint_canvas(image_size: tuple[int, int], canvas_or_direction, amount: float | int = 0.5) -> Canvas:
    """A Canvas from what the caller gave, checked against the image size (h, w).

    canvas_or_direction:
      * a direction "left" | "right" | "top" ("up") | "bottom" ("down"), or several joined by "+" ("left+right"):
        the canvas grows by `amount` on that side (an int: pixels; a float: fraction of the image's side);
      * a Canvas, or (height, width) (image centred), or (height, width, top, left).
    """
    h, w = image_size
    if isinstance(canvas_or_direction, str):
        names = [s.strip().lower() for s in canvas_or_direction.split("+")]
        unknown = [n for n in names if n not in DIRECTIONS]
        if unknown or not names:
            raise ConfigError(f"unknown out-painting direction(s) {unknown or names}; use left, right, top, bottom "
                              f"(or several joined by '+'), or give a canvas (height, width[, top, left]).")
        if isinstance(amount, bool) or not isinstance(amount, numbers.Real) or not amount > 0:
            raise ConfigError(f"amount={amount!r} must be > 0 (an int: pixels; a float: fraction of the image side)")
        sides = {DIRECTIONS[n] for n in names}

        def grow(side_len: int) -> int:
            return int(amount) if isinstance(amount, numbers.Integral) else max(1, round(float(amount) * side_len))

        top = grow(h) if "top" in sides else 0
        left = grow(w) if "left" in sides else 0
        return Canvas(h + top + (grow(h) if "bottom" in sides else 0), w + left + (grow(w) if "right" in sides else 0),
                      top, left)
    if isinstance(canvas_or_direction, Canvas):
        canvas = canvas_or_direction
    elif isinstance(canvas_or_direction, (tuple, list)) and len(canvas_or_direction) in (2, 4) and \
            all(isinstance(v, numbers.Integral) for v in canvas_or_direction):
        vals = [int(v) for v in canvas_or_direction]
        if len(vals) == 2:
            vals += [(vals[0] - h) // 2, (vals[1] - w) // 2]
        canvas = Canvas(*vals)
    else:
        raise ConfigError(f"out-painting needs a direction ('right', 'left+top', ...) or a canvas (height, width) / "
                          f"(height, width, top, left) in pixels, got {canvas_or_direction!r}")
    if canvas.height < h or canvas.width < w:
        raise ConfigError(f"the out-painting canvas {canvas.height}x{canvas.width} is smaller than the "
                          f"{h}x{w} image; a canvas must contain the image.")
    if not (0 <= canvas.top <= canvas.height - h and 0 <= canvas.left <= canvas.width - w):
        raise ConfigError(f"the image ({h}x{w}) at top={canvas.top}, left={canvas.left} does not fit on the "
                          f"{canvas.height}x{canvas.width} canvas; need 0 <= top <= {canvas.height - h} and "
                          f"0 <= left <= {canvas.width - w}.")
    return canvas


# ----------------------------------------------------------------------------------------------------
# Pixels -> tokens
# ----------------------------------------------------------------------------------------------------
def _footprint_edges(n_tokens: int, n_pixels: int) -> tuple[list[int], list[int]]:
    """First and one-past-last pixel overlapping each token's span [i*n_pixels/n_tokens, (i+1)*n_pixels/n_tokens)."""
    starts = [(i * n_pixels) // n_tokens for i in range(n_tokens)]
    ends = [-((-(i + 1) * n_pixels) // n_tokens) for i in range(n_tokens)]  # ceil
    return starts, ends


def footprint_known(known: torch.Tensor, grid: tuple[int, int], any_part: bool = False) -> torch.Tensor:
    """known pixels (B, H, W) bool -> known tokens (B, rows, cols) bool of a rows x cols grid by THE RULE
    (module doc)."""
    B, H, W = known.shape
    rows, cols = grid
    if rows > H or cols > W:
        raise ConfigError(f"a {rows}x{cols} token grid is finer than the {H}x{W} mask")
    # integral image of known pixels: count inside any rectangle in O(1)
    ii = F.pad(known.to(torch.int64).cumsum(1).cumsum(2), (1, 0, 1, 0))
    r0, r1 = (torch.tensor(v) for v in _footprint_edges(rows, H))
    c0, c1 = (torch.tensor(v) for v in _footprint_edges(cols, W))
    R0, C0, R1, C1 = r0[:, None], c0[None, :], r1[:, None], c1[None, :]
    count = ii[:, R1, C1] - ii[:, R0, C1] - ii[:, R1, C0] + ii[:, R0, C0]  # (B, rows, cols)
    return count > 0 if any_part else count == (R1 - R0) * (C1 - C0)


def pyramid_from_finest(finest_known: torch.Tensor, scales: Sequence[tuple[int, int]]) -> list[torch.Tensor]:
    """The finest scale's known map (B, P, Q) (bool or 0/1 float) -> one (B, rows, cols) bool map per scale
    (`scales`: (rows, cols) coarse to fine, a pyramid layout's shape).

    VAR's official rule (module doc): bilinear resize, align_corners=False, in float32, kept where strictly > 1/2;
    scales with at most 3 tokens are always kept. Exact ties (value 1/2) are decided by float32 rounding inside the
    resize, as in the official code, so the official maps are reproduced bit for bit.
    """
    fine = finest_known.to(torch.float32)
    if tuple(fine.shape[1:]) != tuple(scales[-1]):
        raise ConfigError(f"the finest known map is {tuple(fine.shape[1:])} but the pyramid's finest scale is "
                          f"{scales[-1][0]}x{scales[-1][1]}")
    maps = []
    for rows, cols in scales:
        if rows * cols <= 3:
            maps.append(torch.ones(fine.shape[0], rows, cols, dtype=torch.bool, device=fine.device))
        else:
            resized = F.interpolate(fine[:, None], size=(rows, cols), mode="bilinear", align_corners=False)
            maps.append(resized[:, 0] > 0.5)
    return maps


SCALE_RULES = ("official", "footprint")


def known_tokens(known: torch.Tensor, layout: TokenLayout, any_part: bool = False, scale_rule: str = "official"):
    """Known pixels (B, H, W) bool -> known tokens in `layout`: (B, rows, cols) for a grid or a latent map's
    positions, a list of per-scale (B, rows, cols) maps for a pyramid (`scale_rule`: module doc). A 1-D sequence
    has no footprint: error."""
    if not isinstance(layout, TokenLayout):
        raise ConfigError(f"known_tokens needs a vision_ar.tokens.TokenLayout (tokenizer.token_layout(size)), got "
                          f"{type(layout).__name__}")
    if layout.kind == "grid":
        return footprint_known(known, layout.shape, any_part)
    if layout.kind == "latent":
        return footprint_known(known, layout.shape[1:], any_part)
    if layout.kind == "pyramid":
        if scale_rule == "official":
            return pyramid_from_finest(footprint_known(known, layout.shape[-1], any_part), layout.shape)
        if scale_rule == "footprint":
            return [footprint_known(known, scale, any_part) for scale in layout.shape]
        raise ConfigError(f"scale_rule={scale_rule!r}: choose 'official' (VAR's zero-shot edit: coarse scales kept) "
                          f"or 'footprint' (every scale by the footprint rule)")
    raise ConfigError(f"the tokens are a {layout.describe()} with no spatial footprint, so a pixel mask cannot say "
                      f"which tokens are known; this tokenizer's family must edit another way (or refuse).")
