"""Set a trained KL-VAE's latent_scale to 1 / std of its posterior samples on Fashion-MNIST training images.

    python scripts/calibrate_kl_scale.py runs/fm_kl/final [--n 10000]

MAR's KL-16 constant 0.2325 is this number for ImageNet; a generator (xAR) trains on latents * latent_scale so
that they have about unit variance, like the flow's noise. Rewrites FOLDER/config.json (atomically); the weights
are unchanged. Run it once, after tokenizer training and before generator training (the generator's token cache
is keyed by the weights, not the scale, and the task reads the scale at every step).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from vision_ar.data import FashionMNIST
from vision_ar.io import atomic_write_text
from vision_ar.tokenizers.kl import KLVAE


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", type=Path)
    ap.add_argument("--n", type=int, default=10000, help="training images to measure on (the first N)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    vae = KLVAE.from_pretrained(args.folder).eval()
    data = FashionMNIST("train", limit=args.n)
    images = torch.stack([data[i][0] for i in range(len(data))])
    scale = vae.estimate_latent_scale(images, generator=torch.Generator().manual_seed(args.seed))
    cfg_path = args.folder / "config.json"
    cfg = json.loads(cfg_path.read_text())
    old, cfg["latent_scale"] = cfg.get("latent_scale"), round(scale, 6)
    atomic_write_text(json.dumps(cfg, indent=2), cfg_path)
    print(json.dumps({"folder": str(args.folder), "latent_scale": cfg["latent_scale"], "previous": old, "n": len(data)}))


if __name__ == "__main__":
    main()
