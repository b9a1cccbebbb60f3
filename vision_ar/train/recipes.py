"""What `vision-ar train` runs: build data, model and task from the command line, then call the one loop.

A tokenizer run writes `OUT/final/` (the EMA or raw tokenizer). A generator run first caches the tokenizer's
codes of the whole dataset (`OUT/tokens.safetensors`, keyed by tokenizer weights + data), trains on them,
and writes `OUT/final/` (the generator) and `OUT/pipeline/` (tokenizer + generator, loadable by
`vision-ar sample --model OUT/pipeline`).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import ConfigError, MissingFileError
from ..registry import create, get_preset, list_presets

TOKENIZER_FAMILIES = ("var-tokenizer", "vq-tokenizer")


def list_models():
    from ..registry import _PRESETS

    list_presets()  # imports every preset module
    return [(n, f"[{p.family}] {p.description}") for n, p in sorted(_PRESETS.items())]


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


def _model_class(name: str):
    from ..models.next_scale import VAR
    from ..models.next_token import GPT
    from ..tokenizers.multiscale import MultiScaleVQVAE
    from ..tokenizers.vq import VQModel

    classes = {c.__name__: c for c in (VAR, GPT, MultiScaleVQVAE, VQModel)}
    if name not in classes:
        raise ConfigError(f"unknown model class {name!r} in config.json; known: {sorted(classes)}")
    return classes[name]


def build_model(spec: str, overrides: dict, families: tuple[str, ...]):
    """A preset name, or a config.json written by save_pretrained (its `_class` says which model)."""
    path = Path(spec)
    if path.suffix == ".json" and path.is_file():
        cfg = json.loads(path.read_text())
        cls = _model_class(cfg.get("_class", ""))
        return cls(cls.config_from_dict({**cfg, **overrides}))
    preset = get_preset(spec)
    if preset.family not in families:
        raise ConfigError(f"preset '{spec}' is a {preset.family} model; this command trains {' / '.join(families)} "
                          f"models (see `vision-ar train --list`)")
    return create(spec, **overrides)


def load_model_folder(folder: str | Path):
    folder = Path(folder)
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise MissingFileError(f"{cfg_path} not found: pass a folder written by save_pretrained "
                               f"(e.g. a tokenizer run's OUT/final)")
    cls = _model_class(json.loads(cfg_path.read_text()).get("_class", ""))
    return cls.from_pretrained(folder)


def _train_config(args, overrides: dict, defaults: dict):
    from .config import TrainConfig

    return TrainConfig(**{**defaults, **overrides, "out_dir": args.out})


def _model_overrides(args) -> dict:
    """--model-set k=v pairs; the model's config dataclass rejects unknown fields with the list of known ones."""
    from ..commands.train import parse_overrides

    return parse_overrides(args.model_set, None, "model config")


# ----------------------------------------------------------------------------------------------------
# Tokenizers
# ----------------------------------------------------------------------------------------------------
TOKENIZER_DEFAULTS = dict(lr=3e-4, weight_decay=0.0, betas=(0.5, 0.9), warmup_steps=200, lr_schedule="cosine",
                          min_lr_ratio=0.1, batch_size=32, ema_decay=0.999, ckpt_every=250, log_every=25)


def train_tokenizer(args, train_overrides: dict):
    from .checkpoint import seed_everything
    from .loop import train
    from .tokenizer_task import TokenizerLossConfig, TokenizerTask

    cfg = _train_config(args, train_overrides, TOKENIZER_DEFAULTS)
    seed_everything(cfg.seed)  # initialisation is part of the run: the same command gives the same weights
    model = build_model(args.model, _model_overrides(args), TOKENIZER_FAMILIES)
    model.train().requires_grad_(True)
    dataset = build_dataset(args.data, args.image_size, limit=args.limit)
    loss_cfg = TokenizerLossConfig(lpips_weight=args.lpips_weight, lpips_vgg_path=args.lpips_vgg,
                                   lpips_lin_path=args.lpips_lin, disc_weight=args.disc_weight,
                                   disc_start=args.disc_start)
    task = TokenizerTask(model, loss_cfg)
    return train(task, dataset, cfg)


