"""The one check of class labels and of the guidance scale, with one set of messages.

Pipelines run it once at their boundary (`Pipeline.check_request`); the samplers and models, which people
also call directly, run the same functions on what they are given, so every path says the same thing.
"""
from __future__ import annotations

import math
import numbers
from typing import Sequence

import torch

from .errors import ConfigError


def label_list(class_labels: Sequence[int] | int | torch.Tensor) -> list[int]:
    """An int, a sequence of ints or a 1-D integer tensor -> a list of ints (non-empty)."""
    if isinstance(class_labels, numbers.Integral) and not isinstance(class_labels, bool):
        class_labels = [int(class_labels)]
    if torch.is_tensor(class_labels):
        if class_labels.is_floating_point() or class_labels.is_complex() or class_labels.ndim != 1:
            raise ConfigError(f"class labels must be a 1-D integer tensor (B,), got shape "
                              f"{tuple(class_labels.shape)} dtype {class_labels.dtype}; pass torch.tensor([207, 360]).")
        labels = class_labels.tolist()
    elif isinstance(class_labels, Sequence) and all(
            isinstance(c, numbers.Integral) and not isinstance(c, bool) for c in class_labels):
        labels = [int(c) for c in class_labels]
    else:
        raise ConfigError(f"class labels must be an int, a list of ints or a 1-D integer tensor; got {class_labels!r}")
    if not labels:
        raise ConfigError("class_labels is empty: give at least one class id")
    return labels


def check_label_range(labels: list[int], num_classes: int, *, allow_null: bool = False,
                      allow_unconditional: bool = False) -> None:
    """ConfigError unless every label is a class id in [0, num_classes); `allow_null` also admits
    `num_classes` (the learned null class of guidance, as models see it), `allow_unconditional` admits -1."""
    def ok(c):
        return 0 <= c < num_classes or (allow_null and c == num_classes) or (allow_unconditional and c == -1)

    bad = sorted({c for c in labels if not ok(c)})
    if bad:
        extra = (f", {num_classes} = the null class" if allow_null else "") + \
                (", or -1 for unconditional" if allow_unconditional else "")
        raise ConfigError(f"class labels {bad[:10]}{' ...' if len(bad) > 10 else ''} are out of range: this model "
                          f"knows classes 0..{num_classes - 1}{extra}; use ids of the classes it was trained on")


def check_class_labels(class_labels, num_classes: int, **allow) -> list[int]:
    """Validate class ids before any work -> the labels as a list of ints."""
    labels = label_list(class_labels)
    check_label_range(labels, num_classes, **allow)
    return labels


def check_guidance(scale, name: str = "guidance_scale (CFG)", off: str = "") -> float:
    """A finite guidance scale >= 0 -> float. `off` says which value means no guidance for the caller's family."""
    try:
        g = float(scale)
    except (TypeError, ValueError):
        g = math.nan
    if not math.isfinite(g) or g < 0:
        raise ConfigError(f"{name} must be a finite number >= 0, got {scale}"
                          + (f"; {off}" if off else "; 0 or 1 means no guidance depending on the family"))
    return g
