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
from typing import Any

import torch

from ..conditioning import check_class_labels, check_guidance
from ..errors import CheckpointError, ConfigError, MissingFileError
from ..io import atomic_write_text, check_writable

PIPELINE_CONFIG = "pipeline.json"


@dataclass
class PipelineOutput:
    images: Any                      # PIL list, np.uint8 (B,H,W,3) or torch float (B,3,H,W) in [0,1]
    tokens: Any = None               # what the generator drew (per-scale list, (B,N) grid...)
    labels: list[int] = field(default_factory=list)
    stats: dict = field(default_factory=dict)  # sampler statistics (forward passes, acceptance lengths, seconds)


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


def read_pipeline_config(folder: str | os.PathLike) -> dict:
    folder = Path(folder)
    path = folder / PIPELINE_CONFIG
    if not path.is_file():
        raise MissingFileError(f"{path} not found: a pipeline folder holds {PIPELINE_CONFIG} plus component "
                               f"folders (written by Pipeline.save_pretrained)")
    try:
        cfg = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON ({e}); fix it or write the folder again with "
                              f"save_pretrained") from None
    if not isinstance(cfg, dict) or not isinstance(cfg.get("defaults") or {}, dict):
        raise CheckpointError(f"{path} must hold an object with '_class' and a 'defaults' object")
    return cfg


def _expected(want) -> tuple[tuple, str]:
    """The types a sampling setting may take, judged by the pipeline's own default value, and their name."""
    if isinstance(want, bool):
        return (bool,), "true or false"
    if isinstance(want, int):
        return (int,), "an integer"
    if isinstance(want, float):
        return (int, float), "a number"
    return (type(want),), f"a {type(want).__name__}"


def check_defaults(defaults: dict, reference: dict, where: str) -> None:
    """Sampling defaults (pipeline.json's 'defaults') must be settings the pipeline knows, of the types it uses."""
    unknown = sorted(set(defaults) - set(reference))
    if unknown:
        raise ConfigError(f"{where}: unknown sampling setting(s) {unknown}; this pipeline knows {sorted(reference)}")
    for key, value in defaults.items():
        types_, kind = _expected(reference[key])
        if not isinstance(value, types_) or (isinstance(value, bool) and bool not in types_):
            raise ConfigError(f"{where}: {key} must be {kind} (e.g. {reference[key]!r}), got {value!r}")


def write_pipeline_config(folder: str | os.PathLike, cfg: dict) -> None:
    folder = Path(folder)
    check_writable(folder / PIPELINE_CONFIG)
    atomic_write_text(json.dumps(cfg, indent=2), folder / PIPELINE_CONFIG)


class Pipeline:
    """Save/load shared by every pipeline: `pipeline.json` + one folder per component.

    Subclasses keep their components in `self.tokenizer` / `self.generator`; `defaults` are sampling settings,
    `class_names` labels. The pair must be one registered family's, with matching sizes (checked here); the
    component classes of a folder are resolved through the registered families (vision_ar/family.py).
    """

    def __init__(self, tokenizer, generator, defaults: dict | None = None, class_names: list[str] | None = None):
        from ..family import family_of

        # a pair from two families, or of other sizes, raises here
        self.family = family_of(tokenizer=tokenizer, generator=generator)
        self.tokenizer = tokenizer.eval()
        self.generator = generator.eval()
        check_defaults(defaults or {}, self.default_settings(), f"{type(self).__name__} defaults")
        self.defaults = {**self.default_settings(), **(defaults or {})}
        self.class_names = class_names

    def default_settings(self) -> dict:
        return {}

    def check_request(self, class_labels, guidance_scale) -> tuple[list[int], float]:
        """The one validation of a call's class labels and guidance scale, before any work: every pipeline
        calls it first (labels in [0, num_classes); a finite guidance >= 0, with the family's "off" value)."""
        labels = check_class_labels(class_labels, self.num_classes)
        off = self.family.sampling.no_guidance
        return labels, check_guidance(guidance_scale, off=f"{off:g} means no guidance for this model")

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

    @classmethod
    def from_pretrained(cls, folder, device: str = "cpu"):
        from ..family import model_class

        folder = Path(folder)
        cfg = read_pipeline_config(folder)
        parts = {}
        for part in ("tokenizer", "generator"):
            config_path = folder / part / "config.json"
            if not config_path.is_file():
                raise MissingFileError(f"{config_path} not found: a pipeline folder holds {PIPELINE_CONFIG} plus "
                                       f"tokenizer/ and generator/ folders (written by Pipeline.save_pretrained)")
            try:
                name = json.loads(config_path.read_text()).get("_class", "")
            except json.JSONDecodeError as e:
                raise CheckpointError(f"{config_path} is not valid JSON: {e}") from e
            parts[part] = model_class(name, role=part).from_pretrained(folder / part)
        try:
            pipe = cls(parts["tokenizer"], parts["generator"], cfg.get("defaults"), cfg.get("class_names"))
        except ConfigError as e:  # its sampling defaults: say which file holds them
            raise ConfigError(f"{folder / PIPELINE_CONFIG}: {e}; fix the 'defaults' there") from None
        return pipe.to(device)
