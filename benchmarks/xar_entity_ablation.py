"""The paper's entity ablation on Fashion-MNIST: every entity type trained with the same budget, plus Noisy
Context Learning on/off for the cell entity; class accuracy and classifier-feature FID of each.

    # a trained, calibrated kl-fmnist tokenizer first (scripts/train_fmnist_xar.sh, steps 1-2), then:
    python benchmarks/xar_entity_ablation.py --tokenizer runs/fm_kl/final --out runs/xar_ablation --steps 3000
    python benchmarks/xar_entity_ablation.py ... --only cell4 cell4-tf --n 2000      # a subset, fewer samples

Each variant is `vision-ar train generator --model xar-fmnist --model-set entity=... ` with identical training
settings (steps, batch, lr, seed), i.e. the same number of optimizer steps and images; then
`benchmarks/fmnist_quality.py` scores --n samples (balanced classes, one seed) at the same guidance scale and flow
steps. Runs are resumable (re-run the same command); a finished variant's row is reused. One JSON row per
variant is appended to OUT/results.jsonl and a markdown table is printed at the end.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# variant -> xAR config overrides (on the xar-fmnist preset, an 8x8 latent grid)
VARIANTS = {
    "token": {"entity": "token"},                              # 64 entities of 1 token (next-token)
    "cell2": {"entity": "cell", "entity_size": 2},             # 16 cells of 2x2
    "cell4": {"entity": "cell", "entity_size": 4},             # 4 cells of 4x4 (the preset, as official 4 cells)
    "subsample4": {"entity": "subsample", "entity_size": 4},   # 4 stride-2 subsamples of 4x4 tokens
    "scale": {"entity": "scale"},                              # scales 1, 2, 4, 8
    "image": {"entity": "image"},                              # one entity: a single flow
    "cell4-tf": {"entity": "cell", "entity_size": 4, "noisy_context": False},  # NCL off: teacher forcing
}


def train_command(args, name: str, overrides: dict) -> list[str]:
    cmd = [sys.executable, "-m", "vision_ar.cli", "train", "generator", "--model", "xar-fmnist",
           "--tokenizer", str(args.tokenizer), "--data", "fashion-mnist", "--out", str(args.out / name),
           "--steps", str(args.steps)]
    if args.limit:
        cmd += ["--limit", str(args.limit)]
    for k, v in overrides.items():
        cmd += ["--model-set", f"{k}={json.dumps(v)}"]
    for s in ("batch_size=64", f"lr={args.lr}", "warmup_steps=200", "weight_decay=0.02", "ema_decay=0.999",
              "ema_warmup=true", f"seed={args.seed}", "progress=false", "log_every=50", "ckpt_every=200",
              "grad_clip=1.0"):  # precision: auto (bf16 only where the CPU runs it natively)
        cmd += ["--set", s]
    return cmd


def quality_command(args, name: str) -> list[str]:
    return [sys.executable, str(REPO / "benchmarks" / "fmnist_quality.py"), "--model", str(args.out / name / "pipeline"),
            "--cfg", str(args.cfg), "--n", str(args.n), "--seed", "0",
            "--pipe-arg", f"num_steps={args.flow_steps}", "--out", str(args.out / name / "quality.jsonl")]


def shared_cache(out: Path, folder: Path) -> None:
    """Every variant caches the same tokenizer outputs: hard-link a finished variant's token cache (the recipe
    reuses a cache whose content key, tokenizer weights + data, matches, and rebuilds a stale one)."""
    target = folder / "tokens.safetensors"
    done = sorted(out.glob("*/tokens.safetensors"))
    if target.exists() or not done:
        return
    folder.mkdir(parents=True, exist_ok=True)
    try:
        os.link(done[0], target)
    except OSError:
        import shutil

        shutil.copyfile(done[0], target)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokenizer", type=Path, required=True, help="trained kl-fmnist folder (OUT/final)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=3000, help="optimizer steps per variant (the shared budget)")
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cfg", type=float, default=2.0, help="guidance scale of every variant's samples")
    ap.add_argument("--flow-steps", type=int, default=20, help="flow steps per entity when sampling")
    ap.add_argument("--n", type=int, default=10000, help="samples per variant for the metrics")
    ap.add_argument("--only", nargs="+", choices=sorted(VARIANTS), default=None)
    ap.add_argument("--limit", type=int, default=None, help="train on the first N images only (quick checks)")
    args = ap.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    rows = []
    for name in args.only or list(VARIANTS):
        folder = args.out / name
        quality = folder / "quality.jsonl"
        if not quality.is_file():
            shared_cache(args.out, folder)
            subprocess.run(train_command(args, name, VARIANTS[name]), check=True, env=env, cwd=REPO)
            subprocess.run(quality_command(args, name), check=True, env=env, cwd=REPO)
        row = json.loads(quality.read_text().splitlines()[-1])
        row.update(variant=name, overrides=VARIANTS[name], steps=args.steps, flow_steps=args.flow_steps)
        rows.append(row)
        with open(args.out / "results.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
    print("| variant | entity | NCL | accuracy | FID (classifier features) | FID floor |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        o = r["overrides"]
        ent = o["entity"] + (f" {o['entity_size']}x{o['entity_size']}" if "entity_size" in o else "")
        print(f"| {r['variant']} | {ent} | {'off' if o.get('noisy_context') is False else 'on'} | "
              f"{r.get('accuracy', float('nan')):.3f} | {r.get('fid', float('nan')):.2f} | "
              f"{r.get('fid_floor_train_vs_test', float('nan')):.2f} |")


if __name__ == "__main__":
    main()
