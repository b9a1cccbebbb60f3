"""Model families: one declaration each, and the lookups the rest of the package uses instead of naming classes.

A family (VAR, the next-token GPT, ...) is one module that builds a `Family` and calls `register_family`.
Built-in families are the modules of the `vision_ar.families` package, found by iterating over it; a family
defined anywhere else (a notebook, a test) registers itself the same way. See docs/family_contract.md.

    fam = family_of(tokenizer=tok, generator=gen)     # the family of a pair (raises on a mismatched pair)
    fam.size_generator(tok, layout)                    # generator config fields that come from the tokenizer
    fam.generator_task(gen, tok)                       # the training task on cached tokens
"""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Mapping

from .errors import ConfigError

DOC = "docs/family_contract.md"
TOKENIZER_API = ("encode", "decode", "token_layout")
MODEL_FOLDER_API = ("save_pretrained", "from_pretrained")


# ----------------------------------------------------------------------------------------------------
# The parts of a declaration
# ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SamplingConvention:
    """How a family's pipeline draws tokens: the sampler names `pipe(sampler=...)` accepts (the first is the
    default), the classifier-free-guidance form, the guidance value that means "off", the logits filters."""

    samplers: tuple[str, ...] = ("default",)
    guidance: str = ""
    no_guidance: float = 1.0
    filters: Any = ""


@dataclass(frozen=True)
class Flag:
    """A command-line flag a family adds to `vision-ar sample` / `vision-ar eval`.

    to="load": the value goes to `load_pipeline(name, **{kwarg: value})` (official checkpoint paths);
    to="call": to `pipe(..., kwarg=value)` (sampling settings). Only flags the user set are passed.
    """

    name: str                     # "--vae"
    help: str = ""
    to: str = "call"              # "load" | "call"
    kwarg: str | None = None      # default: the flag name without dashes, '-' -> '_'
    type: Callable | None = str
    action: str | None = None     # e.g. "store_true" (then `type` is ignored)
    sampler: str | None = None    # only meaningful with this --sampler (e.g. "sjd"); refused with another one

    def __post_init__(self):
        if not self.name.startswith("--"):
            raise ConfigError(f"flag {self.name!r} must start with '--'")
        if self.to not in ("load", "call"):
            raise ConfigError(f"flag {self.name}: to={self.to!r} must be 'load' (load_pipeline) or 'call' (pipe(...))")
        if self.kwarg is None:
            object.__setattr__(self, "kwarg", self.name[2:].replace("-", "_"))

    @property
    def dest(self) -> str:
        return self.name[2:].replace("-", "_")

    def argparse_kwargs(self) -> dict:
        kw = {"help": self.help, "default": None, "dest": self.dest}
        if self.action:
            kw["action"] = self.action
        elif self.type is not None:
            kw["type"] = self.type
        return kw


@dataclass(frozen=True)
class Official:
    """An official release of the family: `load_pipeline(preset, **paths)` needs a `--<path> PATH` for each
    name in `paths`, and then calls `load(preset, paths, device)`; `files` says which files those are.
    `optional` paths are passed on when given (e.g. a VAE folder found elsewhere by default);
    `load_tokenizer(preset, paths, device)`, when declared, loads the official tokenizer alone (for
    `vision-ar reconstruct`), needing only the paths it uses."""

    paths: tuple[str, ...]
    files: str
    load: Callable
    optional: tuple[str, ...] = ()
    load_tokenizer: Callable | None = None


# ----------------------------------------------------------------------------------------------------
# The declaration
# ----------------------------------------------------------------------------------------------------
_REQUIRED = {
    "name": "a unique name (str)",
    "tokenizer_classes": "the tokenizer class(es) (a tuple of classes with encode / decode / token_layout)",
    "generator_class": "the generator class",
    "pipeline_class": "the pipeline class (a vision_ar.pipelines.base.Pipeline subclass)",
    "tokenizer_presets": "the preset group of its tokenizers (register_preset(..., family=GROUP))",
    "generator_presets": "the preset group of its generators",
    "size_generator": "a callable (tokenizer, layout) -> dict of generator config fields",
    "generator_task": "a callable (generator, tokenizer) -> training Task",
}


