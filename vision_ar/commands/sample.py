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
from ..io import atomic_path, check_writable

OUT_SUFFIXES = (".png", ".jpg", ".jpeg", ".npz")


def add_parser(sub):
    p = sub.add_parser("sample", help="draw class-conditional samples", description=__doc__,
                       formatter_class=__import__("argparse").RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="shipped model (fmnist-var, fmnist-gpt), pipeline folder, or preset")
    p.add_argument("--vae", help="official VAR VQ-VAE checkpoint (with a var-d* preset)")
    p.add_argument("--vq", help="official LlamaGen VQ checkpoint (with a gpt-* preset)")
    p.add_argument("--checkpoint", help="official generator checkpoint (with a preset)")
    p.add_argument("--classes", type=int, nargs="+", required=True, help="class ids, one image each")
    p.add_argument("--repeat", type=int, default=1, help="images per class id")
    p.add_argument("--cfg", type=float, default=None, help="classifier-free guidance scale (model default if unset)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--temperature", type=float, default=None)
    p.add_argument("--more-smooth", action="store_true", help="VAR: Gumbel 'more smooth' sampling")
    p.add_argument("--sampler", default="default", help="default | sjd (next-token models)")
    p.add_argument("--sjd-window", type=int, default=None, help="SJD window length")
    p.add_argument("--sjd-init", default=None, help="SJD draft initialisation")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--precision", default="fp32", help="fp32 (exact) | fp16 | bf16 | int8 | auto (fastest here, "
                   "measured once); see vision_ar/precision.py")
    p.add_argument("--parity", action="store_true", help="the official results: fp32 only (refuses reduced modes)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", required=True, help="grid .png/.jpg, or .npz (ADM layout: uint8 arr_0 N,H,W,3 + labels)")
    p.set_defaults(func=run)


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
        Image.fromarray(grid).save(tmp, format="PNG" if path.suffix == ".png" else "JPEG")


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
    from ..pipelines import load_pipeline
    from ..precision import apply_precision, check_precision_request

    check_precision_request(args.precision, args.parity)
    pipe = load_pipeline(args.model, device=args.device, vae=args.vae, vq=args.vq, checkpoint=args.checkpoint)
    labels = [c for _ in range(args.repeat) for c in args.classes]  # one grid row per repeat
    window = (args.sjd_window or pipe.defaults.get("sjd_window", 1)) if args.sampler == "sjd" else 1
    apply_precision(pipe, args.precision, batch_size=min(args.batch_size, len(labels)), tokens_per_forward=window,
                    parity=args.parity)
    kwargs = {k: v for k, v in dict(guidance_scale=args.cfg, top_k=args.top_k, top_p=args.top_p).items()
              if v is not None}
    if args.more_smooth:
        kwargs["more_smooth"] = True
    if args.temperature is not None:
        kwargs["temperature"] = args.temperature
    if args.sampler != "default":
        kwargs["sampler"] = args.sampler
        for k in ("sjd_window", "sjd_init"):
            if getattr(args, k) is not None:
                kwargs[k] = getattr(args, k)
    # One generator for the whole run: same seed and settings -> same images on the same device.
    generator = torch.Generator(device="cpu").manual_seed(args.seed)
    chunks, stats = [], []
    for i in range(0, len(labels), args.batch_size):
        res = pipe(class_labels=labels[i: i + args.batch_size], generator=generator, output_type="np", **kwargs)
        chunks.append(res.images)
        stats.append(res.stats)
    images = np.concatenate(chunks)
    if out.suffix.lower() == ".npz":
        save_npz(images, labels, out)
    else:
        save_grid(images, out, ncol=len(args.classes) if args.repeat > 1 else None)
    summary = {"out": str(out), "n": len(labels), "seconds": round(sum(s.get("seconds", 0) for s in stats), 3)}
    for key in ("forward_passes", "mean_accept_length"):
        if stats and key in stats[0]:
            summary[key] = stats[0][key] if len(stats) == 1 else [s[key] for s in stats]
    print(json.dumps(summary))
    return 0
