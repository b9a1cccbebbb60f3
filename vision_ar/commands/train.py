"""`vision-ar train`: one command for every tokenizer and generator, all through the one training loop.

    # 1. the tokenizer (images -> tokens)
    vision-ar train tokenizer --model var-vqvae-fmnist --data fashion-mnist --out runs/fm_vae --steps 6000
    # 2. the generator on cached codes of that tokenizer
    vision-ar train generator --model var-fmnist --tokenizer runs/fm_vae/final --data fashion-mnist \
        --out runs/fm_var --steps 8000
    # the run folder then holds `pipeline/`, loadable by `vision-ar sample --model runs/fm_var/pipeline`

`--model` is a registered preset (see `vision-ar train --list`) or a config.json; `--model-set k=v` overrides
model config fields and `--set k=v` overrides TrainConfig fields (lr, batch_size, grad_accum, ema_decay,
ckpt_every...). Killing a run and starting the same command again resumes it exactly.
Distributed: `torchrun --nproc_per_node 8 -m vision_ar.cli train ...`.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from ..errors import ConfigError


def add_parser(sub):
    p = sub.add_parser("train", help="train a tokenizer or a generator", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=("tokenizer", "generator"), nargs="?")
    p.add_argument("--list", action="store_true", help="list the model presets and exit")
    p.add_argument("--model", help="preset name or path to a config.json")
    p.add_argument("--model-set", action="append", default=[], metavar="K=V", help="override a model config field")
    p.add_argument("--data", default="fashion-mnist", help="'fashion-mnist' or an ImageNet-style class folder")
    p.add_argument("--image-size", type=int, default=None, help="centre-crop size for a class folder (256/512)")
    p.add_argument("--limit", type=int, default=None, help="use only the first N training images (quick runs)")
    p.add_argument("--tokenizer", help="generator training: the trained tokenizer folder")
    p.add_argument("--out", help="run folder (checkpoints, metrics.jsonl, final/ and pipeline/)")
    p.add_argument("--steps", type=int, help="optimizer steps")
    p.add_argument("--set", action="append", default=[], metavar="K=V", help="override a TrainConfig field")
    p.add_argument("--allow-changed-settings", action="store_true",
                   help="resume although settings differ from the checkpoint's (the change is recorded)")
    # tokenizer loss options
    p.add_argument("--lpips-weight", type=float, default=0.0)
    p.add_argument("--lpips-vgg", help="torchvision vgg16 state_dict (local file)")
    p.add_argument("--lpips-lin", help="LPIPS linear weights vgg.pth (local file)")
    p.add_argument("--disc-weight", type=float, default=0.0, help="> 0 turns the PatchGAN loss on")
    p.add_argument("--disc-start", type=int, default=0)
    p.add_argument("--loss-set", action="append", default=[], metavar="K=V",
                   help="tokenizer training: a family's own loss option (FlexTok: repa_weight, repa_network, "
                        "repa_weights, repa_layer, repa_hidden)")
    p.add_argument("--init", metavar="FOLDER", help="start from a trained model folder (its config.json wins over "
                   "--model): a tokenizer (e.g. decoder fine-tuning) or a generator (a longer schedule on top of a "
                   "finished run: its weights, a new optimizer, lr schedule and EMA)")
    p.add_argument("--decoder-only", action="store_true",
                   help="tokenizer training: fine-tune only the decoder on the frozen codes of --init (generators "
                        "trained on those codes stay valid)")
    p.set_defaults(func=run)


def parse_overrides(pairs: list[str], target_fields: dict | None, what: str) -> dict:
    """'k=v' strings -> typed values (JSON where it parses), checked against a dataclass's fields if given."""
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"{what} override {pair!r} must look like key=value")
        k, v = pair.split("=", 1)
        if target_fields is not None and k not in target_fields:
            raise ConfigError(f"unknown {what} field {k!r}; known: {sorted(target_fields)}")
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v  # plain string
        if isinstance(out[k], list):
            out[k] = tuple(out[k])
    return out


def build_request(args):
    """The parsed command line -> the typed request the library's recipes take."""
    from ..train import recipes
    from ..train.config import TrainConfig
    from ..train.tokenizer_task import TokenizerLossConfig

    train_over = parse_overrides(args.set, {f.name: f for f in dataclasses.fields(TrainConfig)}, "TrainConfig")
    if args.steps is not None:
        train_over["max_steps"] = args.steps
    if args.allow_changed_settings:
        train_over["allow_changed_settings"] = True
    # the model's config dataclass rejects unknown fields with the list of known ones
    model_over = parse_overrides(args.model_set, None, "model config")
    common = dict(model=args.model, out=args.out, data=args.data, image_size=args.image_size, limit=args.limit,
                  model_overrides=model_over, train_overrides=train_over)
    if args.what == "tokenizer":
        loss = TokenizerLossConfig(lpips_weight=args.lpips_weight, lpips_vgg_path=args.lpips_vgg,
                                   lpips_lin_path=args.lpips_lin, disc_weight=args.disc_weight,
                                   disc_start=args.disc_start, decoder_only=args.decoder_only,
                                   family_options=parse_overrides(args.loss_set, None, "loss option"))
        return recipes.TokenizerRequest(**common, loss=loss, init=args.init)
    if not args.tokenizer:
        raise ConfigError("generator training needs --tokenizer FOLDER (a trained tokenizer's final/ folder)")
    if args.decoder_only:
        raise ConfigError("--decoder-only is a tokenizer option (fine-tune a tokenizer's decoder); drop it here")
    return recipes.GeneratorRequest(**common, tokenizer=args.tokenizer, init=args.init)


def run(args) -> int:
    from ..train import recipes

    if args.list:
        for name, desc in recipes.list_models():
            print(f"{name:28s} {desc}")
        return 0
    if not (args.what and args.model and args.out):
        raise ConfigError("give what to train (tokenizer | generator), --model and --out (see --help)")
    req = build_request(args)
    if isinstance(req, recipes.TokenizerRequest):
        result = recipes.train_tokenizer(req)
    else:
        result = recipes.train_generator(req)
    print(f"{'done' if result.finished else 'paused'}: {Path(args.out).resolve()}")
    return 0