@dataclass(frozen=True)
class Family:
    name: str = None
    tokenizer_classes: tuple = None
    generator_class: type = None
    pipeline_class: type = None
    tokenizer_presets: str = None
    generator_presets: str = None
    size_generator: Callable = None
    generator_task: Callable = None
    tokenizer_task: Callable | None = None           # None: the shared TokenizerTask(tokenizer, loss_cfg)
    cache_encoder: Callable | None = None            # None: generator runs cache tokenizer.encode (its layout)
    sampling: SamplingConvention = SamplingConvention()
    cli_flags: tuple[Flag, ...] = ()
    official: Official | None = None
    shipped: Mapping[str, str] = field(default_factory=dict)  # model name -> folder (under vision_ar/weights)
    edit_methods: tuple[str, ...] = ()
    description: str = ""

    def __post_init__(self):
        who = f"family {self.name!r}" if isinstance(self.name, str) and self.name else "a family"
        missing = [f"{k} ({what})" for k, what in _REQUIRED.items() if getattr(self, k) in (None, "", ())]
        if missing:
            raise ConfigError(f"{who} is missing {'; '.join(missing)}; see {DOC}")
        if isinstance(self.tokenizer_classes, type):
            object.__setattr__(self, "tokenizer_classes", (self.tokenizer_classes,))
        object.__setattr__(self, "tokenizer_classes", tuple(self.tokenizer_classes))
        object.__setattr__(self, "cli_flags", tuple(self.cli_flags))
        object.__setattr__(self, "edit_methods", tuple(self.edit_methods))
        object.__setattr__(self, "shipped", MappingProxyType(dict(self.shipped)))
        for cls in self.tokenizer_classes:
            _need_class(who, "tokenizer", cls, TOKENIZER_API + MODEL_FOLDER_API)
        _need_class(who, "generator", self.generator_class, ("token_layout",) + MODEL_FOLDER_API)
        from .pipelines.base import Pipeline

        if not (isinstance(self.pipeline_class, type) and issubclass(self.pipeline_class, Pipeline)):
            raise ConfigError(f"{who}: pipeline_class must be a subclass of vision_ar.pipelines.base.Pipeline, got "
                              f"{self.pipeline_class!r}")
        for k in ("size_generator", "generator_task", "tokenizer_task", "cache_encoder"):
            if getattr(self, k) is not None and not callable(getattr(self, k)):
                raise ConfigError(f"{who}: {k} must be callable; see {DOC}")
        if not isinstance(self.sampling, SamplingConvention) or not self.sampling.samplers:
            raise ConfigError(f"{who}: sampling must be a SamplingConvention naming at least one sampler")
        if any(not isinstance(f, Flag) for f in self.cli_flags):
            raise ConfigError(f"{who}: cli_flags must be Flag(...) objects")
        if self.official is not None and not isinstance(self.official, Official):
            raise ConfigError(f"{who}: official must be an Official(paths, files, load)")
        from .pipelines.editing import EDIT_METHODS

        unknown = [m for m in self.edit_methods if m not in EDIT_METHODS]
        if unknown:
            raise ConfigError(f"{who}: unknown edit_methods {unknown}; a family may declare {', '.join(EDIT_METHODS)}")

    # ---- what the rest of the package asks a family ------------------------------------------------
    def make_tokenizer_task(self, tokenizer, loss_cfg):
        if self.tokenizer_task is not None:
            return self.tokenizer_task(tokenizer, loss_cfg)
        from .train.tokenizer_task import TokenizerTask

        return TokenizerTask(tokenizer, loss_cfg)

    def tokens_to_cache(self, tokenizer, layout):
        """(encode_fn, its TokenLayout): what a generator run caches for its task. Default the tokenizer's
        `encode` and `layout`; a family whose task needs more (xAR: the KL posterior's mean and logvar, to draw
        a fresh sample every step) declares `cache_encoder(tokenizer, layout) -> (encode_fn, cache_layout)`."""
        if self.cache_encoder is None:
            return tokenizer.encode, layout
        return self.cache_encoder(tokenizer, layout)

    def check_pair(self, tokenizer, generator, layout=None) -> None:
        """ConfigError unless the generator's config agrees with what `size_generator` derives from the
        tokenizer (and the token layout: the generator's own unless given)."""
        layout = generator.token_layout if layout is None else layout
        want = self.size_generator(tokenizer, layout)
        cfg = generator.config
        for key, value in want.items():
            have = getattr(cfg, key, None)
            if _norm(have) != _norm(value):
                raise ConfigError(
                    f"family {self.name}: the generator ({type(generator).__name__}) has {key}={_norm(have)} but its "
                    f"tokenizer ({type(tokenizer).__name__}) needs {key}={_norm(value)}; pair the generator with the "
                    f"tokenizer it was trained with, or build it with --model-set {key}={_cli_value(value)} "
                    f"(`vision-ar train generator` sizes it from the tokenizer)")

    def flags(self, to: str) -> tuple[Flag, ...]:
        return tuple(f for f in self.cli_flags if f.to == to)


