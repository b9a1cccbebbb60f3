"""Which token positions Speculative Jacobi Decoding commits at each iteration, for one image.

    python benchmarks/sjd_acceptance_map.py --model fmnist-gpt --label 7 --seed 0 --init random --out sjd_map.png

Writes a PNG: the sampled image (left) and the token grid (right), each cell shaded by the Jacobi iteration
that committed it and labelled with that iteration's number (0 = the prefill's first token). Runs of cells with
the same number were accepted together in one forward. Also prints the per-iteration accepted lengths.
"""
from __future__ import annotations

import argparse
import json

import numpy as np
import torch
from PIL import Image, ImageDraw


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="fmnist-gpt")
    ap.add_argument("--label", type=int, default=7)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cfg", type=float, default=None)
    ap.add_argument("--init", default="random")
    ap.add_argument("--window", type=int, default=16)
    ap.add_argument("--cell", type=int, default=40, help="pixels per token cell in the picture")
    ap.add_argument("--out", default="sjd_map.png")
    args = ap.parse_args()
    from vision_ar.pipelines import load_pipeline
    from vision_ar.sampling.jacobi import sjd_generate

    pipe = load_pipeline(args.model)
    gpt, vq = pipe.gpt, pipe.vq
    n = gpt.config.block_size
    rows, side = gpt.token_layout.shape  # a grid: the map has its rows and columns
    cfg = pipe.defaults["guidance_scale"] if args.cfg is None else args.cfg
    g = torch.Generator().manual_seed(args.seed)
    with torch.inference_mode():
        tokens, stats = sjd_generate(gpt, torch.tensor([args.label]), n, cfg_scale=cfg, generator=g,
                                     window_length=args.window, init=args.init, return_stats=True)
        image = ((vq.decode(gpt.token_layout.unflatten(tokens))[0, 0] + 1) * 127.5).clamp(0, 255).byte().numpy()
    # token position -> iteration that committed it (the prefill commits token 0)
    iteration = np.zeros(n, dtype=int)
    pos = 1
    for k, length in enumerate(stats.accepted_lengths, start=1):
        iteration[pos: pos + length] = k
        pos += length
    c = args.cell
    canvas = Image.new("RGB", (2 * side * c + 10, rows * c), "white")
    canvas.paste(Image.fromarray(image).resize((side * c, rows * c), Image.NEAREST).convert("RGB"), (0, 0))
    draw = ImageDraw.Draw(canvas)
    last = max(iteration.max(), 1)
    for i in range(n):
        r, col = divmod(i, side)
        shade = int(230 - 180 * iteration[i] / last)
        x0, y0 = side * c + 10 + col * c, r * c
        draw.rectangle([x0, y0, x0 + c - 1, y0 + c - 1], fill=(shade, shade, 255), outline="white")
        draw.text((x0 + c // 3, y0 + c // 3), str(iteration[i]), fill="black")
    canvas.save(args.out)
    print(json.dumps({"out": args.out, "label": args.label, "tokens": n, "forwards": stats.forwards,
                      "accepted_lengths": stats.accepted_lengths}))


if __name__ == "__main__":
    main()
