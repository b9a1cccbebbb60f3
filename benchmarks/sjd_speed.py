"""Plain next-token loop vs Speculative Jacobi Decoding on one GPT: forwards per image, acceptance lengths,
wall time, for each draft initialisation.

    python benchmarks/sjd_speed.py --model fmnist-gpt --images 64 --cfg 2.0          # the shipped Fashion-MNIST GPT
    python benchmarks/sjd_speed.py --model path/to/generator_folder --device cuda
    python benchmarks/sjd_speed.py --model gpt-b --tokens 64 --images 2               # random weights (mechanics only)

--model: a shipped pipeline name, a pipeline folder (its `generator/` sub-folder is used), a GPT folder
(`config.json` + `model.safetensors`), or a preset name (random weights: acceptance is then meaningless).
Prints one JSON line per sampler. The target of the project is >= 2x fewer forwards per image than the
plain loop (one forward per token) on the trained Fashion-MNIST GPT.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from vision_ar.models.next_token import GPT
from vision_ar.sampling.jacobi import DRAFT_INITS, sjd_generate
from vision_ar.sampling.token_loop import generate


def load_gpt(name: str, device: str) -> GPT:
    from vision_ar.pipelines import shipped_folders

    folder = shipped_folders().get(name, Path(name))
    if (folder / "generator" / "config.json").is_file():
        folder = folder / "generator"
    if (folder / "config.json").is_file():
        return GPT.from_pretrained(folder).to(device).eval()
    from vision_ar.registry import create

    return create(name).to(device).eval()


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="fmnist-gpt")
    ap.add_argument("--images", type=int, default=16, help="images per run (one batch), classes cycled")
    ap.add_argument("--tokens", type=int, default=None, help="image tokens per image (default: block_size)")
    ap.add_argument("--cfg", type=float, default=1.0)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--top-k", type=int, default=0)
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--window", type=int, default=16)
    ap.add_argument("--inits", nargs="+", default=list(DRAFT_INITS), choices=DRAFT_INITS)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args(argv)

    model = load_gpt(args.model, args.device)
    n = args.tokens or model.block_size
    labels = torch.arange(args.images, device=args.device) % model.num_classes
    settings = dict(cfg_scale=args.cfg, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)

    _sync(args.device)
    t0 = time.perf_counter()
    generate(model, labels, n, generator=torch.Generator(args.device).manual_seed(args.seed), **settings)
    _sync(args.device)
    plain_s = time.perf_counter() - t0
    print(json.dumps({"sampler": "plain", "model": args.model, "images": args.images, "tokens": n,
                      "forwards": n, "forwards_per_image": n, "seconds": round(plain_s, 3)}))

    for init in args.inits:
        _sync(args.device)
        t0 = time.perf_counter()
        _, st = sjd_generate(model, labels, n, generator=torch.Generator(args.device).manual_seed(args.seed),
                             window_length=min(args.window, n), init=init, return_stats=True, **settings)
        _sync(args.device)
        s = time.perf_counter() - t0
        print(json.dumps({"sampler": f"sjd-{init}", "window": min(args.window, n), "forwards": st.forwards,
                          "forwards_per_image": round(st.forwards_per_image, 2),
                          "fewer_forwards_per_image": round(n / st.forwards_per_image, 2),
                          "mean_accept_length": round(st.mean_accepted_length, 3),
                          "accept_histogram": st.histogram(), "seconds": round(s, 3),
                          "speedup_wall": round(plain_s / s, 2)}))


if __name__ == "__main__":
    main()
