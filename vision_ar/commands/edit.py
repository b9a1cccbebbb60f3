"""`vision-ar edit`: in-paint, out-paint or class-edit one image with a model, write the result as a PNG.

    vision-ar edit --model fmnist-var --image in.png --mask mask.png --mode inpaint --out out.png
    vision-ar edit --model fmnist-gpt --image in.png --box 8 8 24 24 --mode edit --class 7 --cfg 4 --out out.png
    vision-ar edit --model fmnist-var --image in.png --box 0 0 16 32 --mode inpaint --class infer --out out.png
    vision-ar edit --model fmnist-var --image in.png --mode outpaint --direction right --amount 16 --out wide.png
    vision-ar edit --model runs/xar/pipeline --image in.png --box 0 0 16 32 --mode inpaint --flow-steps 20 --out o.png

The mask marks the region to GENERATE (white = generate, black = keep), at the image's size; --box gives it as
top left bottom right pixels instead. Out-painting takes --direction (left, right, top, bottom, or several joined
by '+') with --amount (pixels if an integer, else a fraction of the image side), or --canvas HEIGHT WIDTH [TOP
LEFT]. The image and the mask are read and checked before the model is loaded; nothing is written on an error.
The families' own flags (official checkpoint paths, --more-smooth, --flow-steps, ...) are those of `vision-ar
sample`; a setting the model's editing does not take (--top-k for xAR, --sjd-window) is refused, naming it.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from ..errors import ConfigError
from ..io import atomic_path, check_writable
from .family_flags import add_cli_flags, call_kwargs, load_kwargs

MODES = ("inpaint", "outpaint", "edit")


def _class_label(text: str | None):
    """--class: a class id, or 'infer' (pipelines/editing.py: the model infers it from the known pixels)."""
    from ..pipelines.editing import INFER

    if text is None or text == INFER:
        return text
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"--class {text!r} is not a class id (an integer) or 'infer'") from None


def add_parser(sub):
    p = sub.add_parser("edit", help="in-paint, out-paint or class-edit an image", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="shipped model (fmnist-var, fmnist-gpt), pipeline folder, or preset")
    p.add_argument("--image", required=True, help="input image file (PNG, JPEG, ...)")
    p.add_argument("--mode", required=True, choices=MODES)
    p.add_argument("--mask", help="mask image of the image's size: white = generate, black = keep")
    p.add_argument("--box", type=int, nargs=4, metavar=("TOP", "LEFT", "BOTTOM", "RIGHT"),
                   help="the region to generate as a pixel box, instead of --mask")
    p.add_argument("--direction", help="outpaint: left, right, top, bottom (or several joined by '+')")
    p.add_argument("--amount", default="0.5", help="outpaint: how far to extend (int = pixels, float = fraction)")
    p.add_argument("--canvas", type=int, nargs="+", metavar="N",
                   help="outpaint: canvas HEIGHT WIDTH [TOP LEFT] in pixels (image centred when TOP LEFT omitted)")
    p.add_argument("--class", dest="class_label", default=None,
                   help="class to generate (required for --mode edit; default unconditional); 'infer' (inpaint, "
                        "outpaint; VAR and GPT): the class the kept pixels make most likely under the model")
    p.add_argument("--cfg", type=float, default=None, help="guidance scale (model default if unset)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--temperature", type=float, default=None)
    p.add_argument("--candidates", type=int, default=None,
                   help="GPT / VAR / xAR: edits drawn side by side per image, one kept (model default if unset)")
    p.add_argument("--strategy", choices=("particles", "passes", "class_evidence", "fresh", "hold"), default=None,
                   help="GPT / VAR: how the kept edit is chosen: a particle filter at the known tokens "
                        "(particles), by weight at the end (passes); GPT class edits: the pass the generator finds "
                        "most typical of the class (class_evidence) or a fresh sample of the class whose border "
                        "fits the kept ring best (fresh); xAR: known latents held on their flow path (hold) or "
                        "fresh; model default if unset")
    p.add_argument("--blend", type=int, default=0, help="fade over this many known pixels at the border (0 = keep all)")
    p.add_argument("--any-part", action="store_true", help="keep a token when any part of its footprint is known")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", required=True, help="output .png")
    add_cli_flags(p)  # every family's own flags (official checkpoint paths, --more-smooth, --flow-steps, ...)
    p.set_defaults(func=run)


def _amount(text: str):
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            raise ConfigError(f"--amount {text!r}: give an integer (pixels) or a fraction like 0.5") from None


def _region_args(args):
    """What the pipeline method takes besides the image: the mask / box, or the canvas / direction."""
    if args.mode == "outpaint":
        if args.mask or args.box:
            raise ConfigError("--mode outpaint takes --direction or --canvas, not --mask/--box (out-painting "
                              "generates around the image)")
        if bool(args.direction) == bool(args.canvas):
            raise ConfigError("--mode outpaint needs exactly one of --direction (with --amount) or --canvas H W [TOP LEFT]")
        if args.canvas and len(args.canvas) not in (2, 4):
            raise ConfigError(f"--canvas takes HEIGHT WIDTH or HEIGHT WIDTH TOP LEFT, got {len(args.canvas)} numbers")
        return args.direction or tuple(args.canvas)
    if args.direction or args.canvas:
        raise ConfigError(f"--direction/--canvas are for --mode outpaint; --mode {args.mode} takes --mask or --box")
    if bool(args.mask) == bool(args.box):
        raise ConfigError(f"--mode {args.mode} needs exactly one of --mask FILE or --box TOP LEFT BOTTOM RIGHT")
    if args.mode == "edit" and args.class_label is None:
        raise ConfigError("--mode edit needs --class, the class the masked region becomes")
    if args.mask:
        from ..pipelines.masks import read_image_file

        return read_image_file(args.mask, "mask")
    return tuple(args.box)


def run(args) -> int:
    out = Path(args.out)
    if out.suffix.lower() != ".png":
        raise ConfigError(f"--out must be a .png file, got {out}")
    check_writable(out)
    from ..pipelines.masks import read_image_file

    image = read_image_file(args.image, "image")  # before the model: a bad file fails fast
    args.class_label = _class_label(args.class_label)
    region = _region_args(args)
    from ..pipelines import load_pipeline

    pipe = load_pipeline(args.model, device=args.device, **load_kwargs(args))
    settings = {k: v for k, v in dict(guidance_scale=args.cfg, top_k=args.top_k, top_p=args.top_p,
                                      temperature=args.temperature, edit_candidates=args.candidates,
                                      edit_strategy=args.strategy).items() if v is not None}
    settings.update(call_kwargs(args, pipe))  # a flag of another family is refused, naming both
    generator = torch.Generator(device="cpu").manual_seed(args.seed)
    common = dict(generator=generator, any_part=args.any_part, blend=args.blend, output_type="pil", **settings)
    if args.mode == "inpaint":
        res = pipe.inpaint(image, region, args.class_label, **common)
    elif args.mode == "edit":
        res = pipe.edit(image, region, args.class_label, **common)
    else:
        res = pipe.outpaint(image, region, args.class_label, amount=_amount(args.amount), **common)
    with atomic_path(out) as tmp:
        res.images[0].save(tmp, format="PNG")
    summary = {"out": str(out), "mode": args.mode, "size": list(res.images[0].size[::-1]),
               "windows": res.stats.get("windows"), "known_token_fraction": res.stats.get("known_token_fraction"),
               "seconds": round(res.stats.get("seconds", 0.0), 3), "notes": res.stats.get("notes", [])}
    from ..pipelines.editing import INFER

    if args.class_label == INFER:  # which class the model found, and how sure it was
        summary["class"] = res.labels[0]
        summary["class_log_likelihoods"] = [round(v, 2) for v in res.stats["class_log_likelihoods"][0].tolist()]
    print(json.dumps(summary))
    return 0
