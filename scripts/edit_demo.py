"""Before / mask / after grids of in-painting, class-conditional editing and out-painting with the shipped models.

    python scripts/edit_demo.py                       # docs/edit_fmnist-{var,gpt,xar}.png
    python scripts/edit_demo.py --models fmnist-var --n 8 --seed 1 --out-dir /tmp/edits

Each picture has three panels, one column per Fashion-MNIST test image (the first `--n` test images):
  inpaint   the top half is generated unconditionally (None label): the model restores what fits the bottom;
  edit      the centre 24x24 (rows and columns 4..28) becomes the class in the column's caption (the next class,
            modulo 10), with each pipeline's own guidance and edit strategy (what `vision-ar edit` does);
  outpaint  the image is extended by 16 pixels to the right (32x48 canvas), conditioned on its own class.
Rows of a panel: the input, the mask (the region to generate in red), the result. Pixels are enlarged 3x.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

SCALE = 3
PAD = 4


def to_u8(images01: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) in [0, 1] -> (B, H, W, 3) uint8."""
    return (images01.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def show_mask(images01: torch.Tensor, generate: torch.Tensor) -> np.ndarray:
    """The input with the region to generate tinted red."""
    x = images01.clone()
    red = torch.tensor([1.0, 0.1, 0.1])[None, :, None, None]
    g = generate[:, None].float()
    x = x * (1 - 0.6 * g) + red * 0.6 * g
    return to_u8(x)


def panel(rows: list[np.ndarray], title: str, captions: list[str]):
    """Rows of (B, H, W, 3) uint8 images (widths may differ per row) -> one PIL image with a title."""
    from PIL import Image, ImageDraw

    n = rows[0].shape[0]
    cell_w = max(r.shape[2] for r in rows) * SCALE + PAD
    heights = [r.shape[1] * SCALE + PAD for r in rows]
    top = 14
    out = Image.new("RGB", (n * cell_w + PAD, top + 12 + sum(heights) + PAD), (255, 255, 255))
    draw = ImageDraw.Draw(out)
    draw.text((PAD, 1), title, fill=(0, 0, 0))
    for i, cap in enumerate(captions):
        draw.text((PAD + i * cell_w, top), cap[:12], fill=(60, 60, 60))
    y = top + 12
    for r, h in zip(rows, heights):
        for i in range(n):
            im = Image.fromarray(r[i]).resize((r.shape[2] * SCALE, r.shape[1] * SCALE), Image.NEAREST)
            out.paste(im, (PAD + i * cell_w, y))
        y += h
    return out


def stack(panels):
    from PIL import Image

    w = max(p.width for p in panels)
    out = Image.new("RGB", (w, sum(p.height for p in panels)), (255, 255, 255))
    y = 0
    for p in panels:
        out.paste(p, (0, y))
        y += p.height
    return out


def demo(model: str, n: int, seed: int):
    from vision_ar.eval.fmnist_metrics import load_split_images
    from vision_ar.pipelines import load_pipeline

    pipe = load_pipeline(model)
    names = pipe.class_names or [str(c) for c in range(pipe.num_classes)]
    images, labels = load_split_images("test")
    x, y = images[:n], labels[:n].tolist()
    x01 = (x + 1) / 2
    g = lambda: torch.Generator().manual_seed(seed)
    H, W = x.shape[2:]

    top_half = torch.zeros(n, H, W, dtype=torch.bool)
    top_half[:, : H // 2] = True
    inp = pipe.inpaint(x, top_half, None, generator=g(), output_type="pt")

    centre = torch.zeros(n, H, W, dtype=torch.bool)
    centre[:, H // 8: 7 * H // 8, W // 8: 7 * W // 8] = True
    targets = [(c + 1) % pipe.num_classes for c in y]
    ed = pipe.edit(x, centre, targets, generator=g(), output_type="pt")

    grow = W // 2
    outp = pipe.outpaint(x, "right", y, amount=grow, generator=g(), output_type="pt")
    canvas = torch.full((n, 3, H, W + grow), 0.5)
    canvas[:, :, :, :W] = x01
    right = torch.zeros(n, H, W + grow, dtype=torch.bool)
    right[:, :, W:] = True

    panels = [
        panel([to_u8(x01), show_mask(x01, top_half), to_u8(inp.images)], f"{model}: inpaint top half (unconditional)",
              [names[c] for c in y]),
        panel([to_u8(x01), show_mask(x01, centre), to_u8(ed.images)], f"{model}: edit centre -> new class",
              ["-> " + names[c] for c in targets]),
        panel([to_u8(x01), show_mask(canvas, right), to_u8(outp.images)], f"{model}: outpaint 16 px right",
              [names[c] for c in y]),
    ]
    return stack(panels)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["fmnist-var", "fmnist-gpt", "fmnist-xar"])
    ap.add_argument("--n", type=int, default=8, help="test images (columns)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out-dir", default=str(Path(__file__).resolve().parents[1] / "docs"))
    args = ap.parse_args(argv)
    from vision_ar.io import atomic_path

    for model in args.models:
        picture = demo(model, args.n, args.seed)
        path = Path(args.out_dir) / f"edit_{model}.png"
        with atomic_path(path) as tmp:
            picture.save(tmp, format="PNG")
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
