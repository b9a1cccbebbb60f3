"""Speed and peak memory of VAR sampling on this machine.

    python benchmarks/var_speed.py --model var-d16 --batch 1 16      # random weights, 256px, official VQ-VAE shape
    python benchmarks/var_speed.py --model fmnist-var --batch 1 16 256

Each (model, batch) runs in a fresh subprocess so the peak resident memory (ru_maxrss) belongs to it alone.
One warm-up image, then `--repeats` timed batches; CFG on (doubled batch), top-k 900 / top-p 0.96 as in VAR's demo.
Prints one JSON line per configuration.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def run_one(model: str, batch: int, repeats: int, threads: int, precision: str = "fp32") -> dict:
    import torch

    torch.set_num_threads(threads)
    from vision_ar.sampling.next_scale import sample_next_scale

    if model == "fmnist-var":
        from vision_ar.pipelines import load_pipeline

        pipe = load_pipeline("fmnist-var")
        var, vae, num_classes, cfg = pipe.var, pipe.vae, 10, pipe.defaults["guidance_scale"]
    else:
        from vision_ar.registry import create

        torch.manual_seed(0)
        var = create(model).eval()
        vae = create("var-vqvae-f16", patch_nums=var.config.patch_nums).eval()
        num_classes, cfg = 1000, 4.0
    from vision_ar.pipelines.var import VARPipeline
    from vision_ar.precision import apply_precision

    chosen = apply_precision(VARPipeline(vae, var), precision, batch_size=batch).describe()
    labels = [i % num_classes for i in range(batch)]
    g = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        sample_next_scale(var, vae, labels[:1], g, cfg=cfg, top_k=900, top_p=0.96)  # warm-up (batch 1: cheap)
        t0 = time.perf_counter()
        for _ in range(repeats):
            sample_next_scale(var, vae, labels, g, cfg=cfg, top_k=900, top_p=0.96)
        dt = (time.perf_counter() - t0) / repeats
    return {"model": model, "batch": batch, "threads": threads, "precision": chosen, "seconds_per_batch": round(dt, 3),
            "images_per_s": round(batch / dt, 3), "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
            "torch": torch.__version__}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="var-d16")
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--precision", default="fp32", help="fp32 | fp32-packed | fp16 | bf16 | int8 | auto (vision_ar/precision.py)")
    ap.add_argument("--_child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._child:
        print(json.dumps(run_one(args.model, args.batch[0], args.repeats, args.threads, args.precision)))
        return
    for b in args.batch:
        out = subprocess.run([sys.executable, __file__, "--_child", "--model", args.model, "--batch", str(b),
                              "--repeats", str(args.repeats), "--threads", str(args.threads),
                              "--precision", args.precision],
                             capture_output=True, text=True)
        print(out.stdout.strip() or out.stderr.strip()[-2000:], flush=True)


if __name__ == "__main__":
    main()
