"""Pipelines: tokenizer + generator + sampler -> images (diffusers-style `pipe(...).images`)."""
from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError, MissingFileError
from .base import PipelineOutput, read_pipeline_config

# Models trained with this project's own commands and shipped inside the package (see README).
SHIPPED_DIR = Path(__file__).resolve().parents[1] / "weights"
SHIPPED = {"fmnist-var": "fmnist_var", "fmnist-gpt": "fmnist_gpt"}
# Generator family -> (pipeline class, the flag naming its tokenizer checkpoint, the official files to pass).
OFFICIAL = {"var": ("VARPipeline", "vae", "vae_ch160v4096z32.pth and var_d*.pth files"),
            "next-token": ("GPTPipeline", "vq", "vq_ds16_c2i.pt and c2i_*.pt files")}


def _classes():
    from .gpt import GPTPipeline
    from .var import VARPipeline

    return {"VARPipeline": VARPipeline, "GPTPipeline": GPTPipeline}


def shipped_models() -> list[str]:
    return [n for n, d in SHIPPED.items() if (SHIPPED_DIR / d / "pipeline.json").is_file()]


def load_pipeline(name_or_folder: str, device: str = "cpu", **official_paths):
    """A shipped model name (`fmnist-var`), a pipeline folder, or an official preset with its checkpoint paths
    (`load_pipeline("var-d16", vae="vae_ch160v4096z32.pth", checkpoint="var_d16.pth")`)."""
    if name_or_folder in SHIPPED:
        folder = SHIPPED_DIR / SHIPPED[name_or_folder]
        if not (folder / "pipeline.json").is_file():
            raise MissingFileError(f"the shipped model '{name_or_folder}' is not in this installation ({folder})")
    else:
        folder = Path(name_or_folder)
    if folder.is_dir():
        cfg = read_pipeline_config(folder)
        cls = _classes().get(cfg.get("_class"))
        if cls is None:
            raise ConfigError(f"{folder}/pipeline.json names an unknown pipeline class {cfg.get('_class')!r}")
        return cls.from_pretrained(folder, device=device)
    from ..registry import get_preset

    preset = get_preset(name_or_folder)  # raises with the list of known names
    if preset.family not in OFFICIAL:
        raise ConfigError(f"preset '{preset.name}' (family {preset.family}) is not a generator with a pipeline")
    class_name, tokenizer_flag, files = OFFICIAL[preset.family]
    missing = [k for k in (tokenizer_flag, "checkpoint") if not official_paths.get(k)]
    if missing:
        raise ConfigError(f"preset '{preset.name}' has no shipped weights: pass "
                          + " and ".join(f"--{k} PATH" for k in missing) + f" (the official {files})")
    cls = _classes()[class_name]
    return cls.from_official(preset.name, official_paths[tokenizer_flag], official_paths["checkpoint"], device)


__all__ = ["PipelineOutput", "load_pipeline", "shipped_models"]
