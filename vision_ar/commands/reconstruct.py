"""`vision-ar reconstruct`: an image through a tokenizer and back (encode, then decode), saved as a PNG.

    vision-ar reconstruct --model fmnist-flextok --num-tokens 4 --image shoe.png --out shoe_4tokens.png
    vision-ar reconstruct --model flextok-d18-d28 --tokenizer flextok_d18_d28_in1k/ --num-tokens 16 \
        --image in.png --image-size 256 --out out.png
    vision-ar reconstruct --model runs/fm_vq/final --image in.png --out out.png     # a tokenizer folder

--model: a shipped model or pipeline folder (its tokenizer), a tokenizer folder, or an official generator preset
whose family loads the official tokenizer from the paths given by its flags (--tokenizer, --vae...). Family flags
(FlexTok's --num-tokens, --decode-steps, --decode-cfg, --decode-apg) go to the tokenizer's `reconstruct`.
Prints one JSON line with the PSNR of the reconstruction against the (resized) input.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError, DataError, MissingFileError
from ..io import atomic_path, check_writable
from .family_flags import add_cli_flags, call_kwargs_for, load_kwargs


def add_parser(sub):
    p = sub.add_parser("reconstruct", help="encode an image with a tokenizer and decode it back", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="shipped model, pipeline or tokenizer folder, or official preset")
    p.add_argument("--image", required=True, help="input image (any PIL format; grey images become RGB)")
    p.add_argument("--image-size", type=int, default=None, help="centre-crop to a square and resize to this side")
    p.add_argument("--out", required=True, help="output .png")
    p.add_argument("--seed", type=int, default=0, help="seed of a stochastic decoder (FlexTok's flow noise)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    add_cli_flags(p)
    p.set_defaults(func=run)


def read_image(path: str, size: int | None) -> torch.Tensor:
    """(1, 3, H, W) float in [-1, 1]."""
    from PIL import Image, UnidentifiedImageError

    if not Path(path).is_file():
        raise MissingFileError(f"--image {path} not found")
    try:
        img = Image.open(path).convert("RGB")
    except (UnidentifiedImageError, OSError) as e:
        raise DataError(f"--image {path} is not a readable image: {e}") from e
    if size is not None:
        if size < 1:
            raise ConfigError(f"--image-size must be >= 1, got {size}")
        side = min(img.size)
        left, top = (img.width - side) // 2, (img.height - side) // 2
        img = img.crop((left, top, left + side, top + side)).resize((size, size), Image.BICUBIC)
    x = torch.from_numpy(np.asarray(img, dtype=np.float32).copy()).permute(2, 0, 1)[None]
    return x / 127.5 - 1


def load_tokenizer(model: str, device: str, paths: dict):
    """(tokenizer, its family) for --model: a shipped model / pipeline folder, a tokenizer folder, or a preset."""
    from ..family import families_of_tokenizer, family_of_preset, shipped_folders
    from ..pipelines import load_pipeline
    from ..train.recipes import load_model_folder

    folder = shipped_folders().get(model, Path(model))
    if (folder / "pipeline.json").is_file():
        pipe = load_pipeline(str(folder), device=device)
        return pipe.tokenizer, pipe.family
    if (folder / "config.json").is_file():
        tok = load_model_folder(folder).to(device).eval()
        return tok, families_of_tokenizer(tok)[0]
    if folder.exists() or model in shipped_folders():
        raise MissingFileError(f"--model {model}: {folder} holds neither pipeline.json nor config.json")
    fam = family_of_preset(model)  # an unknown name lists the known presets
    official = fam.official
    if official is not None and official.load_tokenizer is not None:
        return official.load_tokenizer(model, paths, device), fam
    return load_pipeline(model, device=device, **paths).tokenizer, fam


def run(args) -> int:
    out = Path(args.out)
    if out.suffix.lower() != ".png":
        raise ConfigError(f"--out must be a .png file, got {out}")
    check_writable(out)
    images = read_image(args.image, args.image_size)  # a bad image fails before any model is loaded
    from ..distributed import resolve_device

    device = str(resolve_device(args.device))
    tokenizer, fam = load_tokenizer(args.model, device, load_kwargs(args))
    settings = call_kwargs_for(args, fam)
    generator = torch.Generator().manual_seed(args.seed)
    x = images.to(device)
    with torch.inference_mode():
        if hasattr(tokenizer, "reconstruct"):
            rec = tokenizer.reconstruct(x, generator=generator, **settings)
        elif settings:
            raise ConfigError(f"{sorted(settings)} do not apply to a {type(tokenizer).__name__} reconstruction")
        else:
            rec = tokenizer.decode(tokenizer.encode(x))
    rec = rec.float().clamp(-1, 1).cpu()
    mse = ((rec - images) / 2).pow(2).mean().clamp_min(1e-10)
    from PIL import Image

    arr = ((rec[0] + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
    with atomic_path(out) as tmp:
        Image.fromarray(arr).save(tmp, format="PNG")
    print(json.dumps({"out": str(out), "model": args.model, "size": list(rec.shape[2:]),
                      "psnr": round(float(-10 * torch.log10(mse)), 3), **settings}))
    return 0
