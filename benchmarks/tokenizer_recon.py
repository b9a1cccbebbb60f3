"""Reconstruction quality of a tokenizer on the Fashion-MNIST test split: PSNR, SSIM, classifier accuracy of the
reconstructions and classifier-feature rFID (reconstructions vs the test split; read it beside the floor).

    python benchmarks/tokenizer_recon.py runs/fm_var_vae/final            # a tokenizer folder
    python benchmarks/tokenizer_recon.py vision_ar/weights/fmnist_var/tokenizer --n 10000

Prints one JSON row. PSNR/SSIM are computed on [0, 1] images (channel 0; Fashion-MNIST is grey).
"""
from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F


def ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM of (B,1,H,W) images in [0,1]: 11x11 Gaussian window (sigma 1.5), the usual constants."""
    g = torch.exp(-((torch.arange(11) - 5.0) ** 2) / (2 * 1.5 ** 2))
    w = (g[:, None] * g[None, :] / g.sum() ** 2).view(1, 1, 11, 11)
    mu_x, mu_y = F.conv2d(x, w), F.conv2d(y, w)
    sxx = F.conv2d(x * x, w) - mu_x ** 2
    syy = F.conv2d(y * y, w) - mu_y ** 2
    sxy = F.conv2d(x * y, w) - mu_x * mu_y
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    m = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (sxx + syy + c2))
    return m.mean(dim=(1, 2, 3))


@torch.inference_mode()
def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", help="tokenizer folder (config.json + model.safetensors)")
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--batch-size", type=int, default=500)
    args = ap.parse_args()
    from vision_ar.data import FashionMNIST
    from vision_ar.eval.fmnist_metrics import FashionMNISTEvaluator
    from vision_ar.train.recipes import load_model_folder

    tok = load_model_folder(args.folder).eval()
    data = FashionMNIST("test", limit=args.n)
    t0 = time.perf_counter()
    recs, psnr, ssims = [], [], []
    for i in range(0, len(data), args.batch_size):
        x = torch.stack([data[j][0] for j in range(i, min(i + args.batch_size, len(data)))])
        r = tok.decode(tok.encode(x)).clamp(-1, 1)
        a, b = (x[:, :1] + 1) / 2, (r[:, :1] + 1) / 2
        psnr.append(-10 * torch.log10(((a - b) ** 2).mean(dim=(1, 2, 3)).clamp_min(1e-10)))
        ssims.append(ssim(a, b))
        recs.append(r)
    seconds = time.perf_counter() - t0
    recs = torch.cat(recs)
    m = FashionMNISTEvaluator().evaluate(recs, data.labels[: len(recs)])
    print(json.dumps({"tokenizer": args.folder, "n": len(recs), "psnr": round(torch.cat(psnr).mean().item(), 3),
                      "ssim": round(torch.cat(ssims).mean().item(), 4), "recon_accuracy": round(m["accuracy"], 4),
                      "rfid": round(m["fid"], 4), "fid_floor_train_vs_test": round(m["fid_floor_train_vs_test"], 4),
                      "seconds": round(seconds, 1)}))


if __name__ == "__main__":
    main()
