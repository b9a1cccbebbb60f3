"""What a reduced precision changes: the share of tokens equal to the fp32 run (same seed, same labels) and the
sampling time, for one pipeline, every mode side by side in one process.

    python benchmarks/precision_effect.py --model fmnist-gpt --n 100                  # shipped models
    python benchmarks/precision_effect.py --model fmnist-var --n 100 --precision fp16 bf16 int8
    python benchmarks/precision_effect.py --model gpt-b --n 2 --batch-size 1          # a preset, random weights

--model: a shipped model, a pipeline folder, or a gpt-*/var-d* preset (random weights; the GPT's zero
output head gets N(0, 0.02)). Images are drawn in batches of --batch-size with labels i mod classes and one
seeded generator per mode. `tokens_agree` compares token by token (for a GPT, a token that differs early
changes the context of every later one, so the share is also "how long the runs stay together");
`first_scale_or_token_agree` the first token (GPT) or first scale (VAR) alone. The rounds alternate the
modes; `fp32_over_mode` is the median of the per-round time ratios. Quality (class accuracy, FID) of the same
modes: benchmarks/fmnist_quality.py --precision.
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vision_ar.precision import apply_precision  # noqa: E402


def load(name: str):
    from vision_ar.pipelines import SHIPPED, load_pipeline

    if name in SHIPPED or Path(name).is_dir():
        return load_pipeline(name)
    from vision_ar.registry import create, get_preset

    torch.manual_seed(0)
    if get_preset(name).family == "var":
        from vision_ar.pipelines.var import VARPipeline

        var = create(name).eval()
        return VARPipeline(create("var-vqvae-f16", patch_nums=var.config.patch_nums).eval(), var)
    from vision_ar.pipelines.gpt import GPTPipeline

    gpt = create(name).eval()
    torch.nn.init.normal_(gpt.output.weight, std=0.02)
    return GPTPipeline(create("vq-16").eval(), gpt)


def flat_tokens(tokens) -> tuple[torch.Tensor, torch.Tensor]:
    """(all tokens (N, T), the first scale / token (N, t))."""
    if isinstance(tokens, (list, tuple)):
        return torch.cat([t.flatten(1) for t in tokens], 1), tokens[0].flatten(1)
    return tokens, tokens[:, :1]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="fmnist-gpt")
    ap.add_argument("--precision", nargs="+", default=["fp16", "bf16", "int8"])
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=1, help="timed rounds (the first run of each mode is one)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    base = load(args.model)
    pipes = {"fp32": base}
    for p in args.precision:
        pipe = copy.deepcopy(base)
        try:
            apply_precision(pipe, p, batch_size=min(args.batch_size, args.n))
        except Exception as e:  # a mode this machine cannot run: say so, measure the others
            print(json.dumps({"model": args.model, "precision": p, "error": str(e)}), flush=True)
            continue
        pipes[p] = pipe
    apply_precision(base, "fp32")
    classes = base.generator.config.num_classes
    labels = [i % classes for i in range(args.n)]

    def run(pipe):
        g = torch.Generator().manual_seed(args.seed)
        toks = [pipe(labels[i:i + args.batch_size], generator=g, output_type="pt").tokens
                for i in range(0, args.n, args.batch_size)]
        if isinstance(toks[0], (list, tuple)):
            return [torch.cat([t[s] for t in toks]) for s in range(len(toks[0]))]
        return torch.cat(toks)

    times = {k: [] for k in pipes}
    tokens = {}
    with torch.inference_mode():
        for r in range(args.rounds):
            for k, pipe in pipes.items():
                t0 = time.perf_counter()
                out = run(pipe)
                times[k].append(time.perf_counter() - t0)
                tokens.setdefault(k, out)
    ref_all, ref_first = flat_tokens(tokens["fp32"])
    for k in pipes:
        if k == "fp32":
            continue
        got_all, got_first = flat_tokens(tokens[k])
        ratios = [a / b for a, b in zip(times["fp32"], times[k])]
        print(json.dumps({"model": args.model, "precision": k, "ran_as": pipes[k].precision.describe(),
                          "n": args.n, "batch_size": args.batch_size, "threads": torch.get_num_threads(),
                          "tokens_agree": round((got_all == ref_all).float().mean().item(), 4),
                          "first_scale_or_token_agree": round((got_first == ref_first).float().mean().item(), 4),
                          "fp32_s": round(statistics.median(times["fp32"]), 3),
                          "mode_s": round(statistics.median(times[k]), 3),
                          "fp32_over_mode": round(statistics.median(ratios), 3)}), flush=True)


if __name__ == "__main__":
    main()
