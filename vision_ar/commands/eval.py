"""`vision-ar eval`: generate N samples with a pipeline, then FID / sFID / IS / precision / recall against a reference.

    # one process (CPU or one GPU)
    vision-ar eval --pipeline fmnist-var --ref ref_stats.npz --num 1000 --cfg 2.0 --out-dir runs/eval/fmnist
    # Fashion-MNIST domain metrics (shipped classifier: accuracy + classifier-feature FID vs the test split)
    vision-ar eval --pipeline fmnist-var --ref fashion-mnist --num 10000 --out-dir runs/eval/fmnist_var
    # all GPUs of a machine; a killed run is resumed by running the same command again
    torchrun --nproc_per_node 8 -m vision_ar.cli eval --pipeline var-d16 --vae vae_ch160v4096z32.pth \
        --checkpoint var_d16.pth --ref VIRTUAL_imagenet256_labeled.npz --num 50000 --cfg 1.5 --out-dir runs/eval/d16

Writes OUT_DIR/shard_*.npz while sampling (see vision_ar/eval/sample_writer.py for how per-image seeds are fixed
by (global index, seed) independently of the number of workers), OUT_DIR/samples.npz (ADM layout, usable by ADM's
evaluator), OUT_DIR/report.json (metrics, settings, versions, checkpoint hash) and prints a table.
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import json
from pathlib import Path

from .family_flags import add_cli_flags, call_kwargs, load_kwargs
from .fid import add_common_eval_args, cache_dir_from_args


def add_parser(sub):
    p = sub.add_parser("eval", help="sample N images with a pipeline and measure FID / IS / precision-recall",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pipeline", required=True, help="shipped model name, pipeline folder, or preset (with paths)")
    p.add_argument("--ref", required=True, help="reference: statistics .npz, ADM reference batch, samples .npz, folder, or 'fashion-mnist' (classifier metrics)")
    p.add_argument("--num", type=int, default=50_000, help="number of samples (default 50000 = 50 per class)")
    p.add_argument("--cfg", type=float, default=None, help="classifier-free guidance scale (pipeline default if unset)")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--temperature", type=float, default=None)
    p.add_argument("--seed", type=int, default=0, help="base seed; chunk seeds derive from (seed, first index)")
    p.add_argument("--chunk-size", type=int, default=50,
                   help="images per pipeline call and per shard; part of what fixes the samples (default 50)")
    p.add_argument("--image-size", type=int, default=None, help="require samples of this size (e.g. 256)")
    p.add_argument("--out-dir", required=True, help="run folder: shards, samples.npz, report.json")
    p.add_argument("--report", default=None, help="report path (default OUT_DIR/report.json)")
    add_common_eval_args(p)
    add_cli_flags(p)  # each family's own flags (official checkpoint paths, sampler settings)
    p.set_defaults(func=run)


# ----------------------------------------------------------------------------------------------------
def checkpoint_hash(args) -> dict:
    """sha256 of the weights the samples came from: pipeline folder files, or the official checkpoint files."""
    from ..eval.images import file_sha256

    from ..pipelines import shipped_folders

    files = {}
    folder = shipped_folders().get(args.pipeline, Path(args.pipeline))
    if folder.is_dir():
        for p in sorted(folder.rglob("*")):
            if p.is_file() and p.suffix in (".safetensors", ".json", ".pt", ".pth", ".bin"):
                files[str(p.relative_to(folder))] = file_sha256(p)
    for key, path in load_kwargs(args).items():  # the official checkpoint files given by path flags
        files[key] = file_sha256(path)
    combined = hashlib.sha256("".join(f"{k}={v};" for k, v in sorted(files.items())).encode()).hexdigest()
    return {"sha256": combined if files else None, "files": files}


FMNIST_REFS = ("fashion-mnist", "fmnist")


def _report_fmnist(args, spec, samples: Path, ref_kind: str, report_path: Path, world: int, device: str) -> int:
    """Fashion-MNIST domain metrics: class accuracy + FID on the shipped classifier's features, with the floor."""
    import numpy as np

    from ..eval.fmnist_metrics import FashionMNISTEvaluator
    from ..eval.metrics import versions
    from ..io import atomic_write_text

    with np.load(samples) as z:
        images, labels = z["arr_0"], z["arr_1"]
    metrics = FashionMNISTEvaluator(device=device).evaluate(images, labels)
    report = {"metrics": metrics,
              "settings": {**spec.manifest(), "ref": "fashion-mnist", "ref_kind": ref_kind, "world_size": world,
                           "device": device, "samples": str(samples)},
              "classifier": "vision_ar/weights/fmnist_classifier (scripts/train_fmnist_classifier.py)",
              "checkpoint": checkpoint_hash(args), "versions": versions(),
              "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    atomic_write_text(json.dumps(report, indent=2), report_path)
    width = max(len(k) for k in metrics)
    print("\n".join(f"{k:<{width}}  {v:.4f}" if isinstance(v, float) else f"{k:<{width}}  {v}"
                    for k, v in metrics.items()))
    print(f"report: {report_path}")
    return 0


def run(args) -> int:
    from ..errors import ConfigError
    from ..eval.inception import InceptionFeatures, resolve_inception_weights
    from ..eval.metrics import compute_metrics, format_table, versions
    from ..eval.reference import images_side, load_side, peek_source
    from ..eval.images import NpzImageSource
    from ..distributed import barrier, setup_distributed, teardown_distributed
    from ..eval.sample_writer import SampleSpec, export_adm_npz, generate_samples
    from ..io import atomic_write_text, check_writable

    # Everything that can be wrong is checked before sampling starts.
    if args.num < 1 or args.chunk_size < 1:
        raise ConfigError("--num and --chunk-size must be >= 1")
    fmnist = args.ref in FMNIST_REFS
    if not fmnist:
        resolve_inception_weights(args.inception_weights)
    ref_kind = "fashion-mnist test split (classifier features)" if fmnist else peek_source(args.ref)
    out_dir = Path(args.out_dir)
    report_path = Path(args.report) if args.report else out_dir / "report.json"
    check_writable(out_dir / "samples.npz")
    check_writable(report_path)

    info = setup_distributed(args.device or "auto")  # the same process setup as training
    rank, world, device = info.rank, info.world_size, str(info.device)
    try:
        from ..pipelines import load_pipeline

        pipe = load_pipeline(args.pipeline, device=device, **load_kwargs(args))
        pipe_kwargs = {k: v for k, v in dict(guidance_scale=args.cfg, top_k=args.top_k, top_p=args.top_p,
                                              temperature=args.temperature).items() if v is not None}
        pipe_kwargs.update(call_kwargs(args, pipe))
        spec = SampleSpec(num=args.num, num_classes=int(pipe.num_classes), chunk_size=args.chunk_size,
                          base_seed=args.seed, model=str(args.pipeline), pipeline_kwargs=pipe_kwargs)
        progress = not args.no_progress
        generate_samples(pipe, out_dir, spec, rank=rank, world_size=world, image_size=args.image_size,
                         progress=progress)
        del pipe
        barrier(info)
        if rank != 0:
            return 0

        samples = export_adm_npz(out_dir, spec, out_dir / "samples.npz", progress=progress)
        if fmnist:
            return _report_fmnist(args, spec, samples, ref_kind, report_path, world, device)
        extractor = InceptionFeatures(args.inception_weights, device=device, fid_layer=args.fid_layer,
                                      batch_size=args.inception_batch_size)
        src = images_side(NpzImageSource(samples), extractor, limit=args.num, progress=progress)
        ref = load_side(args.ref, extractor, cache_dir=cache_dir_from_args(args), progress=progress)
        metrics = compute_metrics(src, ref, isc_splits=args.isc_splits, isc_convention=args.isc_convention,
                                  k=args.prc_k, device=device)
        report = {
            "metrics": metrics,
            "settings": {**spec.manifest(), "ref": str(args.ref), "ref_kind": ref_kind, "ref_description": ref.description,
                         "isc_splits": args.isc_splits, "isc_convention": args.isc_convention,
                         "isc_convention_text": ("consecutive splits, no shuffle (ADM evaluator)"
                                                 if args.isc_convention == "adm" else
                                                 "rows shuffled with np.random.RandomState(2020), then consecutive "
                                                 "splits (torch-fidelity default)"),
                         "prc_k": args.prc_k, "fid_layer": args.fid_layer, "world_size": world, "device": device,
                         "samples": str(samples)},
            "inception": {"weights": str(extractor.weights_path), "sha256": extractor.weights_sha256},
            "checkpoint": checkpoint_hash(args),
            "versions": versions(),
            "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }
        atomic_write_text(json.dumps(report, indent=2), report_path)
        print(format_table(metrics))
        print(f"report: {report_path}")
        return 0
    finally:
        teardown_distributed(info)
