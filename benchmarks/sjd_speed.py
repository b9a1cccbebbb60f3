"""Plain next-token loop vs Speculative Jacobi Decoding on one GPT: forwards per image, acceptance lengths,
wall time, for each draft initialisation.

    python benchmarks/sjd_speed.py --model fmnist-gpt --images 64 --cfg 2.0          # the shipped Fashion-MNIST GPT
    python benchmarks/sjd_speed.py --model path/to/generator_folder --device cuda
    python benchmarks/sjd_speed.py --model gpt-b --tokens 64 --images 2               # random weights (mechanics only)
    python benchmarks/sjd_speed.py --model fmnist-gpt --images 1 --cfg 3.0 --inits vertical --precision bf16 \
        --repeats 5                                                                 # batch 1, same precision

--model: a shipped pipeline name, a pipeline folder (its `generator/` sub-folder is used), a GPT folder
(`config.json` + `model.safetensors`), or a preset name (random weights: acceptance is then meaningless).
--precision converts the GPT's linear layers for BOTH samplers (vision_ar/precision.py; "auto" measures at the
window's row count); --repeats alternates plain and SJD runs and reports medians, `speedup_wall` being the
median of the per-round time ratios. Prints one JSON line per sampler. The target of the project is >= 2x fewer
forwards per image than the plain loop (one forward per token) on the trained Fashion-MNIST GPT.
"""
from __future__ import annotations

import argparse
import json
import statistics
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
    ap.add_argument("--precision", default="fp32", help="fp32 | fp32-packed | fp16 | bf16 | int8 | auto, for both samplers")
    ap.add_argument("--repeats", type=int, default=1, help="alternating timed rounds")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    model = load_gpt(args.model, args.device)
    n = args.tokens or model.block_size
    window = min(args.window, n)
    if args.precision != "fp32":
        from vision_ar.precision import Workload, convert_linears, resolve_precision

        rows = args.images * (2 if args.cfg > 1 else 1) * window
        convert_linears(model, resolve_precision(args.precision, args.device, workload=Workload.of(model, rows)))
    labels = torch.arange(args.images, device=args.device) % model.num_classes
    settings = dict(cfg_scale=args.cfg, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)

    def timed(fn):
        _sync(args.device)
        t0 = time.perf_counter()
        out = fn()
        _sync(args.device)
        return time.perf_counter() - t0, out

    def plain():
        return generate(model, labels, n, generator=torch.Generator(args.device).manual_seed(args.seed), **settings)

    def sjd(init):
        return sjd_generate(model, labels, n, generator=torch.Generator(args.device).manual_seed(args.seed),
                            window_length=window, init=init, return_stats=True, **settings)

    runs = {"plain": plain, **{init: (lambda init=init: sjd(init)) for init in args.inits}}
    times, stats = {k: [] for k in runs}, {}
    for _ in range(max(args.repeats, 1)):
        for k, fn in runs.items():
            dt, out = timed(fn)
            times[k].append(dt)
            if k != "plain":
                stats[k] = out[1]
    plain_s = statistics.median(times["plain"])
    print(json.dumps({"sampler": "plain", "model": args.model, "precision": args.precision, "images": args.images,
                      "tokens": n, "forwards": n, "forwards_per_image": n, "seconds": round(plain_s, 3),
                      "threads": torch.get_num_threads()}))
    for init in args.inits:
        st = stats[init]
        ratios = [a / b for a, b in zip(times["plain"], times[init])]
        print(json.dumps({"sampler": f"sjd-{init}", "window": window, "forwards": st.forwards,
                          "forwards_per_image": round(st.forwards_per_image, 2),
                          "fewer_forwards_per_image": round(n / st.forwards_per_image, 2),
                          "mean_accept_length": round(st.mean_accepted_length, 3),
                          "accept_histogram": st.histogram(), "seconds": round(statistics.median(times[init]), 3),
                          "speedup_wall": round(statistics.median(ratios), 2)}))


if __name__ == "__main__":
    main()
