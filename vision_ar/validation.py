"""Checks of user-given values against the types their dataclass fields declare, with messages for people.

Settings arrive as JSON (`--set k=v`, `--model-set k=v`, config.json, pipeline.json), so a typo can hand a
string to a number field (`lr=abc`) or a string to a list field (`patch_nums: "1,2,3"`); without a check it
ends in a traceback deep inside the model, or worse, is silently misread ("1234" -> (1, 2, 3, 4)).
"""
from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

from .errors import ConfigError


def value_fits(value: Any, hint: Any) -> bool:
    """Whether `value` is of the annotated type. int counts as float; bool is not an int; a list fits a tuple
    (JSON has no tuples). Annotations this does not understand accept anything."""
    if hint is Any or hint is None:
        return hint is Any or value is None
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union or origin is types.UnionType:
        return any(value_fits(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if hint in (tuple, list) or origin in (tuple, list):
        if not isinstance(value, (tuple, list)):
            return False
        if not args or (len(args) == 2 and args[1] is Ellipsis):
            return not args or all(value_fits(v, args[0]) for v in value)
        if origin is tuple:
            return len(value) == len(args) and all(value_fits(v, a) for v, a in zip(value, args))
        return all(value_fits(v, args[0]) for v in value)
    if hint is dict or origin is dict:
        return isinstance(value, dict)
    return True


def describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union or origin is types.UnionType:
        return " or ".join(describe(a) for a in args)
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string", type(None): "null",
             dict: "a mapping"}
    if hint in names:
        return names[hint]
    if hint in (tuple, list) or origin in (tuple, list):
        if not args:
            return "a list"
        items = describe(args[0]).split(" ", 1)[-1] + "s"  # "a number" -> "numbers"
        if len(args) == 1 or args[1] is Ellipsis:
            return f"a list of {items}"
        return f"a list of {len(args)} {items}" if len(set(args)) == 1 else f"a list of {len(args)} values"
    return getattr(hint, "__name__", str(hint))


def field_types(cls: type) -> dict[str, Any]:
    """{field name: resolved annotation} of a dataclass ({} when the annotations cannot be resolved)."""
    try:
        hints = typing.get_type_hints(cls)
    except Exception:
        return {}
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.name in hints}


def check_values(values: dict, cls: type, what: str, fix: str = "") -> None:
    """Raise a ConfigError naming the first value in `values` whose type does not fit the field of `cls`."""
    hints = field_types(cls)
    for name, value in values.items():
        if name in hints and not value_fits(value, hints[name]):
            raise ConfigError(f"{what}: {name} must be {describe(hints[name])}, got {value!r} "
                              f"({type(value).__name__}){fix}")


def check_dataclass_types(obj, what: str | None = None, fix: str = "") -> None:
    """check_values over every field of a dataclass instance."""
    check_values({f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}, type(obj),
                 what or type(obj).__name__, fix)


def require_sampler(sampler: str, needed: str, **options) -> None:
    """Options of one sampler (e.g. SJD's window) given with another one are refused, not silently ignored."""
    given = [k for k, v in options.items() if v is not None]
    if given and sampler != needed:
        flags = " and ".join("--" + k.replace("_", "-") for k in given)
        raise ConfigError(f"{flags} only apply with --sampler {needed} (this run uses --sampler {sampler}): add "
                          f"--sampler {needed}, or drop {flags}")


# ----------------------------------------------------------------------------------------------------
# Preset overrides (`create(name, **overrides)`, `--model-set k=v`)
# ----------------------------------------------------------------------------------------------------
def _config_class_of(builder) -> type | None:
    """The config dataclass of the model a preset builds, found by building it on the meta device (no
    memory, no weights): only done to explain a failure."""
    import torch

    try:
        with torch.device("meta"):
            model = builder()
    except Exception:
        return None
    cfg = getattr(model, "config", None)
    return type(cfg) if dataclasses.is_dataclass(cfg) else None


def check_overrides(preset: str, overrides: dict, config_cls: type | None) -> None:
    if config_cls is None:
        return
    known = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ConfigError(f"preset '{preset}' has no config field {', '.join(map(repr, unknown))} (--model-set); "
                          f"known fields: {', '.join(sorted(known))}")
    check_values(overrides, config_cls, f"preset '{preset}'",
                 fix=" (--model-set values are read as JSON, e.g. patch_nums=[1,2,4])")


def build_with_overrides(preset: str, builder, overrides: dict):
    """builder(**overrides), with unknown fields and wrongly typed values named instead of a traceback."""
    from .errors import VisionARError

    try:
        model = builder(**overrides)
    except VisionARError:
        raise
    except (TypeError, ValueError, AttributeError):
        if overrides:
            check_overrides(preset, overrides, _config_class_of(builder))  # raises when it finds the culprit
        raise
    cfg = getattr(model, "config", None)
    if overrides and dataclasses.is_dataclass(cfg):
        check_overrides(preset, overrides, type(cfg))
    return model
