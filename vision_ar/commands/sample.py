"""`vision-ar sample`: draw images of the requested classes and write a PNG grid or an ADM-layout .npz.

    vision-ar sample --model fmnist-var --classes 0 1 2 3 --cfg 2.0 --seed 0 --out grid.png
    vision-ar sample --model var-d16 --vae vae_ch160v4096z32.pth --checkpoint var_d16.pth \
        --classes 207 360 --cfg 4.0 --seed 0 --out samples.npz
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError
from ..family import list_families, shipped_folders
from ..io import atomic_path, check_writable
from .family_flags import add_cli_flags, call_kwargs, check_sampler_flags, load_kwargs

OUT_SUFFIXES = (".png", ".jpg", ".jpeg", ".npz")


def add_parser(sub):
    p = sub.add_parser("sample", help="draw class-conditional samples", description=__doc__,
                       formatter_class=__import__("argparse").RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="shipped model (" + ", ".join(shipped_names()) + "), pipeline "
                   "folder, or preset")
    p.add_argument("--classes", type=int, nargs="+", required=True, help="class ids, one image each")
    p.add_argument("--repeat", type=int, default=1, help="images per class id")
    p.add_argument("--cfg", type=float, default=None, help="classifier-free guidance scale (model default if unset)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--temperature", type=float, default=None)
    # the first sampler of a family is its default; the others are named after the family that offers them
    extra = [f"{name} ({f.name})" for f in list_families() for name in f.sampling.samplers[1:]]
    p.add_argument("--sampler", default="default", help=" | ".join(["default"] + extra))
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--precision", default="fp32", help="fp32 (exact) | fp32-packed (CPU: fp32 in oneDNN's layout) | fp16 | bf16 | int8 | auto (fastest here, "
                   "measured once); see vision_ar/precision.py")
    p.add_argument("--parity", action="store_true", help="the official results: fp32 only (refuses reduced modes)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar (shown for several batches)")
    p.add_argument("--out", required=True, help="grid .png/.jpg, or .npz (ADM layout: uint8 arr_0 N,H,W,3 + labels)")
    add_cli_flags(p)  # each family's own flags (official checkpoint paths, sampler settings)
    p.set_defaults(func=run)


def shipped_names() -> list[str]:
    return sorted(shipped_folders())


def save_grid(images: np.ndarray, path: Path, ncol: int | None = None) -> None:
    from PIL import Image

    n, h, w, c = images.shape
    ncol = ncol or min(n, max(1, int(math.ceil(math.sqrt(n)))))
    nrow = int(math.ceil(n / ncol))
    grid = np.zeros((nrow * (h + 2) + 2, ncol * (w + 2) + 2, c), dtype=np.uint8)
    for i, im in enumerate(images):
        r, k = divmod(i, ncol)
        grid[2 + r * (h + 2): 2 + r * (h + 2) + h, 2 + k * (w + 2): 2 + k * (w + 2) + w] = im
    with atomic_path(path) as tmp:
        Image.fromarray(grid).save(tmp, format="PNG" if path.suffix.lower() == ".png" else "JPEG")


def save_npz(images: np.ndarray, labels: list[int], path: Path) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, arr_0=images, labels=np.asarray(labels, dtype=np.int64))


def run(args) -> int:
    out = Path(args.out)
    if out.suffix.lower() not in OUT_SUFFIXES:
        raise ConfigError(f"--out must end in one of {OUT_SUFFIXES}, got {out}")
    check_writable(out)  # before any model is loaded
    if args.repeat < 1 or args.batch_size < 1:
        raise ConfigError("--repeat and --batch-size must be >= 1")
    check_sampler_flags(args)
    from ..distributed import resolve_device
    from ..pipelines import load_pipeline
    from ..pipelines.batches import sample_in_batches
    from ..precision import apply_precision, check_precision_request

    check_precision_request(args.precision, args.parity)  # before loading anything
    device = str(resolve_device(args.device))  # an unknown or absent device is refused before loading
    pipe = load_pipeline(args.model, device=device, **load_kwargs(args))
    labels = [c for _ in range(args.repeat) for c in args.classes]  # one grid row per repeat
    # rows per forward for the precision micro-benchmark: SJD verifies a whole window at once
    window = (getattr(args, "sjd_window", None) or pipe.defaults.get("sjd_window", 1)) if args.sampler == "sjd" else 1
    apply_precision(pipe, args.precision, batch_size=min(args.batch_size, len(labels)), tokens_per_forward=window,
                    parity=args.parity)
    kwargs = {k: v for k, v in dict(guidance_scale=args.cfg, top_k=args.top_k, top_p=args.top_p,
                                    temperature=args.temperature).items() if v is not None}
    if args.sampler != "default":
        kwargs["sampler"] = args.sampler
    kwargs.update(call_kwargs(args, pipe))
    # One generator for the whole run: same seed and settings -> same images on the same device.
    generator = torch.Generator(device="cpu").manual_seed(args.seed)
    images, stats = sample_in_batches(pipe, labels, args.batch_size, generator, progress=not args.no_progress, **kwargs)
    if out.suffix.lower() == ".npz":
        save_npz(images, labels, out)
    else:
        save_grid(images, out, ncol=len(args.classes) if args.repeat > 1 else None)
    print(json.dumps({"out": str(out), "n": len(labels), **stats}))
    return 0