def _need_class(who: str, role: str, cls, api: tuple[str, ...]) -> None:
    if not isinstance(cls, type):
        raise ConfigError(f"{who}: the {role} must be a class, got {cls!r}")
    missing = [a for a in api if not hasattr(cls, a)]
    if missing:
        raise ConfigError(f"{who}: {role} class {cls.__name__} lacks {', '.join(missing)} (the {role} contract; "
                          f"see {DOC})")


def _norm(v):
    return tuple(_norm(x) for x in v) if isinstance(v, (list, tuple)) else v


def _cli_value(v) -> str:
    return str(list(_norm(v))).replace(" ", "") if isinstance(v, (list, tuple)) else str(v)


# ----------------------------------------------------------------------------------------------------
# The registry
# ----------------------------------------------------------------------------------------------------
_FAMILIES: dict[str, Family] = {}
_BUILTINS_LOADED = False


def register_family(family: Family) -> Family:
    if not isinstance(family, Family):
        raise ConfigError(f"register_family takes a Family(...), got {type(family).__name__}")
    if family.name in _FAMILIES:
        raise ConfigError(f"family '{family.name}' is registered twice; give the new family another name "
                          f"(or unregister_family('{family.name}') first)")
    names = {}
    for other in _FAMILIES.values():
        for cls in other.tokenizer_classes + (other.generator_class,):
            names[cls.__name__] = (cls, other.name)
    for cls in family.tokenizer_classes + (family.generator_class,):
        seen = names.get(cls.__name__)
        if seen and seen[0] is not cls:
            raise ConfigError(f"family '{family.name}': class name {cls.__name__} is already used by another class "
                              f"of family '{seen[1]}'; model folders record only the class name, so rename one")
    for other in _FAMILIES.values():
        clash = set(other.shipped) & set(family.shipped)
        if clash:
            raise ConfigError(f"family '{family.name}': shipped model name(s) {sorted(clash)} already belong to "
                              f"family '{other.name}'; choose other names")
        if (family.official and other.official and other.generator_presets == family.generator_presets):
            raise ConfigError(f"family '{family.name}': family '{other.name}' already loads official "
                              f"'{family.generator_presets}' presets; only one family may")
    _FAMILIES[family.name] = family
    return family


def unregister_family(name: str) -> None:
    """Forget a family (tests, notebooks)."""
    _FAMILIES.pop(name, None)


def load_builtin_families() -> None:
    """Import every module of `vision_ar.families` (each registers its family and, through its model modules,
    its presets). Runs once."""
    global _BUILTINS_LOADED
    if _BUILTINS_LOADED:
        return
    _BUILTINS_LOADED = True  # first: a family module's imports may look presets up
    from . import families

    try:
        for info in sorted(pkgutil.iter_modules(families.__path__), key=lambda m: m.name):
            importlib.import_module(f"{families.__name__}.{info.name}")
    except BaseException:
        _BUILTINS_LOADED = False
        raise


def list_families() -> list[Family]:
    load_builtin_families()
    return [_FAMILIES[n] for n in sorted(_FAMILIES)]


def get_family(name: str) -> Family:
    load_builtin_families()
    if name not in _FAMILIES:
        raise ConfigError(f"unknown family '{name}'. Known families: {', '.join(sorted(_FAMILIES))}")
    return _FAMILIES[name]


# ----------------------------------------------------------------------------------------------------
# Lookups
# ----------------------------------------------------------------------------------------------------
def _known_tokenizers() -> str:
    return ", ".join(sorted({c.__name__ for f in list_families() for c in f.tokenizer_classes}))


def families_of_tokenizer(tokenizer) -> list[Family]:
    found = [f for f in list_families() if isinstance(tokenizer, f.tokenizer_classes)]
    if not found:
        raise ConfigError(f"{type(tokenizer).__name__} is not the tokenizer of any registered family (known "
                          f"tokenizers: {_known_tokenizers()}); register its family (see {DOC})")
    return found


