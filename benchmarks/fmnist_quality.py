"""Quality benchmark of a Fashion-MNIST generator: class accuracy and classifier-feature FID, one JSON row.

    python benchmarks/fmnist_quality.py --model fmnist-var --cfg 2.0                  # shipped model, 10k samples
    python benchmarks/fmnist_quality.py --model runs/my_gpt --cfg 3.0 --sampler sjd  # a pipeline folder
    python benchmarks/fmnist_quality.py --npz samples.npz                           # samples made elsewhere

Samples are balanced over the 10 classes (labels = i mod 10) and drawn with one seeded torch.Generator, in
batches, through `vision_ar.pipelines.load_pipeline(model)(class_labels, guidance_scale=cfg, generator=...)`.
An `.npz` in the ADM layout (uint8 `arr_0` N,H,W,3) with its class labels (`labels`, else `arr_1`) is scored as is.

The row (printed, and appended to --out as one JSON line) holds: model, cfg, sampler, accuracy, fid,
fid_floor_train_vs_test (real train images vs test at the same N: the best reachable), n, seconds (generation
only), eval_seconds. Read every FID against its floor; FIDs at different N are not comparable.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from vision_ar.errors import ConfigError, MissingFileError, VisionARError
from vision_ar.eval.fmnist_metrics import NUM_CLASSES, FashionMNISTEvaluator
from vision_ar.io import atomic_path, check_writable


# ----------------------------------------------------------------------------------------------------
# Samples
# ----------------------------------------------------------------------------------------------------
def balanced_labels(n: int) -> torch.Tensor:
    return torch.arange(n) % NUM_CLASSES


def parse_pipe_args(pairs: list[str]) -> dict:
    """`key=value` strings -> kwargs; values parsed as JSON when they can be (numbers, true/false, null)."""
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"--pipe-arg {pair!r}: expected key=value, e.g. --pipe-arg top_k=50")
        key, value = pair.split("=", 1)
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def generate(model: str, n: int, cfg: float | None, sampler: str | None, seed: int, batch_size: int,
             device: str, pipe_args: dict, precision: str = "fp32"
             ) -> tuple[torch.Tensor, torch.Tensor, float, float | None]:
    """(`N,3,H,W` float in [-1, 1] on CPU, labels, seconds, the guidance scale used) from a pipeline."""
    from vision_ar.pipelines import load_pipeline  # lazy: written by the pipelines helper, heavy to import
    from vision_ar.precision import apply_precision

    pipe = load_pipeline(model, device=device)
    if precision != "fp32" or hasattr(pipe, "generator"):  # a stand-in callable has no components to convert
        apply_precision(pipe, precision, batch_size=min(batch_size, n))
    labels = balanced_labels(n)
    gen = torch.Generator(device=device).manual_seed(seed)
    kwargs = dict(pipe_args)
    if cfg is not None:
        kwargs["guidance_scale"] = cfg
    if sampler is not None:
        kwargs["sampler"] = sampler
    chunks = []
    t0 = time.perf_counter()
    for i in range(0, n, batch_size):
        out = pipe(class_labels=labels[i:i + batch_size].tolist(), generator=gen, output_type="pt", **kwargs)
        chunks.append(out.images.float().cpu().mul(2).sub(1))  # [0, 1] -> the [-1, 1] layout
        print(f"\rgenerated {min(i + batch_size, n)}/{n}", end="", file=sys.stderr, flush=True)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    print(file=sys.stderr)
    if cfg is None:  # record the pipeline's own default, so the row says what was actually run
        cfg = (getattr(pipe, "defaults", None) or {}).get("guidance_scale")
    return torch.cat(chunks), labels, seconds, cfg


def load_npz(path: Path) -> tuple[np.ndarray, torch.Tensor]:
    if not path.is_file():
        raise MissingFileError(f"samples file {path} not found")
    with np.load(path, allow_pickle=False) as z:
        keys = list(z.keys())
        if "arr_0" not in keys:
            raise ConfigError(f"{path} holds {keys}: expected uint8 'arr_0' N,H,W,3 (ADM layout) and 'labels'")
        label_key = "labels" if "labels" in keys else "arr_1" if "arr_1" in keys else None
        if label_key is None:
            raise ConfigError(f"{path} has no class labels: store them as 'labels' (or 'arr_1'), one per image")
        images, labels = z["arr_0"], z[label_key]
    if images.dtype != np.uint8:
        raise ConfigError(f"{path}: 'arr_0' must be uint8 (ADM layout), got {images.dtype}")
    return images, torch.from_numpy(np.asarray(labels).astype(np.int64))


def save_npz(path: Path, images: torch.Tensor, labels: torch.Tensor) -> None:
    arr = ((images + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, arr_0=arr, labels=labels.numpy())


# ----------------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------------
def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    from vision_ar.family import shipped_folders  # the families' own list, so the help cannot drift from it
    src.add_argument("--model", help=f"shipped model name ({', '.join(sorted(shipped_folders()))}) or a pipeline folder")
    src.add_argument("--npz", type=Path, help="samples .npz: uint8 arr_0 N,H,W,3 + labels")
    p.add_argument("--cfg", type=float, default=None, help="guidance scale (default: the pipeline's own)")
    p.add_argument("--sampler", default=None, help="sampler name passed to the pipeline (default: its own)")
    p.add_argument("--pipe-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="extra pipeline argument, e.g. top_k=50 (repeatable)")
    p.add_argument("--n", type=int, default=10000, help="number of samples (balanced over the 10 classes)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precision", default="fp32", help="fp32 | fp32-packed | fp16 | bf16 | int8 | auto (vision_ar/precision.py)")
    p.add_argument("--classifier", default=None, help="classifier folder (default: the shipped one)")
    p.add_argument("--save-samples", type=Path, default=None, help="also write the samples as an ADM .npz")
    p.add_argument("--out", type=Path, default=None, help="append the JSON row to this .jsonl file")
    args = p.parse_args(argv)

    # Everything that can be checked is checked before minutes of sampling.
    if args.n < 2 or args.batch_size < 1:
        raise ConfigError("--n must be >= 2 and --batch-size >= 1")
    for path in (args.out, args.save_samples):
        if path is not None:
            check_writable(path)
    evaluator = FashionMNISTEvaluator(args.classifier, device=args.device)

    if args.npz is not None:
        images, labels = load_npz(args.npz)
        model, seconds, cfg = str(args.npz), None, args.cfg
    else:
        images, labels, seconds, cfg = generate(args.model, args.n, args.cfg, args.sampler, args.seed, args.batch_size,
                                           args.device, parse_pipe_args(args.pipe_arg), args.precision)
        model = args.model
        if args.save_samples is not None:
            save_npz(args.save_samples, images, labels)

    t0 = time.perf_counter()
    metrics = evaluator.evaluate(images, labels)
    row = {"model": model, "cfg": cfg, "sampler": args.sampler or "default",
           **({"precision": args.precision} if args.npz is None else {}),
           **({"pipe_args": parse_pipe_args(args.pipe_arg)} if args.pipe_arg else {}),
           "accuracy": round(metrics["accuracy"], 4), "fid": round(metrics["fid"], 4),
           "fid_floor_train_vs_test": round(metrics["fid_floor_train_vs_test"], 4), "n": metrics["n"],
           "seed": args.seed if args.npz is None else None,
           "seconds": None if seconds is None else round(seconds, 2),
           "eval_seconds": round(time.perf_counter() - t0, 2)}
    line = json.dumps(row)
    print(line)
    if args.out is not None:
        with open(args.out, "a") as f:
            f.write(line + "\n")
    return row


if __name__ == "__main__":
    try:
        main()
    except VisionARError as e:
        sys.exit(f"error: {e}")
