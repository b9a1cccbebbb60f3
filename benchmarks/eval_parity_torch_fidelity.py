"""Full-size check of `vision-ar fid` against `torch_fidelity.calculate_metrics` (pool3 2048-d FID, IS, P/R).

The test suite compares on the 192-d layer with 4 + 4 images to stay fast on CPU; this script runs the default
2048-d protocol on N random images per side, best on a GPU:

    python benchmarks/eval_parity_torch_fidelity.py --weights weights-inception-2015-12-05-6726825d.pth --num 2000
    python benchmarks/eval_parity_torch_fidelity.py --num 64          # random Inception weights (no download)

Prints one JSON line with both sets of numbers and their differences.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", default=None, help="Inception weights (default: random weights in a temp file)")
    ap.add_argument("--num", type=int, default=64, help="images per side")
    ap.add_argument("--size", type=int, default=64, help="image side in pixels")
    ap.add_argument("--splits", type=int, default=10)
    args = ap.parse_args()

    import torch_fidelity
    from PIL import Image

    from vision_ar.cli import main as cli_main
    from vision_ar.eval.inception import save_random_inception_weights

    tmp = Path(tempfile.mkdtemp(prefix="vision_ar_eval_parity_"))
    weights = args.weights or str(save_random_inception_weights(tmp / "inception_random.pth"))
    rng = np.random.default_rng(0)
    for name, shift in (("src", 0), ("ref", 40)):
        (tmp / name).mkdir()
        for i in range(args.num):
            im = np.clip(rng.normal(110 + shift, 50, (args.size, args.size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(im).save(tmp / name / f"{i:05d}.png")
    cuda = torch.cuda.is_available()
    t0 = time.perf_counter()
    ref = torch_fidelity.calculate_metrics(
        input1=str(tmp / "src"), input2=str(tmp / "ref"), cuda=cuda, fid=True, isc=True, prc=True,
        feature_extractor="inception-v3-compat", feature_extractor_weights_path=weights, isc_splits=args.splits,
        samples_shuffle=False, verbose=False, save_cpu_ram=True)
    t_tf = time.perf_counter() - t0

    import contextlib
    import io

    buf = io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(buf):
        cli_main(["fid", str(tmp / "src"), str(tmp / "ref"), "--inception-weights", weights, "--no-cache",
                  "--isc-splits", str(args.splits), "--no-progress"])
    t_ours = time.perf_counter() - t0
    ours = json.loads(buf.getvalue().strip().splitlines()[-1])
    print(json.dumps({
        "num": args.num, "weights": "given" if args.weights else "random", "device": "cuda" if cuda else "cpu",
        "torch_fidelity": {k: ref[k] for k in ("frechet_inception_distance", "inception_score_mean", "precision", "recall")},
        "vision_ar": {k: ours.get(k) for k in ("fid", "isc", "precision", "recall", "sfid")},
        "abs_diff": {"fid": abs(ours["fid"] - ref["frechet_inception_distance"]),
                     "isc": abs(ours["isc"] - ref["inception_score_mean"]),
                     "precision": abs(ours["precision"] - ref["precision"]),
                     "recall": abs(ours["recall"] - ref["recall"])},
        "seconds": {"torch_fidelity": round(t_tf, 2), "vision_ar": round(t_ours, 2)},
    }))


if __name__ == "__main__":
    main()