def family_of(tokenizer=None, generator=None) -> Family:
    """The family of a tokenizer, a generator, or (checked) a pair of them."""
    if tokenizer is None and generator is None:
        raise ConfigError("family_of needs a tokenizer, a generator or both")
    fams = list_families()
    by_gen = [f for f in fams if generator is not None and isinstance(generator, f.generator_class)]
    if generator is not None and not by_gen:
        raise ConfigError(f"{type(generator).__name__} is not the generator of any registered family (known: "
                          f"{', '.join(sorted(f.generator_class.__name__ for f in fams))}); register its family "
                          f"(see {DOC})")
    if tokenizer is None:
        if len(by_gen) > 1:
            raise ConfigError(f"{type(generator).__name__} is the generator of families "
                              f"{', '.join(f.name for f in by_gen)}; give the tokenizer too")
        return by_gen[0]
    by_tok = families_of_tokenizer(tokenizer)
    if generator is None:
        return by_tok[0]
    both = [f for f in by_tok if f in by_gen]
    if not both:
        raise ConfigError(
            f"tokenizer {type(tokenizer).__name__} (family {', '.join(f.name for f in by_tok)}) and generator "
            f"{type(generator).__name__} (family {', '.join(f.name for f in by_gen)}) are from different families; "
            f"pair a {by_tok[0].name} tokenizer with a {by_tok[0].name} generator "
            f"({by_tok[0].generator_class.__name__})")
    fam = both[0]
    fam.check_pair(tokenizer, generator)
    return fam


def family_of_preset(name: str, role: str = "generator") -> Family:
    """The family whose `generator_presets` (or `tokenizer_presets`) group holds preset `name`."""
    from .registry import get_preset

    preset = get_preset(name)
    attr = f"{role}_presets"
    found = [f for f in list_families() if getattr(f, attr) == preset.family]
    if not found:
        raise ConfigError(f"preset '{name}' (group {preset.family}) is not a {role} of any registered family")
    return found[0]


def families_of_group(group: str, role: str) -> list[Family]:
    return [f for f in list_families() if getattr(f, f"{role}_presets") == group]


def family_of_pipeline(pipe) -> Family | None:
    """The family a pipeline was built for (`Pipeline.family`), or None for an object that is not a family's."""
    fam = getattr(pipe, "family", None)
    return fam if isinstance(fam, Family) else None


def pipeline_class(name: str) -> type:
    """The pipeline class a `pipeline.json` names (`_class`)."""
    for f in list_families():
        if f.pipeline_class.__name__ == name:
            return f.pipeline_class
    known = sorted({f.pipeline_class.__name__ for f in list_families()})
    raise ConfigError(f"unknown pipeline class {name!r}; the registered families have {', '.join(known)}")


def model_class(name: str, role: str | None = None) -> type:
    """The tokenizer or generator class a `config.json` names (`_class`)."""
    classes = {}
    for f in list_families():
        if role in (None, "tokenizer"):
            classes.update({c.__name__: c for c in f.tokenizer_classes})
        if role in (None, "generator"):
            classes[f.generator_class.__name__] = f.generator_class
    if name not in classes:
        raise ConfigError(f"unknown model class {name!r} in config.json; known: {sorted(classes)}")
    return classes[name]


def shipped_folders() -> dict[str, Path]:
    """Every family's shipped model names -> their folders."""
    weights = Path(__file__).resolve().parent / "weights"
    return {name: weights / folder for f in list_families() for name, folder in f.shipped.items()}


# ----------------------------------------------------------------------------------------------------
# Command-line flags
# ----------------------------------------------------------------------------------------------------
def cli_flags() -> dict[str, tuple[Flag, list[Family]]]:
    """Every family's flags, once each (flags of the same name are the same flag, shared by those families)."""
    out: dict[str, tuple[Flag, list[Family]]] = {}
    for fam in list_families():
        for flag in fam.cli_flags:
            if flag.name in out:
                first = out[flag.name][0]
                if (first.to, first.kwarg) != (flag.to, flag.kwarg):
                    raise ConfigError(f"flag {flag.name} means {first.to}:{first.kwarg} for family "
                                      f"{out[flag.name][1][0].name} but {flag.to}:{flag.kwarg} for {fam.name}; "
                                      f"rename one")
                out[flag.name][1].append(fam)
            else:
                out[flag.name] = (flag, [fam])
    return out
