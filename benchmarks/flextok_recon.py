"""FlexTok reconstruction on the Fashion-MNIST test split versus the number of kept tokens K = 1, 2, 4, ... N:
PSNR, SSIM, classifier accuracy of the reconstructions and classifier-feature rFID (read it beside the floor,
the FID of as many real train images), plus one picture of several test images reconstructed from each K.

    python benchmarks/flextok_recon.py runs/fm_flextok/final --n 1000 --grid docs/fmnist_flextok_recon.png
    python benchmarks/flextok_recon.py vision_ar/weights/fmnist_flextok/tokenizer --steps 25 --guidance 1.5

Every K decodes the same images with the same noise (one seed), so columns differ only by the tokens kept.
Prints one JSON row per K. PSNR/SSIM on [0, 1] images, channel 0 (Fashion-MNIST is grey).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tokenizer_recon import ssim  # noqa: E402  (the same SSIM as the other tokenizers' table)


def token_counts(n: int, given: str | None) -> list[int]:
    if given:
        return [int(k) for k in given.split(",")]
    ks, k = [], 1
    while k < n:
        ks.append(k)
        k *= 2
    return ks + [n]


def save_grid(originals: torch.Tensor, recs: dict[int, torch.Tensor], path: str, scale: int = 2) -> None:
    """Rows: images; columns: the original, then the reconstruction from each K (labelled on top)."""
    from PIL import Image, ImageDraw

    from vision_ar.io import atomic_path

    cols = [originals] + [recs[k] for k in sorted(recs)]
    labels = ["input"] + [f"K={k}" for k in sorted(recs)]
    n, _, h, w = originals.shape
    pad, top = 2, 14
    cell_w, cell_h = w * scale + pad, h * scale + pad
    canvas = Image.new("L", (len(cols) * cell_w + pad, n * cell_h + pad + top), color=255)
    draw = ImageDraw.Draw(canvas)
    for c, (imgs, label) in enumerate(zip(cols, labels)):
        draw.text((pad + c * cell_w, 1), label, fill=0)
        for r in range(n):
            x = ((imgs[r, 0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
            tile = Image.fromarray(x, mode="L").resize((w * scale, h * scale), Image.NEAREST)
            canvas.paste(tile, (pad + c * cell_w, top + pad + r * cell_h))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        canvas.save(tmp, format="PNG")


@torch.inference_mode()
def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", help="FlexTok folder (model.safetensors + config.json)")
    ap.add_argument("--n", type=int, default=1000, help="test images (rFID needs many; decoding costs steps x K's)")
    ap.add_argument("--batch-size", type=int, default=250)
    ap.add_argument("--ks", help="comma-separated token counts (default 1, 2, 4, ..., N)")
    ap.add_argument("--steps", type=int, help="flow steps (default: the tokenizer's decode default)")
    ap.add_argument("--guidance", help="guidance scale or schedule in t, e.g. 1.5 or '1+2*t' (default: tokenizer's)")
    ap.add_argument("--apg", choices=("on", "off"), help="adaptive projected guidance (default: tokenizer's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--grid", help="write the picture here (PNG)")
    ap.add_argument("--grid-images", type=int, default=8)
    args = ap.parse_args()

    from vision_ar.data import FashionMNIST
    from vision_ar.eval.fmnist_metrics import FashionMNISTEvaluator
    from vision_ar.sampling.rectified_flow import parse_guidance
    from vision_ar.tokenizers.flextok import FlexTok

    tok = FlexTok.from_pretrained(args.folder).eval()
    sampling = {"steps": args.steps, "apg": None if args.apg is None else args.apg == "on",
                "guidance_scale": None if args.guidance is None else parse_guidance(args.guidance)}
    effective = {"steps": args.steps or tok.decode_defaults["steps"],
                 "guidance_scale": args.guidance or tok.decode_defaults["guidance_scale"],
                 "apg": tok.decode_defaults["apg"] if args.apg is None else args.apg == "on"}
    data = FashionMNIST("test", limit=args.n)
    x_all = torch.stack([data[i][0] for i in range(len(data))])
    labels = data.labels[: len(x_all)]
    tokens = torch.cat([tok.encode(x_all[i:i + args.batch_size]) for i in range(0, len(x_all), args.batch_size)])
    evaluator = FashionMNISTEvaluator()
    grid = {}
    for k in token_counts(tok.n_registers, args.ks):
        t0 = time.perf_counter()
        g = torch.Generator().manual_seed(args.seed)  # same noise for every K (draws are per image, in order)
        recs = torch.cat([tok.decode(tokens[i:i + args.batch_size, :k], generator=g, **sampling).clamp(-1, 1)
                          for i in range(0, len(tokens), args.batch_size)])
        seconds = time.perf_counter() - t0
        a, b = (x_all[:, :1] + 1) / 2, (recs[:, :1] + 1) / 2
        psnr = -10 * torch.log10(((a - b) ** 2).mean(dim=(1, 2, 3)).clamp_min(1e-10))
        m = evaluator.evaluate(recs, labels)
        print(json.dumps({"tokenizer": args.folder, "tokens": k, "n": len(recs), "psnr": round(psnr.mean().item(), 3),
                          "ssim": round(ssim(a, b).mean().item(), 4), "recon_accuracy": round(m["accuracy"], 4),
                          "rfid": round(m["fid"], 3), "fid_floor_train_vs_test": round(m["fid_floor_train_vs_test"], 3),
                          "decode_settings": effective,
                          "seconds": round(seconds, 1)}), flush=True)
        grid[k] = recs[: args.grid_images]
    if args.grid:
        save_grid(x_all[: args.grid_images], grid, args.grid)
        print(f"wrote {args.grid}")


if __name__ == "__main__":
    main()
