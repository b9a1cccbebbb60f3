"""Many images from one pipeline: batch after batch with one random generator, a progress bar, one summary."""
from __future__ import annotations

import numpy as np
import torch


def sample_in_batches(pipe, labels: list[int], batch_size: int, generator: torch.Generator, progress: bool = True,
                      **settings) -> tuple[np.ndarray, dict]:
    """uint8 images (N,H,W,3) for `labels`, `batch_size` per pipeline call, and the summary of the calls' stats.

    The one generator runs through all batches: same seed and settings, same images on the same device. The
    progress bar (stderr, per image) shows when there is more than one batch."""
    from tqdm.auto import tqdm

    chunks, stats, sizes = [], [], []
    with tqdm(total=len(labels), desc="sampling", unit="img", disable=not progress or len(labels) <= batch_size) as bar:
        for i in range(0, len(labels), batch_size):
            batch = labels[i: i + batch_size]
            res = pipe(class_labels=batch, generator=generator, output_type="np", **settings)
            chunks.append(res.images)
            stats.append(res.stats or {})
            sizes.append(len(batch))
            bar.update(len(batch))
    return np.concatenate(chunks), summarize_stats(stats, sizes)


def summarize_stats(stats: list[dict], sizes: list[int]) -> dict:
    """One record for a run of several batches: seconds summed; counts (int, e.g. forward_passes) summed, with
    their per-batch min/mean/max when there are several batches; rates (float, e.g. mean_accept_length)
    averaged over images. Other values (histograms) are left out."""
    out = {"batches": len(stats), "seconds": round(sum(float(s.get("seconds", 0.0)) for s in stats), 3)}
    keys = [k for k in (stats[0] if stats else {}) if k != "seconds"]
    for key in keys:
        values = [s.get(key) for s in stats]
        if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            out[key] = sum(values)
            if len(values) > 1:
                out[f"{key}_per_batch"] = {"min": min(values), "mean": round(sum(values) / len(values), 3),
                                           "max": max(values)}
        elif all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            out[key] = round(sum(v * n for v, n in zip(values, sizes)) / sum(sizes), 3)
    return out
