"""One side of a comparison: FID statistics (+ sFID statistics, + per-image features) from any source users have.

Sources (`load_side`):

- statistics `.npz` with `mu`, `sigma` (MAR / xAR `adm_in256_stats.npz`, torch-fidelity's fid_statistics_file),
  optionally `mu_s`, `sigma_s` (sFID);
- ADM reference batches (`VIRTUAL_imagenet256_labeled.npz`): images in `arr_0` and usually precomputed
  `mu`, `sigma`, `mu_s`, `sigma_s`. Like ADM's evaluator we use the stored statistics for FID / sFID and the
  images' features for precision / recall;
- a samples `.npz` (ADM layout, `arr_0`) or an image folder: features computed with the Inception network.

Features computed from images are cached by content hash (file bytes, or every file's name and bytes in a
folder) plus the Inception weights' hash and feature layer, so the reference is embedded once.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import ConfigError, MissingFileError
from ..io import atomic_path
from .frechet import feature_statistics
from .images import ImageSource, npz_keys, open_image_source
from .inception import Features, InceptionFeatures

CACHE_ENV = "VISION_AR_CACHE"
CACHE_VERSION = 1  # bump when what the cache holds or how features are computed changes


def default_cache_dir() -> Path:
    root = os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "vision_ar")
    return Path(root) / "eval_features"


@dataclass
class Side:
    """What the metrics need from one side of a comparison."""

    description: str
    mu: np.ndarray
    sigma: np.ndarray
    mu_s: Optional[np.ndarray] = None
    sigma_s: Optional[np.ndarray] = None
    features: Optional[Features] = None  # per-image features when the source held images

    @property
    def num_images(self) -> Optional[int]:
        return None if self.features is None else len(self.features)


def side_from_features(features: Features, description: str) -> Side:
    mu, sigma = feature_statistics(features.pool)
    mu_s = sigma_s = None
    if features.spatial is not None:
        mu_s, sigma_s = feature_statistics(features.spatial)
    return Side(description, mu, sigma, mu_s, sigma_s, features)


# ----------------------------------------------------------------------------------------------------
# Statistics files
# ----------------------------------------------------------------------------------------------------
def read_statistics(path: str | os.PathLike, keys: list[str] | None = None) -> dict:
    """mu/sigma (required) and mu_s/sigma_s (optional, together) from an .npz, shape-checked, float64."""
    path = Path(path)
    keys = npz_keys(path) if keys is None else keys
    out = {}
    with np.load(path, allow_pickle=False) as z:
        for m, s, required in (("mu", "sigma", True), ("mu_s", "sigma_s", False)):
            if m not in keys and s not in keys:
                if required:
                    raise ConfigError(f"{path} holds {keys}: a statistics file needs 'mu' and 'sigma' (and an "
                                      f"image file needs 'arr_0')")
                continue
            missing = [k for k in (m, s) if k not in keys]
            if missing:
                raise ConfigError(f"reference file {path} has {[k for k in (m, s) if k in keys]} but is missing "
                                  f"{missing}; re-create it with both the mean and the covariance")
            mu, sigma = np.asarray(z[m], dtype=np.float64), np.asarray(z[s], dtype=np.float64)
            if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
                raise ConfigError(f"{path}: '{m}' {mu.shape} and '{s}' {sigma.shape} do not fit (need D and D x D)")
            if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
                raise ConfigError(f"{path}: '{m}' / '{s}' contain NaN or inf; the file is corrupt")
            out[m], out[s] = mu, sigma
    return out


def save_statistics(side: Side, path: str | os.PathLike) -> Path:
    """Write mu/sigma (+ mu_s/sigma_s) in the ADM / MAR layout."""
    arrays = {"mu": side.mu, "sigma": side.sigma}
    if side.mu_s is not None:
        arrays.update(mu_s=side.mu_s, sigma_s=side.sigma_s)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
    return Path(path)


# ----------------------------------------------------------------------------------------------------
# Feature cache
# ----------------------------------------------------------------------------------------------------
def _cache_path(cache_dir: Path, source: ImageSource, extractor: InceptionFeatures, limit: Optional[int]) -> Path:
    n = "all" if limit is None else str(limit)
    return cache_dir / f"{source.content_hash()[:32]}-{extractor.tag}-n{n}-v{CACHE_VERSION}.npz"


def _load_cached(path: Path) -> Side | None:
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as z:
        feats = Features(pool=z["pool"], logits=z["logits"] if "logits" in z else None)
        side = Side(str(z["description"]), z["mu"], z["sigma"], features=feats)
        if "mu_s" in z:
            side.mu_s, side.sigma_s = z["mu_s"], z["sigma_s"]
    return side


def _store_cached(path: Path, side: Side) -> None:
    arrays = {"pool": side.features.pool, "mu": side.mu, "sigma": side.sigma,
              "description": np.asarray(side.description)}
    if side.features.logits is not None:
        arrays["logits"] = side.features.logits
    if side.mu_s is not None:
        arrays.update(mu_s=side.mu_s, sigma_s=side.sigma_s)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)


def images_side(source: ImageSource, extractor: InceptionFeatures, limit: int | None = None,
                cache_dir: str | os.PathLike | None = None, progress: bool = True) -> Side:
    """Features and statistics of an image source, from the cache when the same content was embedded before."""
    if limit is not None and limit > len(source):
        raise ConfigError(f"{source.description} holds {len(source)} images but {limit} were requested; "
                          f"generate more samples or lower the number")
    path = None
    if cache_dir is not None:
        path = _cache_path(Path(cache_dir), source, extractor, limit)
        cached = _load_cached(path)
        if cached is not None:
            return cached
    side = side_from_features(extractor.extract(source, limit=limit, progress=progress), source.description)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        _store_cached(path, side)
    return side


# ----------------------------------------------------------------------------------------------------
# Any source
# ----------------------------------------------------------------------------------------------------
def source_kind(path: str | os.PathLike) -> str:
    """'folder', 'images' (npz with arr_0, maybe also statistics) or 'statistics' (npz with mu/sigma only)."""
    path = Path(path)
    if path.is_dir():
        return "folder"
    if not path.exists():
        raise MissingFileError(f"{path} does not exist")
    if path.suffix.lower() != ".npz":
        raise ConfigError(f"{path}: expected an image folder, a samples .npz (arr_0) or a statistics .npz (mu, sigma)")
    keys = npz_keys(path)
    if "arr_0" in keys:
        return "images"
    if "mu" in keys or "sigma" in keys:
        return "statistics"
    raise ConfigError(f"{path} holds {keys}: expected 'arr_0' (images, ADM layout) or 'mu' + 'sigma' (statistics)")


def load_side(path: str | os.PathLike, extractor: InceptionFeatures | None, limit: int | None = None,
              cache_dir: str | os.PathLike | None = None, progress: bool = True) -> Side:
    """One side of a comparison from a folder, a samples / reference-batch .npz or a statistics .npz."""
    path = Path(path)
    kind = source_kind(path)
    if kind == "statistics":
        if limit is not None:
            raise ConfigError(f"{path} holds statistics, not images: a number of samples cannot be chosen from it")
        st = read_statistics(path)
        return Side(f"statistics {path}", st["mu"], st["sigma"], st.get("mu_s"), st.get("sigma_s"))
    if extractor is None:
        raise ConfigError(f"{path} holds images: computing their features needs the Inception weights")
    side = images_side(open_image_source(path), extractor, limit=limit, cache_dir=cache_dir, progress=progress)
    if kind == "images":
        keys = npz_keys(path)
        if "mu" in keys or "sigma" in keys:
            # ADM reference batch: its stored statistics are the reference for FID / sFID (ADM evaluator behaviour).
            if limit is not None:
                raise ConfigError(f"{path} stores statistics of all its images; do not pass a sample count for it")
            st = read_statistics(path, keys)
            side.mu, side.sigma = st["mu"], st["sigma"]
            if "mu_s" in st:
                side.mu_s, side.sigma_s = st["mu_s"], st["sigma_s"]
            side.description += " (stored statistics)"
    return side


def peek_source(path: str | os.PathLike) -> str:
    """Check a source without computing anything (so bad paths fail before hours of sampling)."""
    path = Path(path)
    kind = source_kind(path)
    if kind == "statistics":
        read_statistics(path)
    else:
        source = open_image_source(path)
        if kind == "images" and any(k in npz_keys(path) for k in ("mu", "sigma")):
            read_statistics(path)
        if len(source) == 0:
            raise ConfigError(f"{path} holds no images")
    return kind
