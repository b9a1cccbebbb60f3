"""What one SJD window costs compared to one plain KV-cached step.

SJD pays off when a window of L tokens costs much less than L single-token steps (the weights are read
once for all L tokens). This times, for a LlamaGen preset with random weights (default gpt-b), one
`decode` of `--window` tokens and one `decode` of a single token, both on top of a KV cache holding
`--prefix` image tokens, rolled back after each call so every repeat sees the same cache.

    python benchmarks/sjd_window_cost.py                       # gpt-b, CPU, batch 1, window 16
    python benchmarks/sjd_window_cost.py --device cuda --batch 2 --dtype bfloat16
    python benchmarks/sjd_window_cost.py --batch 2 --precision bf16      # batch 1 with CFG, bf16 linear layers

--precision converts the linear layers as `vision-ar sample --precision` does (vision_ar/precision.py; "auto"
measures at the window's row count). The window amortises the weight reads only where a product of
window x batch rows costs about as much as one of batch rows: at the memory bound, and for kernels whose cost
does not grow with the rows (e.g. bf16 on AMX; the int8 weight-only kernel's does).

Prints one JSON line: median milliseconds of each call and their ratio. A ratio well below `window`
means a window verifying k tokens on average is ~k / ratio times faster than the plain loop per forward.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from vision_ar.registry import create


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_decode(model, tokens, start_pos, repeats, device):
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        model.decode(tokens, start_pos)
        _sync(device)
        times.append(time.perf_counter() - t0)
        model.truncate_cache(start_pos)
    return statistics.median(times) * 1e3


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="gpt-b")
    ap.add_argument("--window", type=int, default=16)
    ap.add_argument("--prefix", type=int, default=128, help="image tokens already in the KV cache")
    ap.add_argument("--batch", type=int, default=1, help="rows (2 x images with classifier-free guidance)")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--precision", default="fp32", help="fp32 | fp32-packed | fp16 | bf16 | int8 | auto (linear layers)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    model = create(args.preset).to(device=device, dtype=dtype).eval()
    if args.precision != "fp32":
        from vision_ar.precision import Workload, convert_linears, resolve_precision

        chosen = resolve_precision(args.precision, device, workload=Workload.of(model, args.batch * args.window))
        convert_linears(model, chosen)
    g = torch.Generator().manual_seed(0)
    vocab = model.vocab_size
    model.setup_cache(args.batch, model.cls_token_num + model.block_size, dtype=dtype)
    with torch.no_grad():
        model.prefill(torch.zeros(args.batch, dtype=torch.long, device=device))
        prefix = torch.randint(0, vocab, (args.batch, args.prefix), generator=g).to(device)
        model.decode(prefix, model.cls_token_num)
        start = model.cache_length
        one = torch.randint(0, vocab, (args.batch, 1), generator=g).to(device)
        window = torch.randint(0, vocab, (args.batch, args.window), generator=g).to(device)
        time_decode(model, window, start, 2, device)  # warm-up
        ms_one = time_decode(model, one, start, args.repeats, device)
        ms_window = time_decode(model, window, start, args.repeats, device)
    print(json.dumps({"preset": args.preset, "device": args.device, "dtype": args.dtype, "precision": args.precision,
                      "batch": args.batch,
                      "threads": torch.get_num_threads(), "prefix": args.prefix, "window": args.window,
                      "ms_single_token_step": round(ms_one, 2), "ms_window": round(ms_window, 2),
                      "window_over_step": round(ms_window / ms_one, 2)}))


if __name__ == "__main__":
    main()
