"""All metrics between a source and a reference side, and how to print them.

`compute_metrics(src, ref)` returns a flat dict: `fid` always; `sfid` when both sides have spatial statistics;
`isc` / `isc_std` when the source held images (logits); `precision` / `recall` when both sides held images.
A metric that cannot be computed is left out and the reason is listed under `notes`, never silently.
"""
from __future__ import annotations

import platform
import sys

from ..errors import ConfigError
from .frechet import frechet_distance
from .reference import Side
from .scores import inception_score, precision_recall


def compute_metrics(src: Side, ref: Side, isc_splits: int = 10, isc_convention: str = "adm", k: int = 3,
                    device=None) -> dict:
    if src.mu.shape != ref.mu.shape:
        raise ConfigError(f"the source features are {src.mu.shape[0]}-d but the reference statistics are "
                          f"{ref.mu.shape[0]}-d ({ref.description}); use statistics of the same Inception layer "
                          f"(pool3 = 2048-d for ImageNet FID)")
    out: dict = {"fid": frechet_distance(src.mu, src.sigma, ref.mu, ref.sigma)}
    notes = []
    if src.mu_s is not None and ref.mu_s is not None:
        out["sfid"] = frechet_distance(src.mu_s, src.sigma_s, ref.mu_s, ref.sigma_s)
    else:
        notes.append("sfid: needs spatial statistics (mu_s, sigma_s) on both sides")
    if src.features is not None and src.features.logits is not None:
        isc = inception_score(src.features.logits, splits=isc_splits, convention=isc_convention)
        out.update(isc=isc["mean"], isc_std=isc["std"], isc_splits=isc_splits, isc_convention=isc_convention)
    else:
        notes.append("isc: the source holds statistics, not images")
    if src.features is not None and ref.features is not None:
        pr = precision_recall(src.features.pool, ref.features.pool, k=k, device=device)
        out.update(precision=pr["precision"], recall=pr["recall"], prc_k=k)
    else:
        side = "reference" if src.features is not None else "source"
        notes.append(f"precision/recall: the {side} holds statistics, not images")
    if src.num_images is not None:
        out["num_src"] = src.num_images
    if ref.num_images is not None:
        out["num_ref"] = ref.num_images
    if notes:
        out["notes"] = notes
    return out


def versions() -> dict:
    import numpy
    import scipy
    import torch
    import torch_fidelity

    from .. import __version__

    return {"vision_ar": __version__, "torch": torch.__version__, "torch_fidelity": torch_fidelity.__version__,
            "numpy": numpy.__version__, "scipy": scipy.__version__, "python": sys.version.split()[0],
            "platform": platform.platform(),
            "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


_TABLE_ROWS = (("fid", "FID"), ("sfid", "sFID"), ("isc", "IS"), ("isc_std", "IS std"),
               ("precision", "Precision"), ("recall", "Recall"), ("num_src", "samples"), ("num_ref", "reference images"))


def format_table(metrics: dict) -> str:
    rows = [(label, f"{metrics[key]:.4f}" if isinstance(metrics[key], float) else str(metrics[key]))
            for key, label in _TABLE_ROWS if key in metrics]
    if "isc_convention" in metrics:
        rows.append(("IS splits", f"{metrics['isc_splits']} ({metrics['isc_convention']})"))
    width = max(len(r[0]) for r in rows)
    lines = [f"{'metric':<{width}}  value", f"{'-' * width}  {'-' * 10}"]
    lines += [f"{label:<{width}}  {value}" for label, value in rows]
    for note in metrics.get("notes", []):
        lines.append(f"(not computed) {note}")
    return "\n".join(lines)
