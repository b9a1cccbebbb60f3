"""Train the small Fashion-MNIST CNN whose accuracy and penultimate features judge generated samples.

The shipped weights in vision_ar/weights/fmnist_classifier/ were made by exactly:

    python scripts/train_fmnist_classifier.py --out vision_ar/weights/fmnist_classifier --threads 1

Result: test accuracy 0.9223 (10k test images) after the default 8 epochs, seed 0, 520 KB folder. Wall time 720 s
on one thread of a 2-core machine shared with several other jobs (~60 s/epoch when the load eased; a 6-epoch run
reached 0.9183 in 361 s). Why one thread: on that shared machine 2 OpenMP threads ran ~5x slower than 1 (threads
spin-wait for each other); on an idle 2-core machine --threads 2 is ~25 s/epoch, i.e. ~3.5 minutes in all.

Recipe: AdamW + one-cycle learning rate, label smoothing 0.1, light augmentation (random shifts of up to 2 pixels,
horizontal flips), channels_last on CPU. Deterministic for a given seed and thread count. The folder is written
to a temporary sibling and renamed, so an interrupted run never leaves a half-written model behind.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from vision_ar.errors import ConfigError
from vision_ar.eval.fmnist_classifier import FashionMNISTClassifier, FashionMNISTClassifierConfig
from vision_ar.eval.fmnist_metrics import load_split_images
from vision_ar.io import check_writable


# ----------------------------------------------------------------------------------------------------
# Augmentation
# ----------------------------------------------------------------------------------------------------
def random_shift_flip(x: torch.Tensor, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    """Shift each image by up to `max_shift` pixels (filling with background -1) and flip half of them."""
    b, _, h, w = x.shape
    if max_shift > 0:
        p = max_shift
        padded = F.pad(x, (p, p, p, p), value=-1.0)
        dy = torch.randint(0, 2 * p + 1, (b,), generator=gen)
        dx = torch.randint(0, 2 * p + 1, (b,), generator=gen)
        rows = (torch.arange(h)[None, :] + dy[:, None])[:, None, :, None]  # b,1,h,1
        cols = (torch.arange(w)[None, :] + dx[:, None])[:, None, None, :]  # b,1,1,w
        x = padded[torch.arange(b)[:, None, None, None], torch.arange(x.shape[1])[None, :, None, None], rows, cols]
    flip = torch.rand(b, generator=gen) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


# ----------------------------------------------------------------------------------------------------
# Train / evaluate
# ----------------------------------------------------------------------------------------------------
@torch.no_grad()
def test_accuracy(model: FashionMNISTClassifier, images: torch.Tensor, labels: torch.Tensor, batch: int = 1000) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(images), batch):
        x = images[i:i + batch].contiguous(memory_format=torch.channels_last)
        correct += (model(x).argmax(1) == labels[i:i + batch]).sum().item()
    return correct / len(images)


def train(args) -> tuple[FashionMNISTClassifier, float]:
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    # The network reads the channel mean, so one grey channel is enough (3x less memory and data movement).
    train_x, train_y = load_split_images("train", args.data_root)
    test_x, test_y = load_split_images("test", args.data_root)
    train_x, test_x = train_x[:, :1].contiguous(), test_x[:, :1].contiguous()

    cfg = FashionMNISTClassifierConfig(widths=tuple(args.widths), convs_per_stage=args.convs_per_stage,
                                       feature_dim=args.feature_dim)
    model = FashionMNISTClassifier(cfg).to(memory_format=torch.channels_last)  # ~2x faster convs on CPU
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    steps_per_epoch = len(train_x) // args.batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.epochs * steps_per_epoch,
                                                pct_start=0.2)
    t0 = time.time()
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(train_x), generator=gen)
        total = 0.0
        for step in range(steps_per_epoch):
            idx = order[step * args.batch_size:(step + 1) * args.batch_size]
            x = random_shift_flip(train_x[idx], args.max_shift, gen).contiguous(memory_format=torch.channels_last)
            loss = F.cross_entropy(model(x), train_y[idx], label_smoothing=args.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item()
        acc = test_accuracy(model, test_x, test_y)
        print(f"epoch {epoch + 1}/{args.epochs}  loss {total / steps_per_epoch:.4f}  test acc {acc:.4f}  "
              f"{time.time() - t0:.0f}s", flush=True)
    return model.eval(), acc


def save_folder_atomically(model: FashionMNISTClassifier, out: Path, extra: dict) -> None:
    """Write a complete folder under a temporary name, then swap it in place of `out`."""
    check_writable(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    old = None
    try:
        model.save_pretrained(tmp, extra_config=extra)
        if out.exists():
            old = out.with_name(f".{out.name}.old.{os.getpid()}")
            os.replace(out, old)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("vision_ar/weights/fmnist_classifier"))
    p.add_argument("--data-root", default=None, help="folder with the *-ubyte.gz files (default: Debian's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--max-shift", type=int, default=2)
    p.add_argument("--widths", type=int, nargs="+", default=[32, 64, 128])
    p.add_argument("--convs-per-stage", type=int, default=1)
    p.add_argument("--feature-dim", type=int, default=256)
    args = p.parse_args(argv)
    if args.epochs < 1 or args.batch_size < 1:
        raise ConfigError("--epochs and --batch-size must be >= 1.")
    check_writable(args.out)  # fail now, not after minutes of training
    torch.set_num_threads(args.threads)

    t0 = time.time()
    model, acc = train(args)
    seconds = time.time() - t0
    command = "python scripts/train_fmnist_classifier.py " + " ".join(sys.argv[1:] if argv is None else argv)
    save_folder_atomically(model, args.out, {"_test_accuracy": round(acc, 4), "_train_seconds": round(seconds, 1),
                                             "_trained_by": command.strip(), "_seed": args.seed})
    print(json.dumps({"test_accuracy": acc, "seconds": round(seconds, 1), "out": str(args.out)}))


if __name__ == "__main__":
    main()
