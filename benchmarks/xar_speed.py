"""Speed and peak memory of xAR sampling (random weights) versus the number of flow steps per entity.

    python benchmarks/xar_speed.py --model xar-b --batch 1 16 --steps 2 10 40          # 256px, KL-16 decode
    python benchmarks/xar_speed.py --model xar-fmnist --vae kl-fmnist --batch 1 16 --steps 2 10

Each (batch, steps) runs in a fresh subprocess so the peak resident memory (ru_maxrss) belongs to it alone.
A warm-up of one image with 2 steps, then `--repeats` timed batches: CFG on (2.7: conditional + unconditional
rows for every entity), official Euler-Maruyama integration, then the VAE decode (timed separately).
Images/s counts the whole generation (flow + decode). Prints one JSON line per configuration.
On CPU xar-b is slow: a batch of 16 with 40 steps makes 160 network calls on 32 rows (hours on 2 cores).
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def run_one(model: str, vae_name: str, batch: int, steps: int, repeats: int, threads: int, method: str,
            cfg: float, device: str) -> dict:
    import torch

    torch.set_num_threads(threads)
    from vision_ar.registry import create
    from vision_ar.sampling.flow import network_calls, sample_flow

    torch.manual_seed(0)
    xar = create(model).eval().to(device)
    vae = create(vae_name).eval().to(device)
    labels = torch.tensor([i % xar.num_classes for i in range(batch)], device=device)
    g = torch.Generator(device=device).manual_seed(0)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    with torch.inference_mode():
        sample_flow(xar, labels[:1], num_steps=2, guidance_scale=cfg, method="euler_maruyama", generator=g)  # warm-up
        flow_s = decode_s = 0.0
        for _ in range(repeats):
            sync()
            t0 = time.perf_counter()
            latents = sample_flow(xar, labels, num_steps=steps, guidance_scale=cfg, method=method, generator=g)
            sync()
            t1 = time.perf_counter()
            vae.decode(latents)
            sync()
            flow_s += t1 - t0
            decode_s += time.perf_counter() - t1
    flow_s, decode_s = flow_s / repeats, decode_s / repeats
    peak_gpu = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None
    return {"model": model, "vae": vae_name, "device": device, "batch": batch, "flow_steps": steps, "method": method,
            "network_calls": network_calls(xar, steps), "threads": threads,
            "seconds_flow": round(flow_s, 3), "seconds_decode": round(decode_s, 3),
            "images_per_s": round(batch / (flow_s + decode_s), 4),
            "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
            "peak_gpu_gb": None if peak_gpu is None else round(peak_gpu, 3), "torch": torch.__version__}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="xar-b")
    ap.add_argument("--vae", default="kl-16", help="tokenizer preset that decodes the latents")
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--steps", type=int, nargs="+", default=[2, 10, 40], help="flow steps per entity")
    ap.add_argument("--method", default="euler_maruyama", choices=("euler_maruyama", "euler"))
    ap.add_argument("--cfg", type=float, default=2.7)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--_child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._child:
        print(json.dumps(run_one(args.model, args.vae, args.batch[0], args.steps[0], args.repeats, args.threads,
                                 args.method, args.cfg, args.device)))
        return
    for b in args.batch:
        for s in args.steps:
            out = subprocess.run([sys.executable, __file__, "--_child", "--model", args.model, "--vae", args.vae,
                                  "--batch", str(b), "--steps", str(s), "--repeats", str(args.repeats),
                                  "--threads", str(args.threads), "--method", args.method, "--cfg", str(args.cfg),
                                  "--device", args.device], capture_output=True, text=True)
            print(out.stdout.strip() or out.stderr.strip()[-2000:], flush=True)


if __name__ == "__main__":
    main()
