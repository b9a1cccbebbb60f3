"""Files: atomic writes, checkpoint reading, strict state_dict loading, and the save/load-a-folder mixin.

Every model saves itself as a folder holding `config.json` (its constructor arguments) and
`model.safetensors` (its weights), written to a temporary name and renamed, so a crash never leaves a
half-written folder that looks complete.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch
from torch import nn

from .errors import CheckpointError, ConfigError, MissingFileError

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


# ----------------------------------------------------------------------------------------------------
# Atomic writes
# ----------------------------------------------------------------------------------------------------
def plain_file_mode() -> int:
    """The permissions a plain open() gives a new file (0666 & ~umask); mkstemp and some writers use 0600."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success rename it onto `path` (atomic on POSIX)."""
    path = Path(path)
    check_writable(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, plain_file_mode())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def check_writable(path: str | os.PathLike) -> Path:
    """Make sure `path` can be written, before any work is done; nothing is created.

    The nearest existing folder above `path` must be a folder in which a temporary file (or, when folders
    are still to be made, a temporary folder) can really be created and removed: permission bits alone do
    not tell (/proc, read-only mounts, root). The folders themselves are made by the write (`atomic_path`),
    so a run that fails before writing leaves nothing behind.
    """
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    existing = parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"cannot create the output folder {parent}: {existing} is a file. "
                          f"Choose another output path.")
    try:
        if existing == parent:
            fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent)
            os.close(fd)
            os.unlink(probe)
        else:
            os.rmdir(tempfile.mkdtemp(prefix=".vision_ar-probe.", dir=existing))
    except OSError as e:
        what = f"the output folder {parent}" if existing == parent else f"{existing} (to create {parent} in)"
        raise ConfigError(f"{what} is not writable ({e.strerror or e}). Choose another output path.") from None
    if path.exists() and path.is_file() and not os.access(path, os.W_OK):
        raise ConfigError(f"the output file {path} exists and is not writable. Choose another output path.")
    return path


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def atomic_write_text(text: str, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_save_safetensors(tensors: Mapping[str, torch.Tensor], path: str | os.PathLike, metadata=None) -> None:
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


# ----------------------------------------------------------------------------------------------------
# Reading checkpoints
# ----------------------------------------------------------------------------------------------------
def load_checkpoint(path: str | os.PathLike, what: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Read a `.pth`/`.pt`/`.bin` (safe unpickling only) or `.safetensors` file into a flat state_dict."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{what} not found: {path}. Pass the path of a local copy (nothing is downloaded).")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt or truncated file
        raise CheckpointError(f"cannot read {what} {path}: {e}. The file may be truncated or corrupt.") from e


def unwrap_state_dict(sd: Mapping[str, Any], prefer: tuple[str, ...] = ("model", "state_dict", "ema")) -> dict:
    """Official checkpoints sometimes nest the weights (e.g. {'model': ...}); return the flat tensor dict."""
    if all(isinstance(v, torch.Tensor) for v in sd.values()):
        return dict(sd)
    for key in prefer:
        if key in sd and isinstance(sd[key], Mapping):
            return unwrap_state_dict(sd[key], prefer)
    raise CheckpointError(f"no state_dict found in checkpoint; top-level keys are {sorted(sd)[:20]}")


def read_official_checkpoint(source, what: str, prefer: tuple[str, ...] = ("model", "state_dict", "ema")) -> dict:
    """An official checkpoint given as a local path (read safely, see `load_checkpoint`) or as an already-loaded
    dict -> its flat tensor state_dict (unwrapped from {'model': ...}-style nesting, trying `prefer` in order)."""
    if isinstance(source, (str, os.PathLike)):
        source = load_checkpoint(source, what)
    if not isinstance(source, Mapping):
        raise ConfigError(f"{what}: expected a checkpoint path or a state_dict, got {type(source).__name__}.")
    return unwrap_state_dict(source, prefer)


def describe_source(source) -> str:
    """How errors name where official weights came from: the path, or 'state_dict' for an in-memory dict."""
    return str(source) if isinstance(source, (str, os.PathLike)) else "state_dict"


def mismatch_lines(expected: Mapping[str, tuple], sd: Mapping[str, torch.Tensor]) -> list[str]:
    """Every way `sd` differs from `expected` ({key: shape}), one line per kind (empty when it fits):
    missing keys, unexpected keys, wrong shapes. Shared by every strict loader so reports read alike."""
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    wrong = [f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(expected[k])}" for k in expected
             if k in sd and tuple(sd[k].shape) != tuple(expected[k])]
    return [f"  {what} ({len(keys)}): {keys}" for what, keys in
            (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", wrong)) if keys]


def load_state_dict_strict(model: nn.Module, sd: Mapping[str, torch.Tensor], what: str = "checkpoint") -> None:
    """Load with every mismatch listed at once: missing keys, unexpected keys, wrong shapes or dtypes."""
    own = model.state_dict()
    lines = mismatch_lines({k: tuple(t.shape) for k, t in own.items()}, sd)
    wrong_kind = [f"{k}: checkpoint {sd[k].dtype} vs model {own[k].dtype}" for k in own
                  if k in sd and _kind(sd[k]) != _kind(own[k])]  # load_state_dict would cast silently
    if wrong_kind:
        lines.append(f"  wrong dtypes ({len(wrong_kind)}): {wrong_kind}")
    if lines:
        raise CheckpointError("\n".join([f"{what} does not fit {type(model).__name__}:", *lines,
                                         "  Check that the preset/config matches the checkpoint (depth, width, "
                                         "vocabulary, image size)."]))
    check_finite(model, sd, what)
    model.load_state_dict(dict(sd), strict=True)


def _kind(t: torch.Tensor) -> str:
    return "complex" if t.is_complex() else "float" if t.is_floating_point() else "integer"


def check_finite(model: nn.Module, sd: Mapping[str, torch.Tensor], what: str) -> None:
    """Weights must be finite: a NaN anywhere, or an inf in a parameter (buffers such as attention masks may
    hold -inf on purpose), is refused, naming the tensor, instead of producing NaN images later."""
    params = {name for name, _ in model.named_parameters()}
    for k, t in sd.items():
        if not (t.is_floating_point() or t.is_complex()):
            continue
        bad = ~torch.isfinite(t) if k in params else torch.isnan(t)
        if bool(bad.any()):
            n = int(bad.sum())
            raise CheckpointError(f"{what}: tensor {k!r} holds {n} non-finite value(s) "
                                  f"({'NaN' if bool(torch.isnan(t).any()) else 'inf'}) out of {t.numel()}: the "
                                  f"weights are corrupt (a diverged run?). Use another checkpoint.")


# ----------------------------------------------------------------------------------------------------
# Folder save/load mixin
# ----------------------------------------------------------------------------------------------------
def _to_jsonable(x):
    if dataclasses.is_dataclass(x):
        return _to_jsonable(dataclasses.asdict(x))
    if isinstance(x, dict):
        return {k: _to_jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_to_jsonable(v) for v in x]
    return x


class PretrainedMixin:
    """`save_pretrained(folder)` / `from_pretrained(folder)` for modules built from one config object.

    A class using it sets `config_class` (a dataclass) and takes that config as its only constructor
    argument; `self.config` holds it.
    """

    config_class: type = None  # type: ignore[assignment]

    def save_pretrained(self, folder: str | os.PathLike, extra_config: dict | None = None) -> Path:
        folder = Path(folder)
        check_writable(folder / CONFIG_NAME)
        cfg = {"_class": type(self).__name__, **_to_jsonable(self.config), **(extra_config or {})}
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
        try:
            (tmp / CONFIG_NAME).write_text(json.dumps(cfg, indent=2))
            sd = {k: v for k, v in self.state_dict().items()}
            from safetensors.torch import save_file

            save_file({k: v.detach().contiguous().cpu() for k, v in sd.items()}, str(tmp / WEIGHTS_NAME))
            for name in (CONFIG_NAME, WEIGHTS_NAME):  # rename file by file: an existing folder keeps other files
                folder.mkdir(parents=True, exist_ok=True)
                os.chmod(tmp / name, plain_file_mode())  # weights readable like the config beside them
                os.replace(tmp / name, folder / name)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return folder

    @classmethod
    def config_from_dict(cls, d: dict):
        d = {k: v for k, v in d.items() if not k.startswith("_")}
        fields = {f.name for f in dataclasses.fields(cls.config_class)}
        unknown = sorted(set(d) - fields)
        if unknown:
            raise ConfigError(f"{cls.__name__} config has unknown fields {unknown}; known: {sorted(fields)}")
        from .validation import check_values

        check_values(d, cls.config_class, f"{cls.__name__} config")  # e.g. patch_nums given as a string
        for f in dataclasses.fields(cls.config_class):  # JSON has lists where configs use tuples
            if f.name in d and isinstance(d[f.name], list):
                d[f.name] = tuple(tuple(v) if isinstance(v, list) else v for v in d[f.name])
        return cls.config_class(**d)

    # --- official checkpoints: every model class has `from_official(path_or_state_dict, config, **overrides)` --
    preset_family: str = None  # type: ignore[assignment]  # registry family whose presets build this class

    @classmethod
    def official_model_config(cls, config, overrides: dict):
        """The config an official checkpoint loads into: a preset name of `preset_family` or a config object,
        with `overrides` applied. Returns the preset name (a str) or the config (so callers choose the device)."""
        if isinstance(config, str):
            from .registry import get_preset, list_presets

            if get_preset(config).family != cls.preset_family:  # raises with the known names when unknown
                raise ConfigError(f"preset '{config}' is not a {cls.__name__} preset ({cls.preset_family}); use one "
                                  f"of {', '.join(list_presets(cls.preset_family))}.")
            return config
        if not isinstance(config, cls.config_class):
            raise ConfigError(f"config must be a {cls.config_class.__name__} or a preset name, got "
                              f"{type(config).__name__}.")
        unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(config)})
        if unknown:
            raise ConfigError(f"unknown {type(config).__name__} fields {unknown}; known: "
                              f"{[f.name for f in dataclasses.fields(config)]}")
        return dataclasses.replace(config, **overrides) if overrides else config

    @classmethod
    def build_for_official(cls, config, overrides: dict):
        """A freshly initialised model for `official_model_config(config, overrides)`."""
        config = cls.official_model_config(config, overrides)
        if isinstance(config, str):
            from .registry import create

            return create(config, **overrides)
        return cls(config)

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, map_location: str = "cpu"):
        folder = Path(folder)
        cfg_path, w_path = folder / CONFIG_NAME, folder / WEIGHTS_NAME
        for p in (cfg_path, w_path):
            if not p.is_file():
                raise MissingFileError(f"{p} not found: a model folder holds {CONFIG_NAME} and {WEIGHTS_NAME} "
                                       f"(written by save_pretrained).")
        try:
            cfg = json.loads(cfg_path.read_text())
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{cfg_path} is not valid JSON: {e}") from e
        model = cls(cls.config_from_dict(cfg))
        load_state_dict_strict(model, load_checkpoint(w_path), what=str(w_path))
        return model.to(map_location).eval()
