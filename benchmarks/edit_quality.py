"""Editing quality on Fashion-MNIST, judged by the shipped classifier: one JSON row per model and task.

    python benchmarks/edit_quality.py                                 # both shipped models, N = 1000
    python benchmarks/edit_quality.py --models fmnist-var --n 100 --centre 0.5 --out results.jsonl
    python benchmarks/edit_quality.py --models fmnist-gpt --set edit_candidates=24

Tasks, on the first N test images (the same images for every model):
  edit     the centre square (side `--centre` x the image side, default 0.75: rows and columns 4..28 of 32) is
           regenerated as a new class, drawn per image uniformly among the 9 other classes (seeded); score =
           share of outputs the classifier assigns to the NEW class (target >= 70%). `oracle_accuracy` is the
           same score for a perfect edit: the centre replaced by the centre of a REAL test image of the new class
           (images N.. of the test split). Fashion-MNIST garments fill the frame, so the kept ring carries the
           old silhouette: with the 16x16 centre (--centre 0.5) even the oracle reaches only ~19%;
  inpaint  a random half (top, bottom, left or right, drawn per image, seeded) is regenerated unconditionally
           (no class label: the model's null class; --inpaint-class infer: the class the model infers from the
           known half, `pipe.inpaint(..., "infer")`); score = share of outputs assigned to the image's ORIGINAL
           class (target >= 85%). The hidden half is blacked out (the background value) BEFORE the call, so
           nothing of it reaches the model (the encoder would otherwise see it, and VAR's coarse scales, which
           the official rule keeps, summarise the whole input); --keep-hidden passes the full image instead.
Beside each score: `input_accuracy` (the classifier on the untouched inputs: the ceiling for in-painting) and, for
in-painting, `masked_accuracy` (the inputs with the half blacked out: what the known half alone says) and
`retrieval_accuracy` (the hidden half taken from the training image whose known half is nearest in pixels: how
often a real completion of the known half keeps the class; a reference for the 85% target). The masks
and new classes come from a torch.Generator seeded with --seed; sampling uses another one, seeded with --seed
too. `settings` are the pipeline's defaults unless --cfg is given.
"""
from __future__ import annotations

import argparse
import json
import time

import torch

HALVES = ("top", "bottom", "left", "right")


