"""Pipelines: tokenizer + generator + sampler -> images (diffusers-style `pipe(...).images`).

`load_pipeline` takes a shipped model name, a pipeline folder or an official preset; which names are shipped,
which pipeline class a folder holds and how an official release loads are each family's declaration
(vision_ar/family.py), not lists here.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError, MissingFileError
from .base import PipelineOutput, read_pipeline_config

# Models trained with this project's own commands and shipped inside the package (see README).
SHIPPED_DIR = Path(__file__).resolve().parents[1] / "weights"


def shipped_folders() -> dict[str, Path]:
    """Every registered family's shipped model name -> its folder (present in this installation or not)."""
    from ..family import shipped_folders as every_family_shipped

    return every_family_shipped()


def shipped_models() -> list[str]:
    return [n for n, d in shipped_folders().items() if (d / "pipeline.json").is_file()]


def __getattr__(name):
    # SHIPPED (name -> folder name) is computed from the registered families when asked for.
    if name == "SHIPPED":
        return {n: d.name for n, d in shipped_folders().items()}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def load_pipeline(name_or_folder: str, device: str = "cpu", **official_paths):
    """A shipped model name (`fmnist-var`), a pipeline folder, or an official preset with its checkpoint paths
    (`load_pipeline("var-d16", vae="vae_ch160v4096z32.pth", checkpoint="var_d16.pth")`)."""
    from ..family import families_of_group, pipeline_class

    shipped = shipped_folders()
    if name_or_folder in shipped:
        folder = shipped[name_or_folder]
        if not (folder / "pipeline.json").is_file():
            raise MissingFileError(f"the shipped model '{name_or_folder}' is not in this installation ({folder})")
    else:
        folder = Path(name_or_folder)
    if folder.is_dir():
        cfg = read_pipeline_config(folder)
        try:
            cls = pipeline_class(str(cfg.get("_class")))
        except ConfigError as e:
            raise ConfigError(f"{folder}/pipeline.json names an unknown pipeline class {cfg.get('_class')!r} "
                              f"({e})") from None
        return cls.from_pretrained(folder, device=device)
    from ..registry import get_preset

    preset = get_preset(name_or_folder)  # raises with the list of known names
    loaders = [f for f in families_of_group(preset.family, "generator") if f.official is not None]
    if not loaders:
        raise ConfigError(f"preset '{preset.name}' (family {preset.family}) is not a generator with a pipeline")
    official = loaders[0].official
    missing = [k for k in official.paths if not official_paths.get(k)]
    if missing:
        raise ConfigError(f"preset '{preset.name}' has no shipped weights: pass "
                          + " and ".join(f"--{k} PATH" for k in missing) + f" (the official {official.files})")
    given = {k: official_paths[k] for k in official.optional if official_paths.get(k)}
    return official.load(preset.name, {**given, **{k: official_paths[k] for k in official.paths}}, device)


__all__ = ["PipelineOutput", "load_pipeline", "shipped_models", "shipped_folders"]
