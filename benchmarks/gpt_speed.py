"""Speed and peak memory of next-token sampling (plain KV-cached loop) on this machine.

    python benchmarks/gpt_speed.py --model gpt-b --batch 1 16          # random weights, 256px (16x16 tokens)
    python benchmarks/gpt_speed.py --model fmnist-gpt --batch 1 16 256

Each (model, batch) runs in a fresh subprocess so the peak resident memory (ru_maxrss) is its own. CFG on
(doubled batch, scale 2.0 for presets / the pipeline default for shipped models). Reports tokens/s of the
generator alone and images/s including the VQ decoder. One JSON line per configuration.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def run_one(model: str, batch: int, threads: int, precision: str = "fp32") -> dict:
    import torch

    torch.set_num_threads(threads)
    from vision_ar.sampling.token_loop import generate

    if model.startswith("fmnist-"):
        from vision_ar.pipelines import load_pipeline

        pipe = load_pipeline(model)
        gpt, vq, num_classes, cfg = pipe.gpt, pipe.vq, 10, pipe.defaults["guidance_scale"]
    else:
        from vision_ar.registry import create

        torch.manual_seed(0)
        gpt = create(model).eval()
        vq = create("vq-16").eval()
        num_classes, cfg = 1000, 2.0
    from vision_ar.pipelines.gpt import GPTPipeline
    from vision_ar.precision import apply_precision

    chosen = apply_precision(GPTPipeline(vq, gpt), precision, batch_size=batch).describe()
    n = gpt.config.block_size
    cond = torch.arange(batch) % num_classes
    g = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        generate(gpt, cond[:1], 4, cfg_scale=cfg, generator=g)  # warm-up
        t0 = time.perf_counter()
        tokens = generate(gpt, cond, n, cfg_scale=cfg, generator=g)
        t_gen = time.perf_counter() - t0
        vq.decode(gpt.token_layout.unflatten(tokens))
        t_all = time.perf_counter() - t0
    return {"model": model, "batch": batch, "threads": threads, "precision": chosen, "tokens": n,
            "tokens_per_s": round(batch * n / t_gen, 1),
            "generate_seconds": round(t_gen, 3), "images_per_s": round(batch / t_all, 3),
            "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="gpt-b")
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--precision", default="fp32", help="fp32 | fp32-packed | fp16 | bf16 | int8 | auto (vision_ar/precision.py)")
    ap.add_argument("--_child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._child:
        print(json.dumps(run_one(args.model, args.batch[0], args.threads, args.precision)))
        return
    for b in args.batch:
        out = subprocess.run([sys.executable, __file__, "--_child", "--model", args.model, "--batch", str(b),
                              "--threads", str(args.threads), "--precision", args.precision],
                             capture_output=True, text=True)
        print(out.stdout.strip() or out.stderr.strip()[-2000:], flush=True)


if __name__ == "__main__":
    main()