# ----------------------------------------------------------------------------------------------------
# Generators
# ----------------------------------------------------------------------------------------------------
GENERATOR_DEFAULTS = dict(lr=4e-4, weight_decay=0.05, betas=(0.9, 0.95), warmup_steps=300, lr_schedule="cosine",
                          min_lr_ratio=0.05, batch_size=64, ema_decay=0.999, ckpt_every=250, log_every=25)


def _generator_for(tokenizer, spec: str, overrides: dict):
    from ..models.next_scale import VAR
    from ..tokenizers.multiscale import MultiScaleVQVAE

    if isinstance(tokenizer, MultiScaleVQVAE):
        # vocabulary, code width and scales come from the tokenizer, so they cannot disagree
        overrides = {"vocab_size": tokenizer.config.vocab_size, "Cvae": tokenizer.config.z_channels,
                     "patch_nums": tuple(tokenizer.config.patch_nums), **overrides}
        gen = build_model(spec, overrides, ("var",))
    else:
        overrides = {"vocab_size": tokenizer.config.codebook_size, **overrides}
        gen = build_model(spec, overrides, ("next-token",))
    if isinstance(tokenizer, MultiScaleVQVAE) != isinstance(gen, VAR):
        raise ConfigError(f"generator {spec} does not fit tokenizer {type(tokenizer).__name__}: VAR needs a "
                          f"multi-scale VQ-VAE, a next-token GPT a 2D VQ tokenizer")
    return gen


def train_generator(args, train_overrides: dict):
    from ..data import CachedTokens, cache_tokenizer_outputs
    from ..models.next_scale import VAR
    from .checkpoint import seed_everything
    from .generator_tasks import NextScaleTask, NextTokenTask
    from .loop import check_before_writing, train

    cfg = _train_config(args, train_overrides, GENERATOR_DEFAULTS)
    tokenizer = load_model_folder(args.tokenizer).eval()
    dataset = build_dataset(args.data, args.image_size, limit=args.limit)
    # The generator is built (and checked against the data) before anything is written to the run folder.
    seed_everything(cfg.seed)  # initialisation is part of the run: the same command gives the same weights
    gen = _generator_for(tokenizer, args.model, _model_overrides(args))
    num_classes = getattr(dataset, "num_classes", None) or len(getattr(dataset, "classes", []))
    if num_classes and gen.config.num_classes != num_classes:
        raise ConfigError(f"the data has {num_classes} classes but the generator preset has "
                          f"{gen.config.num_classes}; add --model-set num_classes={num_classes}")
    check_before_writing(cfg, len(dataset))
    out = Path(args.out)
    encode = tokenizer.img_to_idx if hasattr(tokenizer, "img_to_idx") else tokenizer.encode
    cache = cache_tokenizer_outputs(encode, dataset, out / "tokens.safetensors", batch_size=256,
                                    tokenizer=tokenizer, progress=True)
    tokens = CachedTokens(cache)
    task = NextScaleTask(gen, tokenizer) if isinstance(gen, VAR) else NextTokenTask(gen)
    result = train(task, _FlatTokens(tokens), cfg)
    write_pipeline(tokenizer, out / "final", out / "pipeline", class_names=getattr(dataset, "classes", None))
    return result


class _FlatTokens(torch.utils.data.Dataset):
    """Cached codes as one (L,) tensor per sample: per-scale lists concatenated, grids flattened."""

    def __init__(self, cached):
        self.cached = cached

    def __len__(self):
        return len(self.cached)

    def __getitem__(self, i):
        tokens = self.cached.tokens[i].long()
        return tokens, int(self.cached.labels[i])


def write_pipeline(tokenizer, generator_folder: Path, out: Path, class_names=None, defaults: dict | None = None):
    """Join a tokenizer and a trained generator into a pipeline folder."""
    generator = load_model_folder(generator_folder)
    from ..models.next_scale import VAR

    if isinstance(generator, VAR):
        from ..pipelines.var import VARPipeline as Pipe
    else:
        from ..pipelines.gpt import GPTPipeline as Pipe
    pipe = Pipe(tokenizer, generator, defaults, list(class_names) if class_names else None)
    pipe.save_pretrained(out)
    return out
