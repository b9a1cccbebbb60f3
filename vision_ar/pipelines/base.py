"""What every pipeline shares: the output object, image conversion, argument checks, folder layout.

A pipeline joins a tokenizer, a generator and a sampler:

    pipe = load_pipeline("fmnist-var")
    out = pipe(class_labels=[0, 7], guidance_scale=2.0, generator=torch.Generator().manual_seed(0))
    out.images  # list of PIL images (output_type="pil"), uint8 array (B,H,W,3) ("np") or float (B,3,H,W) in [0,1] ("pt")

A pipeline folder holds `pipeline.json` (which class, sampler defaults, class names) and one sub-folder per
component (`tokenizer/`, `generator/`), each written by the component's `save_pretrained`.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..errors import ConfigError, MissingFileError
from ..io import atomic_write_text, check_writable
from .editing import EditingMixin

PIPELINE_CONFIG = "pipeline.json"


@dataclass
class PipelineOutput:
    images: Any                      # PIL list, np.uint8 (B,H,W,3) or torch float (B,3,H,W) in [0,1]
    tokens: Any = None               # what the generator drew (per-scale list, (B,N) grid...)
    labels: list[int] = field(default_factory=list)
    stats: dict = field(default_factory=dict)  # sampler statistics (forward passes, acceptance lengths, seconds)
    known_tokens: Any = None         # editing: which tokens were kept from the input (bool, in the tokens' layout)


def to_output_type(images01: torch.Tensor, output_type: str):
    """images01: float (B,3,H,W) in [0,1] -> the requested type."""
    if output_type == "pt":
        return images01
    arr = (images01.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    if output_type == "np":
        return arr
    if output_type == "pil":
        from PIL import Image

        return [Image.fromarray(a) for a in arr]
    raise ConfigError(f"output_type must be 'pil', 'np' or 'pt', got {output_type!r}")


def check_class_labels(class_labels: Sequence[int] | int | torch.Tensor, num_classes: int) -> list[int]:
    """Validate class ids before any work: ints in [0, num_classes)."""
    if isinstance(class_labels, int):
        class_labels = [class_labels]
    labels = [int(c) for c in (class_labels.tolist() if torch.is_tensor(class_labels) else class_labels)]
    if not labels:
        raise ConfigError("class_labels is empty: give at least one class id")
    bad = [c for c in labels if not 0 <= c < num_classes]
    if bad:
        raise ConfigError(f"class ids {bad} are out of range: this model knows classes 0..{num_classes - 1}")
    return labels


def check_guidance(guidance_scale: float) -> float:
    g = float(guidance_scale)
    if not np.isfinite(g) or g < 0:
        raise ConfigError(f"guidance_scale (CFG) must be a finite number >= 0, got {guidance_scale}; "
                          f"0 or 1 means no guidance depending on the family (see the model card)")
    return g


def read_pipeline_config(folder: str | os.PathLike) -> dict:
    folder = Path(folder)
    path = folder / PIPELINE_CONFIG
    if not path.is_file():
        raise MissingFileError(f"{path} not found: a pipeline folder holds {PIPELINE_CONFIG} plus component "
                               f"folders (written by Pipeline.save_pretrained)")
    return json.loads(path.read_text())


def write_pipeline_config(folder: str | os.PathLike, cfg: dict) -> None:
    folder = Path(folder)
    check_writable(folder / PIPELINE_CONFIG)
    atomic_write_text(json.dumps(cfg, indent=2), folder / PIPELINE_CONFIG)


class Pipeline(EditingMixin):
    """Save/load shared by every pipeline: `pipeline.json` + one folder per component; inpaint / outpaint / edit
    (`editing.py`) for the families that declare them.

    Subclasses set `tokenizer_class` / `generator_class` (import paths, resolved lazily) and keep their
    components in `self.tokenizer` / `self.generator`; `defaults` are sampling settings, `class_names` labels.
    """

    tokenizer_class: str = ""
    generator_class: str = ""

    def __init__(self, tokenizer, generator, defaults: dict | None = None, class_names: list[str] | None = None):
        self.tokenizer = tokenizer.eval()
        self.generator = generator.eval()
        self.defaults = {**self.default_settings(), **(defaults or {})}
        self.class_names = class_names

    def default_settings(self) -> dict:
        return {}

    def setting(self, value, key: str):
        """A call's argument, or the pipeline's default when the caller left it as None."""
        return self.defaults[key] if value is None else value

    @property
    def num_classes(self) -> int:
        return self.generator.config.num_classes

    def to(self, device):
        self.tokenizer.to(device)
        self.generator.to(device)
        return self

    def save_pretrained(self, folder):
        folder = Path(folder)
        self.tokenizer.save_pretrained(folder / "tokenizer")
        self.generator.save_pretrained(folder / "generator")
        write_pipeline_config(folder, {"_class": type(self).__name__, "defaults": self.defaults,
                                       "class_names": self.class_names})
        return folder

    @staticmethod
    def _resolve(path: str):
        import importlib

        module, name = path.rsplit(".", 1)
        return getattr(importlib.import_module(module), name)

    @classmethod
    def from_pretrained(cls, folder, device: str = "cpu"):
        folder = Path(folder)
        cfg = read_pipeline_config(folder)
        tokenizer = cls._resolve(cls.tokenizer_class).from_pretrained(folder / "tokenizer")
        generator = cls._resolve(cls.generator_class).from_pretrained(folder / "generator")
        return cls(tokenizer, generator, cfg.get("defaults"), cfg.get("class_names")).to(device)
