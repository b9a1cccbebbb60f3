"""Inception Score and k-NN manifold precision / recall, on precomputed features.

Inception Score: exp(E_x KL(p(y|x) || p(y))) averaged over `splits` groups of images, from unbiased logits.
Two split conventions exist and give different numbers on the same images:

- "adm": consecutive groups, no shuffle (OpenAI's ADM evaluator: groups of 5000 = 50000 / 10). We cut the
  N images at i * N // splits, which is ADM's grouping whenever N is a multiple of `splits`.
- "torch-fidelity": the rows are first permuted with np.random.RandomState(2020) (torch-fidelity's default
  `samples_shuffle=True, rng_seed=2020`), then cut the same way. MAR / xAR / VAR report this one.

Both are computed in float64 (ADM uses float32 softmax; the two differ by ~1e-7 relative).

Precision / recall (Kynkäänniemi et al. 2019, as in ADM's evaluator and torch-fidelity): each set's manifold
is the union of balls around its points with radius = distance to the k-th nearest neighbour (k = 3, the
point itself not counted). Precision = share of generated points inside the real manifold, recall = share of
real points inside the generated manifold.
"""
from __future__ import annotations

import numpy as np
import torch

from ..errors import ConfigError

ISC_CONVENTIONS = ("adm", "torch-fidelity")
TORCH_FIDELITY_SHUFFLE_SEED = 2020


# ----------------------------------------------------------------------------------------------------
# Inception Score
# ----------------------------------------------------------------------------------------------------
def inception_score(logits, splits: int = 10, convention: str = "adm") -> dict:
    """IS mean and std over `splits` groups; returns {'mean', 'std', 'splits', 'convention'}."""
    if convention not in ISC_CONVENTIONS:
        raise ConfigError(f"IS split convention must be one of {ISC_CONVENTIONS}, got {convention!r}")
    x = torch.as_tensor(np.asarray(logits) if not torch.is_tensor(logits) else logits).double().cpu()
    if x.ndim != 2:
        raise ConfigError(f"logits must be N x C, got shape {tuple(x.shape)}")
    n = x.shape[0]
    if n < splits:
        raise ConfigError(f"Inception Score with {splits} splits needs at least {splits} images, got {n}")
    if not torch.isfinite(x).all():
        raise ConfigError("logits contain NaN/inf; check the images and the Inception weights")
    if convention == "torch-fidelity":
        x = x[torch.from_numpy(np.random.RandomState(TORCH_FIDELITY_SHUFFLE_SEED).permutation(n))]
    log_p = x.log_softmax(dim=1)
    p = log_p.exp()
    scores = []
    for i in range(splits):
        lo, hi = i * n // splits, (i + 1) * n // splits
        p_i, log_p_i = p[lo:hi], log_p[lo:hi]
        log_marginal = p_i.mean(dim=0, keepdim=True).log()
        kl = (p_i * (log_p_i - log_marginal)).sum(dim=1).mean()
        scores.append(float(kl.exp()))
    return {"mean": float(np.mean(scores)), "std": float(np.std(scores)), "splits": splits, "convention": convention}


# ----------------------------------------------------------------------------------------------------
# Precision / recall
# ----------------------------------------------------------------------------------------------------
def _pairwise_sq_dist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    # float64 norm expansion; clamped because round-off can make self-distances slightly negative.
    d = (a * a).sum(1, keepdim=True) - 2.0 * a @ b.T + (b * b).sum(1)[None, :]
    return d.clamp_min_(0.0)


def _knn_radii(x: torch.Tensor, k: int, rows: int) -> torch.Tensor:
    """Squared distance of each point to its k-th nearest neighbour in its own set (itself excluded)."""
    out = []
    for i in range(0, x.shape[0], rows):
        d = _pairwise_sq_dist(x[i: i + rows], x)
        out.append(d.kthvalue(k + 1, dim=1).values)  # +1: the point itself is at distance 0
    return torch.cat(out)


def _inside_share(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, rows: int) -> float:
    inside = 0
    for i in range(0, points.shape[0], rows):
        d = _pairwise_sq_dist(points[i: i + rows], centres)
        inside += int((d <= radii[None, :]).any(dim=1).sum())
    return inside / points.shape[0]


def precision_recall(generated, real, k: int = 3, device: str | torch.device | None = None,
                     rows: int = 2048) -> dict:
    """k-NN manifold precision and recall between generated and real feature sets (N x D each)."""
    g = torch.as_tensor(np.asarray(generated) if not torch.is_tensor(generated) else generated)
    r = torch.as_tensor(np.asarray(real) if not torch.is_tensor(real) else real)
    if g.ndim != 2 or r.ndim != 2 or g.shape[1] != r.shape[1]:
        raise ConfigError(f"precision/recall need two N x D feature sets of the same D, got {tuple(g.shape)} "
                          f"and {tuple(r.shape)}")
    if min(g.shape[0], r.shape[0]) <= k:
        raise ConfigError(f"precision/recall with k={k} need more than {k} samples in each set, got "
                          f"{g.shape[0]} generated and {r.shape[0]} real")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    g, r = g.to(dev, torch.float64), r.to(dev, torch.float64)
    if not (torch.isfinite(g).all() and torch.isfinite(r).all()):
        raise ConfigError("features for precision/recall contain NaN/inf")
    radii_real, radii_gen = _knn_radii(r, k, rows), _knn_radii(g, k, rows)
    return {"precision": _inside_share(g, r, radii_real, rows), "recall": _inside_share(r, g, radii_gen, rows), "k": k}
