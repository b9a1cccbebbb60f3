"""One registry of named presets for every family (like timm's / DiT's `DiT_models`).

    @register_preset("var-d16", family="var")
    def var_d16(**overrides): return VAR(VARConfig(depth=16, ...).replace(**overrides))

`create(name)` builds any preset; an unknown name lists the known ones.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .errors import ConfigError


@dataclass
class Preset:
    name: str
    family: str
    builder: Callable
    description: str = ""


_PRESETS: dict[str, Preset] = {}


def register_preset(name: str, family: str, description: str = ""):
    def deco(fn):
        if name in _PRESETS:
            raise ConfigError(f"preset '{name}' is registered twice")
        _PRESETS[name] = Preset(name, family, fn, description)
        return fn

    return deco


def _load_all():
    # Import the modules that register presets (cheap, no weights).
    import importlib

    for mod in ("vision_ar.models.next_scale", "vision_ar.models.next_token", "vision_ar.tokenizers.multiscale",
                "vision_ar.tokenizers.vq"):
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name != mod:
                raise


def list_presets(family: str | None = None) -> list[str]:
    _load_all()
    return sorted(n for n, p in _PRESETS.items() if family is None or p.family == family)


def get_preset(name: str) -> Preset:
    _load_all()
    if name not in _PRESETS:
        raise ConfigError(f"unknown preset '{name}'. Known presets: {', '.join(list_presets())}")
    return _PRESETS[name]


def create(name: str, **overrides):
    from .validation import build_with_overrides  # unknown / wrongly typed overrides get a clear error

    return build_with_overrides(name, get_preset(name).builder, overrides)