def half_masks(sides: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """(N,) indices into HALVES -> (N, H, W) bool, True = generate."""
    m = torch.zeros(len(sides), H, W, dtype=torch.bool)
    for i, s in enumerate(sides.tolist()):
        {"top": lambda: m[i, : H // 2].fill_(True), "bottom": lambda: m[i, H // 2:].fill_(True),
         "left": lambda: m[i, :, : W // 2].fill_(True), "right": lambda: m[i, :, W // 2:].fill_(True)}[HALVES[s]]()
    return m


def centre_mask(n: int, H: int, W: int, side: float) -> torch.Tensor:
    m = torch.zeros(n, H, W, dtype=torch.bool)
    h, w = round(H * side), round(W * side)
    m[:, (H - h) // 2: (H - h) // 2 + h, (W - w) // 2: (W - w) // 2 + w] = True
    return m


def oracle_edits(images, masks, new_labels, pool_images, pool_labels, generator) -> torch.Tensor:
    """The centre of a random real image of each new class pasted into the input: a perfect edit."""
    donors = []
    for c in new_labels.tolist():
        idx = (pool_labels == c).nonzero()[:, 0]
        donors.append(pool_images[idx[torch.randint(len(idx), (1,), generator=generator)]][0])
    return torch.where(masks[:, None], torch.stack(donors), images)


def retrieval_inpaints(images, masks, pool_images, chunk: int = 100) -> torch.Tensor:
    """A non-parametric in-painter for scale: the hidden part of each input taken from the TRAINING image whose
    known part is nearest in pixels (L2). A model that completes the known half as well as 60,000 real garments
    do scores about this (`retrieval_accuracy`)."""
    pool = pool_images.mean(1).flatten(1)  # (P, H*W): the images are grey, one channel says it all
    out = []
    for i in range(0, len(images), chunk):
        x, m = images[i: i + chunk].mean(1).flatten(1), masks[i: i + chunk].flatten(1)
        keep = (~m).float()  # (b, H*W): 1 on known pixels
        # |keep * (x - p)|^2 = sum keep x^2 - 2 (keep x) . p + keep . p^2
        d = (keep * x * x).sum(1, keepdim=True) - 2 * (keep * x) @ pool.T + keep @ (pool * pool).T
        donors = pool_images[d.argmin(dim=1)]
        out.append(torch.where(masks[i: i + chunk, None], donors, images[i: i + chunk]))
    return torch.cat(out)


def parse_settings(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--set {pair!r}: expected key=value, e.g. --set edit_candidates=16")
        out[key] = json.loads(value) if value[:1].isdigit() or value in ("true", "false") else value
    return out


def run_task(pipe, task: str, images, masks, labels, batch_size: int, seed: int, settings: dict,
             inpaint_class=None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Outputs (N, 3, H, W) in [-1, 1] of one task, in batches with one seeded generator, and the classes the
    in-painting conditioned on (inpaint_class="infer": the ones the model inferred; else None)."""
    gen = torch.Generator().manual_seed(seed)
    outs, used = [], []
    for i in range(0, len(images), batch_size):
        x, m = images[i: i + batch_size], masks[i: i + batch_size]
        if task == "edit":
            out = pipe.edit(x, m, labels[i: i + batch_size].tolist(), generator=gen, output_type="pt", **settings)
        else:
            out = pipe.inpaint(x, m, inpaint_class, generator=gen, output_type="pt", **settings)
            used += list(out.labels)
        outs.append(out.images.float() * 2 - 1)
    inferred = torch.tensor(used) if task == "inpaint" and inpaint_class == "infer" else None
    return torch.cat(outs), inferred


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["fmnist-var", "fmnist-gpt"])
    ap.add_argument("--tasks", nargs="+", default=["edit", "inpaint"], choices=["edit", "inpaint"])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=50)
    ap.add_argument("--cfg", type=float, default=None, help="guidance scale (default: each pipeline's own)")
    ap.add_argument("--inpaint-class", choices=["none", "infer"], default="none",
                    help="inpaint: none = unconditional (the null class); infer = the class the known half makes most "
                         "likely under the model (pipe.inpaint(..., 'infer')), then a conditional fill")
    ap.add_argument("--keep-hidden", action="store_true", help="inpaint: give the model the full image (see above)")
    ap.add_argument("--centre", type=float, default=0.75, help="side of the edited centre square, fraction of the image")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="pipeline settings for every call (e.g. edit_candidates=16, scale_rule=official)")
    ap.add_argument("--out", default=None, help="append the rows to this .jsonl file")
    args = ap.parse_args(argv)

    from vision_ar.eval.fmnist_metrics import FashionMNISTEvaluator, load_split_images
    from vision_ar.io import atomic_write_text
    from vision_ar.pipelines import load_pipeline

    all_images, all_labels = load_split_images("test")
    images, labels = all_images[: args.n].contiguous(), all_labels[: args.n]
    N, _, H, W = images.shape
    draw = torch.Generator().manual_seed(args.seed)
    new_labels = (labels + torch.randint(1, 10, (N,), generator=draw)) % 10
    sides = torch.randint(0, len(HALVES), (N,), generator=draw)
    masks = {"edit": centre_mask(N, H, W, args.centre), "inpaint": half_masks(sides, H, W)}
    targets = {"edit": new_labels, "inpaint": labels}
    masked = torch.where(masks["inpaint"][:, None], torch.full_like(images, -1.0), images)
    inputs = {"edit": images, "inpaint": images if args.keep_hidden else masked}

    ev = FashionMNISTEvaluator()
    input_acc = ev.accuracy(images, labels)
    masked_acc = ev.accuracy(masked, labels)
    oracle = oracle_edits(images, masks["edit"], new_labels, all_images[args.n:], all_labels[args.n:], draw)
    oracle_acc = ev.accuracy(oracle, new_labels)
    retrieval_acc = None
    if "inpaint" in args.tasks:
        train_images, _ = load_split_images("train")
        retrieval_acc = ev.accuracy(retrieval_inpaints(images, masks["inpaint"], train_images), labels)
    rows = []
    for model in args.models:
        pipe = load_pipeline(model)
        settings = parse_settings(args.set)
        if args.cfg is not None:
            settings["guidance_scale"] = args.cfg
        for task in args.tasks:
            t0 = time.perf_counter()
            inpaint_class = None if args.inpaint_class == "none" else args.inpaint_class
            out, inferred = run_task(pipe, task, inputs[task], masks[task], targets[task], args.batch_size, args.seed,
                                     settings, inpaint_class)
            seconds = time.perf_counter() - t0
            row = {"model": model, "task": task, "n": N, "accuracy": round(ev.accuracy(out, targets[task]), 4),
                   "target": 0.70 if task == "edit" else 0.85, "input_accuracy": round(input_acc, 4),
                   "guidance_scale": settings.get("guidance_scale", pipe.defaults.get("guidance_scale")),
                   "seed": args.seed, "settings": settings, "seconds": round(seconds, 1)}
            if task == "edit":  # how often the edited image still reads as the ORIGINAL class
                row.update(centre=args.centre, oracle_accuracy=round(oracle_acc, 4),
                           still_original_class=round(ev.accuracy(out, labels), 4))
            else:
                row.update(masked_accuracy=round(masked_acc, 4), retrieval_accuracy=round(retrieval_acc, 4),
                           hidden_half_given=args.keep_hidden,
                           inpaint_class=args.inpaint_class,
                           # per hidden half: raster-order models see the known half first (top hidden) or last
                           accuracy_by_hidden_half={h: round(ev.accuracy(out[sides == i], targets[task][sides == i]), 4)
                                                    for i, h in enumerate(HALVES) if bool((sides == i).any())})
                if inferred is not None:  # the generator's own guess of the class from the known half
                    row["inferred_class_accuracy"] = round(float((inferred == targets[task]).float().mean()), 4)
            print(json.dumps(row), flush=True)
            rows.append(row)
    if args.out:
        from pathlib import Path

        path = Path(args.out)
        old = path.read_text() if path.is_file() else ""
        atomic_write_text(old + "".join(json.dumps(r) + "\n" for r in rows), path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
