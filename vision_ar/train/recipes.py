"""What `vision-ar train` runs: build data, model and task from a typed request, then call the one loop.

    train_tokenizer(TokenizerRequest(model="vq-fmnist", out="runs/vq"))
    train_generator(GeneratorRequest(model="gpt-fmnist", tokenizer="runs/vq/final", out="runs/gpt"))

A tokenizer run writes `OUT/final/` (the EMA or raw tokenizer). A generator run first caches the tokenizer's
codes of the whole dataset (`OUT/tokens.safetensors`, keyed by tokenizer weights + data), trains on them,
and writes `OUT/final/` (the generator) and `OUT/pipeline/` (tokenizer + generator, loadable by
`vision-ar sample --model OUT/pipeline`). Which generator fits which tokenizer, how it is sized and which task
trains it is each family's declaration (vision_ar/family.py); nothing here names a family's classes.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import ConfigError, MissingFileError
from ..registry import all_presets, create, get_preset
from .tokenizer_task import TokenizerLossConfig


# ----------------------------------------------------------------------------------------------------
# Requests: what to train (built by `vision_ar/commands/train.py` from the command line, or by hand)
# ----------------------------------------------------------------------------------------------------
@dataclass
class TokenizerRequest:
    model: str                                  # a tokenizer preset or a config.json
    out: str                                    # run folder
    data: str = "fashion-mnist"                 # 'fashion-mnist' or an ImageNet-style class folder
    image_size: int | None = None               # centre-crop size for a class folder
    limit: int | None = None                    # only the first N training images
    model_overrides: dict = field(default_factory=dict)   # model config fields
    train_overrides: dict = field(default_factory=dict)   # TrainConfig fields
    loss: TokenizerLossConfig = field(default_factory=TokenizerLossConfig)
    init: str | None = None                     # start from this trained tokenizer folder (e.g. decoder fine-tuning)


@dataclass
class GeneratorRequest:
    model: str                                  # a generator preset or a config.json
    tokenizer: str                              # the trained tokenizer's folder (a tokenizer run's OUT/final)
    out: str
    data: str = "fashion-mnist"
    image_size: int | None = None
    limit: int | None = None
    model_overrides: dict = field(default_factory=dict)
    train_overrides: dict = field(default_factory=dict)
    init: str | None = None                     # continue from this trained generator folder (fresh optimizer)


def list_models():
    return [(p.name, f"[{p.family}] {p.description}") for p in all_presets()]


# ----------------------------------------------------------------------------------------------------
# Building blocks
# ----------------------------------------------------------------------------------------------------
def build_dataset(data: str, image_size: int | None, split: str = "train", limit: int | None = None):
    from ..data import FashionMNIST, ImageFolder

    if data in ("fashion-mnist", "fmnist"):
        if image_size not in (None, 32):
            raise ConfigError("Fashion-MNIST images are 32x32 (28x28 padded); drop --image-size")
        return FashionMNIST(split, limit=limit)
    if not Path(data).is_dir():
        raise MissingFileError(f"--data {data}: not 'fashion-mnist' and not a folder of class sub-folders")
    ds = ImageFolder(data, image_size=image_size or 256)
    if limit is not None:
        ds = torch.utils.data.Subset(ds, range(min(limit, len(ds))))
        ds.classes = ds.dataset.classes
    return ds


def build_model(spec: str, overrides: dict, groups: tuple[str, ...], role: str | None = None):
    """A preset name (of one of the preset `groups`), or a config.json written by save_pretrained (its `_class`
    says which model)."""
    from ..family import model_class

    path = Path(spec)
    if path.suffix == ".json" and path.is_file():
        cfg = json.loads(path.read_text())
        cls = model_class(cfg.get("_class", ""), role=role)
        return cls(cls.config_from_dict({**cfg, **overrides}))
    preset = get_preset(spec)
    if preset.family not in groups:
        raise ConfigError(f"preset '{spec}' is a {preset.family} model; this command trains {' / '.join(groups)} "
                          f"models (see `vision-ar train --list`)")
    return create(spec, **overrides)


def load_model_folder(folder: str | Path):
    from ..family import model_class

    folder = Path(folder)
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise MissingFileError(f"{cfg_path} not found: pass a folder written by save_pretrained "
                               f"(e.g. a tokenizer run's OUT/final)")
    cls = model_class(json.loads(cfg_path.read_text()).get("_class", ""))
    return cls.from_pretrained(folder)


def _train_config(out: str, overrides: dict, defaults: dict):
    from .config import TrainConfig

    return TrainConfig(**{**defaults, **overrides, "out_dir": out})


# ----------------------------------------------------------------------------------------------------
# Tokenizers
# ----------------------------------------------------------------------------------------------------
TOKENIZER_DEFAULTS = dict(lr=3e-4, weight_decay=0.0, betas=(0.5, 0.9), warmup_steps=200, lr_schedule="cosine",
                          min_lr_ratio=0.1, batch_size=32, ema_decay=0.999, ckpt_every=250, log_every=25)


def train_tokenizer(req: TokenizerRequest):
    from ..family import families_of_tokenizer, list_families
    from .checkpoint import seed_everything
    from .loop import train

    groups = tuple(dict.fromkeys(f.tokenizer_presets for f in list_families()))
    if req.loss.decoder_only and not req.init:
        raise ConfigError("--decoder-only fine-tunes a trained tokenizer: pass --init FOLDER (e.g. runs/fm_vq/final)")
    cfg = _train_config(req.out, req.train_overrides, TOKENIZER_DEFAULTS)
    seed_everything(cfg.seed)  # initialisation is part of the run: the same command gives the same weights
    model = load_model_folder(req.init) if req.init else build_model(req.model, req.model_overrides, groups,
                                                                      role="tokenizer")
    model.train().requires_grad_(True)
    dataset = build_dataset(req.data, req.image_size, limit=req.limit)
    task = families_of_tokenizer(model)[0].make_tokenizer_task(model, req.loss)
    return train(task, dataset, cfg)


# ----------------------------------------------------------------------------------------------------
# Generators
# ----------------------------------------------------------------------------------------------------
GENERATOR_DEFAULTS = dict(lr=4e-4, weight_decay=0.05, betas=(0.9, 0.95), warmup_steps=300, lr_schedule="cosine",
                          min_lr_ratio=0.05, batch_size=64, ema_decay=0.999, ckpt_every=250, log_every=25)


def _generator_family(tokenizer, spec: str):
    """The family of `tokenizer` whose generator `spec` names (a preset of its group, or a config.json)."""
    from ..family import families_of_tokenizer, model_class

    fams = families_of_tokenizer(tokenizer)
    path = Path(spec)
    if path.suffix == ".json" and path.is_file():
        cls = model_class(json.loads(path.read_text()).get("_class", ""), role="generator")
        fits = [f for f in fams if issubclass(cls, f.generator_class)]
        what = f"{cls.__name__} (from {spec})"
    else:
        group = get_preset(spec).family
        fits = [f for f in fams if f.generator_presets == group]
        what = f"preset '{spec}' ({group})"
    if not fits:
        want = " or ".join(f"a {f.name} generator ({f.generator_presets} presets)" for f in fams)
        raise ConfigError(f"generator {what} does not fit tokenizer {type(tokenizer).__name__} (family "
                          f"{', '.join(f.name for f in fams)}): it needs {want}; see `vision-ar train --list`")
    return fits[0]


def _image_size(dataset):
    first = dataset[0]
    images = first[0] if isinstance(first, (tuple, list)) else first
    return tuple(images.shape[-2:])


def train_generator(req: GeneratorRequest):
    from ..data import CachedTokens, cache_tokenizer_outputs
    from .checkpoint import seed_everything
    from .loop import check_before_writing, train

    cfg = _train_config(req.out, req.train_overrides, GENERATOR_DEFAULTS)
    tokenizer = load_model_folder(req.tokenizer).eval()
    family = _generator_family(tokenizer, str(Path(req.init) / "config.json") if req.init else req.model)
    dataset = build_dataset(req.data, req.image_size, limit=req.limit)
    layout = tokenizer.token_layout(_image_size(dataset))
    # The generator is built (and checked against the data) before anything is written to the run folder.
    seed_everything(cfg.seed)  # initialisation is part of the run: the same command gives the same weights
    if req.init:  # a longer schedule on top of a finished run: its weights, a new optimizer and lr schedule
        if req.model_overrides:
            raise ConfigError(f"--init {req.init} continues a trained generator whose config.json fixes the "
                              f"model; drop --model-set {', '.join(req.model_overrides)}")
        gen = load_model_folder(req.init)
        if not isinstance(gen, family.generator_class):
            raise ConfigError(f"--init {req.init} holds a {type(gen).__name__}, not a {family.name} generator "
                              f"({family.generator_class.__name__}) for tokenizer {type(tokenizer).__name__}")
    else:
        overrides = {**family.size_generator(tokenizer, layout), **req.model_overrides}
        gen = build_model(req.model, overrides, (family.generator_presets,), role="generator")
    gen.train().requires_grad_(True)
    family.check_pair(tokenizer, gen, layout)
    num_classes = getattr(dataset, "num_classes", None) or len(getattr(dataset, "classes", []))
    if num_classes and gen.config.num_classes != num_classes:
        raise ConfigError(f"the data has {num_classes} classes but the generator preset has "
                          f"{gen.config.num_classes}; add --model-set num_classes={num_classes}")
    check_before_writing(cfg, len(dataset))
    out = Path(req.out)
    encode, cache_layout = family.tokens_to_cache(tokenizer, layout)
    cache = cache_tokenizer_outputs(encode, dataset, out / "tokens.safetensors", batch_size=256,
                                    tokenizer=tokenizer, token_layout=cache_layout, progress=cfg.progress)
    tokens = CachedTokens(cache)
    task = family.generator_task(gen, tokenizer)
    result = train(task, FlatTokens(tokens), cfg)
    if not result.finished:  # paused: no generator to join yet
        return result
    write_pipeline(tokenizer, out / "final", out / "pipeline", class_names=getattr(dataset, "classes", None))
    return result


class FlatTokens(torch.utils.data.Dataset):
    """Cached tokens as one (flat_size,) tensor per sample in `TokenLayout.flatten` order (per-scale grids
    concatenated, grids row-major), in the cache's dtype: int64 codes, float latents stay float."""

    def __init__(self, cached):
        self.cached = cached

    def __len__(self):
        return len(self.cached)

    def __getitem__(self, i):
        return self.cached.tokens[i].to(self.cached.dtype), int(self.cached.labels[i])


def write_pipeline(tokenizer, generator_folder: Path, out: Path, class_names=None, defaults: dict | None = None):
    """Join a tokenizer and a trained generator into its family's pipeline folder."""
    from ..family import family_of

    generator = load_model_folder(generator_folder)
    pipe_class = family_of(tokenizer=tokenizer, generator=generator).pipeline_class
    pipe = pipe_class(tokenizer, generator, defaults, list(class_names) if class_names else None)
    pipe.save_pretrained(out)
    return out
