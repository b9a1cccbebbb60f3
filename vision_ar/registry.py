"""One registry of named presets for every family (like timm's / DiT's `DiT_models`).

    @register_preset("var-d16", family="var")
    def var_d16(**overrides): return VAR(VARConfig(depth=16, ...).replace(**overrides))

`family` is the preset's group; a family (vision_ar/family.py) names the groups of its tokenizer and
generator presets. `create(name)` builds any preset; an unknown name lists the known ones. The presets are
registered by the model modules that the registered families import (`load_builtin_families`).
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
            raise ConfigError(f"preset '{name}' is registered twice (group {_PRESETS[name].family}); give the new "
                              f"preset another name")
        _PRESETS[name] = Preset(name, family, fn, description)
        return fn

    return deco


def unregister_preset(name: str) -> None:
    """Forget a preset (tests, notebooks)."""
    _PRESETS.pop(name, None)


def _load_all():
    from .family import load_builtin_families

    load_builtin_families()


def all_presets() -> list[Preset]:
    _load_all()
    return [_PRESETS[n] for n in sorted(_PRESETS)]


def list_presets(family: str | None = None) -> list[str]:
    return [p.name for p in all_presets() if family is None or p.family == family]


def get_preset(name: str) -> Preset:
    _load_all()
    if name not in _PRESETS:
        raise ConfigError(f"unknown preset '{name}'. Known presets: {', '.join(list_presets())}")
    return _PRESETS[name]


def create(name: str, **overrides):
    from .validation import build_with_overrides  # unknown / wrongly typed overrides get a clear error

    return build_with_overrides(name, get_preset(name).builder, overrides)
