"""`vision-ar fid SRC REF`: FID (+ sFID, IS, precision / recall where possible) between two sources.

Each source is an image folder, a samples .npz (ADM layout: uint8 arr_0 N x H x W x 3), an ADM reference
batch (arr_0 + stored mu/sigma/mu_s/sigma_s) or a statistics .npz (mu, sigma). Prints one JSON line:

    vision-ar fid samples.npz VIRTUAL_imagenet256_labeled.npz --inception-weights weights-inception-2015-12-05-6726825d.pth
    {"fid": 3.21, "sfid": 5.6, "isc": 250.1, "isc_std": 3.2, "isc_splits": 10, "isc_convention": "adm", "precision": 0.8, ...}

IS needs SRC to hold images; precision / recall need both sides to hold images. The Inception weights come from
--inception-weights or VISION_AR_INCEPTION_WEIGHTS (only needed when a side holds images). Features of image
sources are cached by content hash under --cache-dir (default ~/.cache/vision_ar/eval_features).
"""
from __future__ import annotations

import argparse
import json
import sys


def add_common_eval_args(p) -> None:
    """Arguments shared by `fid` and `eval`."""
    p.add_argument("--inception-weights", default=None,
                   help="torch-fidelity InceptionV3 weights (weights-inception-2015-12-05-6726825d.pth); "
                        "default: $VISION_AR_INCEPTION_WEIGHTS")
    p.add_argument("--isc-splits", type=int, default=10, help="Inception Score splits (default 10)")
    p.add_argument("--isc-convention", choices=("adm", "torch-fidelity"), default="adm",
                   help="adm: consecutive splits, no shuffle (ADM evaluator); torch-fidelity: rows shuffled with "
                        "seed 2020 first (MAR/xAR/VAR numbers). Default adm")
    p.add_argument("--prc-k", type=int, default=3, help="k of the k-NN manifolds for precision/recall (default 3)")
    p.add_argument("--fid-layer", default="2048", choices=("64", "192", "768", "2048"),
                   help="Inception feature layer for FID and precision/recall (default pool3, 2048)")
    p.add_argument("--inception-batch-size", type=int, default=100)
    p.add_argument("--cache-dir", default=None, help="feature cache (default ~/.cache/vision_ar/eval_features)")
    p.add_argument("--no-cache", action="store_true", help="do not read or write the feature cache")
    p.add_argument("--device", default=None, help="cuda / cpu (default: cuda when available)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def add_parser(sub):
    p = sub.add_parser("fid", help="FID / IS / precision-recall between two image sets or statistics",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", help="image folder, samples .npz (arr_0) or statistics .npz (mu, sigma)")
    p.add_argument("ref", help="image folder, ADM reference batch, samples .npz or statistics .npz")
    p.add_argument("--num", type=int, default=None, help="use the first NUM images of SRC (error if it holds fewer)")
    add_common_eval_args(p)
    p.set_defaults(func=run)


def cache_dir_from_args(args):
    from ..eval.reference import default_cache_dir

    if args.no_cache:
        return None
    return args.cache_dir or default_cache_dir()


def run(args) -> int:
    from ..errors import ConfigError
    from ..eval.inception import InceptionFeatures
    from ..eval.metrics import compute_metrics
    from ..eval.reference import load_side, peek_source

    if args.num is not None and args.num < 1:
        raise ConfigError(f"--num must be >= 1, got {args.num}")
    kinds = {"src": peek_source(args.src), "ref": peek_source(args.ref)}  # bad inputs fail before any work
    extractor = None
    if any(k != "statistics" for k in kinds.values()):
        extractor = InceptionFeatures(args.inception_weights, device=args.device, fid_layer=args.fid_layer,
                                      batch_size=args.inception_batch_size)
    cache = cache_dir_from_args(args)
    progress = not args.no_progress
    src = load_side(args.src, extractor, limit=args.num, cache_dir=cache, progress=progress)
    ref = load_side(args.ref, extractor, cache_dir=cache, progress=progress)
    metrics = compute_metrics(src, ref, isc_splits=args.isc_splits, isc_convention=args.isc_convention,
                              k=args.prc_k, device=args.device)
    for note in metrics.pop("notes", []):
        print(f"vision-ar fid: not computed: {note}", file=sys.stderr)
    print(json.dumps(metrics))
    return 0
