"""Sampling speed against the official code, side by side, same weights, same settings, one run.

    python benchmarks/vs_official.py --var-src ~/src/VAR --llamagen-src ~/src/LlamaGen      # both jobs, batch 1 and 16
    python benchmarks/vs_official.py --llamagen-src ~/src/LlamaGen --jobs gpt --batch 1 --precision fp32 auto

--var-src / --llamagen-src: checkouts of github.com/FoundationVision/VAR and github.com/FoundationVision/LlamaGen
(unmodified; imported from there, nothing of them is copied into this project). The jobs:

    var  VAR-d16 + its VQ-VAE (ch 160, V 4096), 256 px, CFG 1.5, top-k 900, top-p 0.96:
         official `VAR.autoregressive_infer_cfg` (tokens -> image)  vs  `sampling.next_scale.sample_next_scale`
    gpt  GPT-B + VQ-16, 256 tokens (16 x 16), CFG 2.0, top-k 2000, top-p 1.0 (the official sample script's
         filters), image decode included: official `generate()` + `VQModel.decode_code`  vs  our `GPTPipeline`

Weights: random, built by our presets from --seed (the GPT's zero-initialised output head gets N(0, 0.02) so
that the logits are not uniform) and loaded into the official modules with strict=True, so both sides hold
the same numbers. Each (job, batch) runs in a fresh process; inside it, after one warm-up each, the runs
alternate official, ours at each --precision, ... for --repeats rounds. Reported: the median seconds of each,
and official/ours as the median of the per-round ratios (pairing keeps the ratio honest on a drifting machine).
Tokens: in fp32 (the exact mode) ours must equal the official tokens for the same seed (`tokens_equal`); in a
reduced mode `tokens_agree` is the share of tokens equal to the official fp32 ones (same seed).
One JSON line per (job, batch, precision), then a Markdown table.
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's vision_ar, also in the child processes


# ----------------------------------------------------------------------------------------------------
# Importing the official code from a checkout
# ----------------------------------------------------------------------------------------------------
def _import_from(src: str, names: list[str], what: str):
    """Import modules `names` from the checkout `src` (both official repos use top-level `models`/`utils`,
    so each job runs in its own process and only one checkout is ever on sys.path)."""
    import importlib

    root = Path(src).expanduser().resolve()
    if not root.is_dir():
        sys.exit(f"--{what}-src {root}: not a directory; clone github.com/FoundationVision/{what_repo(what)} there")
    sys.path.insert(0, str(root))
    try:
        return [importlib.import_module(n) for n in names]
    except ImportError as e:
        sys.exit(f"cannot import the official {what_repo(what)} code from {root}: {e}. Pass the root of an "
                 f"unmodified checkout (and install its requirements that are imported, e.g. huggingface_hub).")


def what_repo(what: str) -> str:
    return {"var": "VAR", "llamagen": "LlamaGen"}[what]


# ----------------------------------------------------------------------------------------------------
# The jobs: build both sides, return callables (official, ours by precision) producing (tokens, images)
# ----------------------------------------------------------------------------------------------------
def build_var(args, batch: int):
    import torch

    from vision_ar.pipelines.var import VARPipeline
    from vision_ar.registry import create
    from vision_ar.sampling.next_scale import sample_next_scale

    patch_nums = tuple(args.var_patch_nums)
    torch.manual_seed(args.seed)
    # Ours first: the official builder switches off nn.Linear/Conv2d initialisation process-wide.
    var = create("var-d16", patch_nums=patch_nums).eval()
    vae = create("var-vqvae-f16", patch_nums=patch_nums).eval()

    (official_models, official_var_mod) = _import_from(args.var_src, ["models", "models.var"], "var")
    o_vae, o_var = official_models.build_vae_var(device="cpu", patch_nums=patch_nums, V=4096, Cvae=32, ch=160,
                                                 share_quant_resi=4, num_classes=1000, depth=16,
                                                 shared_aln=False, attn_l2_norm=True)
    o_vae.load_state_dict(vae.state_dict(), strict=True)
    o_var.load_state_dict(var.state_dict(), strict=True)
    o_vae.eval(), o_var.eval()

    # Record the official tokens by wrapping (not changing) its sampling helper.
    drawn: list = []
    original = official_var_mod.sample_with_top_k_top_p_

    def recording(*a, **k):
        out = original(*a, **k)
        drawn.append(out[:, :, 0].clone())
        return out

    official_var_mod.sample_with_top_k_top_p_ = recording
    labels = [(7 * i + 1) % 1000 for i in range(batch)]
    settings = dict(cfg=1.5, top_k=900, top_p=0.96)

    def official():
        drawn.clear()
        img = o_var.autoregressive_infer_cfg(B=batch, label_B=torch.tensor(labels), g_seed=args.seed,
                                             more_smooth=False, **settings)
        return torch.cat([t.flatten(1) for t in drawn], 1), img

    def ours_for(pipe):
        def run():
            g = torch.Generator().manual_seed(args.seed)
            idx, img = sample_next_scale(pipe.var, pipe.vae, labels, g, **settings)
            return torch.cat([t.flatten(1) for t in idx], 1), img
        return run

    return official, lambda: VARPipeline(copy.deepcopy(vae), copy.deepcopy(var)), ours_for


def build_gpt(args, batch: int):
    import torch

    from vision_ar.pipelines.gpt import GPTPipeline
    from vision_ar.registry import create

    side = args.gpt_grid
    torch.manual_seed(args.seed)
    gpt = create("gpt-b", block_size=side * side).eval()
    torch.nn.init.normal_(gpt.output.weight, std=0.02)  # official init zeroes the head: uniform logits
    vq = create("vq-16").eval()

    gpt_mod, gen_mod, vq_mod = _import_from(args.llamagen_src, ["autoregressive.models.gpt",
                                                                "autoregressive.models.generate",
                                                                "tokenizer.tokenizer_image.vq_model"], "llamagen")
    o_gpt = gpt_mod.GPT_models["GPT-B"](vocab_size=16384, block_size=side * side, num_classes=1000,
                                        cls_token_num=1, model_type="c2i").eval()
    o_gpt.load_state_dict(gpt.state_dict(), strict=True)
    o_vq = vq_mod.VQ_models["VQ-16"](codebook_size=16384, codebook_embed_dim=8).eval()
    o_vq.load_state_dict(vq.state_dict(), strict=True)

    labels = [(7 * i + 1) % 1000 for i in range(batch)]
    settings = dict(cfg_scale=2.0, temperature=1.0, top_k=args.gpt_top_k, top_p=1.0)

    def official():
        torch.manual_seed(args.seed)  # the official sampler draws from the global RNG
        c = torch.tensor(labels)
        idx = gen_mod.generate(o_gpt, c, side * side, cfg_interval=-1, **settings)
        img = o_vq.decode_code(idx, [batch, 8, side, side])
        return idx.long(), img

    def ours_for(pipe):
        def run():
            out = pipe(labels, guidance_scale=settings["cfg_scale"], top_k=settings["top_k"],
                       top_p=settings["top_p"], temperature=1.0,
                       generator=torch.Generator().manual_seed(args.seed), output_type="pt")
            return out.tokens, out.images
        return run

    return official, lambda: GPTPipeline(copy.deepcopy(vq), copy.deepcopy(gpt)), ours_for


JOBS = {"var": ("VAR-d16 + VQ-VAE, 256 px, CFG 1.5, top-k 900, top-p 0.96", build_var),
        "gpt": ("GPT-B + VQ-16, 256 tokens, CFG 2.0, top-k 2000 (incl. decode)", build_gpt)}


# ----------------------------------------------------------------------------------------------------
# One (job, batch) in this process
# ----------------------------------------------------------------------------------------------------
def run_child(args) -> None:
    import torch

    from vision_ar.precision import apply_precision

    if args.threads:
        torch.set_num_threads(args.threads)
    job, batch = args.jobs[0], args.batch[0]
    official, new_pipe, ours_for = JOBS[job][1](args, batch)
    runners = {"official": official}
    chosen = {}
    variants = [(p, False) for p in args.precision]
    if job in args.compile_jobs:
        variants += [(p, True) for p in args.precision]
    for p, comp in variants:
        pipe = new_pipe()
        key = f"{p}+compile" if comp else p
        chosen[key] = apply_precision(pipe, p, batch_size=batch, verbose=True).describe() + (
            " + compile" if comp else "")
        if comp:  # the generator's own compiled step (GPT: single-token decode; VAR: each scale)
            gen = pipe.generator
            (gen.compile_decode if hasattr(gen, "compile_decode") else gen.compile_scales)()
        runners[key] = ours_for(pipe)

    times = {k: [] for k in runners}
    tokens, first_run = {}, {}
    with torch.inference_mode():
        for k, f in runners.items():  # warm-up (compiles, if asked), and the tokens (the same every round)
            t0 = time.perf_counter()
            tokens[k], _ = f()
            first_run[k] = time.perf_counter() - t0
        for _ in range(args.repeats):
            for k, f in runners.items():
                t0 = time.perf_counter()
                f()
                times[k].append(time.perf_counter() - t0)
    ref = tokens["official"]
    t_off = statistics.median(times["official"])
    for p in [k for k in runners if k != "official"]:
        ratios = [a / b for a, b in zip(times["official"], times[p])]
        same = (tokens[p].long() == ref.long()).float().mean().item()
        row = {"job": job, "batch": batch, "precision": p, "ours_precision": chosen[p],
               "threads": torch.get_num_threads(), "official_s": round(t_off, 3),
               "ours_s": round(statistics.median(times[p]), 3),
               "official_over_ours": round(statistics.median(ratios), 3),
               "rounds": args.repeats}
        if p.endswith("+compile"):
            row["first_run_s_incl_compile"] = round(first_run[p], 1)
        if chosen[p] == "fp32":
            row["tokens_equal"] = bool(same == 1.0)
        else:
            row["tokens_agree"] = round(same, 4)
        print(json.dumps(row), flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--var-src", help="checkout of FoundationVision/VAR")
    ap.add_argument("--llamagen-src", help="checkout of FoundationVision/LlamaGen")
    ap.add_argument("--jobs", nargs="+", choices=list(JOBS), default=None,
                    help="default: every job whose checkout is given")
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--precision", nargs="+", default=["fp32", "auto"],
                    help="our precisions to time (fp32 | fp32-packed | fp16 | bf16 | int8 | auto)")
    ap.add_argument("--repeats", type=int, default=3, help="timed rounds after the warm-up")
    ap.add_argument("--compile-jobs", nargs="*", choices=list(JOBS), default=[],
                    help="also time these jobs with our compiled steps (torch.compile; the one-time compilation "
                         "is in the warm-up, reported as first_run_s_incl_compile; on a CPU VAR's ten scale "
                         "graphs take minutes to compile)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--gpt-grid", type=int, default=16, help="token grid side (16: 256 tokens, 256 px)")
    ap.add_argument("--gpt-top-k", type=int, default=2000)
    ap.add_argument("--var-patch-nums", type=int, nargs="+", default=[1, 2, 3, 4, 5, 6, 8, 10, 13, 16])
    ap.add_argument("--_child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._child:
        run_child(args)
        return
    jobs = args.jobs or [j for j, src in (("var", args.var_src), ("gpt", args.llamagen_src)) if src]
    if not jobs:
        ap.error("give --var-src and/or --llamagen-src (checkouts of the official repositories)")
    for j in jobs:
        if not getattr(args, f"{'var' if j == 'var' else 'llamagen'}_src"):
            ap.error(f"job {j} needs --{'var' if j == 'var' else 'llamagen'}-src")
    rows = []
    passthrough = [a for a in (argv if argv is not None else sys.argv[1:])]
    for job in jobs:
        for b in args.batch:
            cmd = [sys.executable, __file__, *_strip(passthrough, ("--jobs", "--batch")), "--_child",
                   "--jobs", job, "--batch", str(b)]
            out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
            sys.stderr.write(out.stderr[-3000:] if out.returncode else "".join(
                line + "\n" for line in out.stderr.splitlines() if line.startswith("vision-ar:")))
            for line in out.stdout.splitlines():
                if line.startswith("{"):
                    print(line, flush=True)
                    rows.append(json.loads(line))
    if rows:
        print("\n| job | batch | ours | official s | ours s | official / ours | tokens |")
        print("|---|---|---|---|---|---|---|")
        for r in rows:
            tok = (("equal" if r["tokens_equal"] else "DIFFER") if "tokens_equal" in r
                   else f"{100 * r['tokens_agree']:.1f}% agree")
            print(f"| {JOBS[r['job']][0]} | {r['batch']} | {r['ours_precision']} | {r['official_s']} | "
                  f"{r['ours_s']} | {r['official_over_ours']} | {tok} |")


def _strip(argv: list[str], options: tuple[str, ...]) -> list[str]:
    """argv without the given options and their values (the parent re-adds one job / one batch per child)."""
    out, skip = [], False
    for a in argv:
        if a in options:
            skip = True
            continue
        if skip and not a.startswith("--"):
            continue
        skip = False
        out.append(a)
    return out


if __name__ == "__main__":
    main()
