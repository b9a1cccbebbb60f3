"""Fashion-MNIST domain metrics: class accuracy and a classifier-feature FID for class-conditional generators.

    ev = FashionMNISTEvaluator()                       # the shipped classifier (vision_ar/weights/fmnist_classifier)
    ev.evaluate(images, labels)                        # {'accuracy', 'fid', 'fid_floor_train_vs_test', 'n'}

- accuracy: share of samples the classifier assigns to their conditioning class (the classifier gets ~92-93% on
  real test images, so that is about the ceiling).
- fid: Fréchet distance between the classifier's penultimate features of the samples and of the 10k test images.
  Inception-v3 features say little about 32x32 grey clothing; this small in-domain network does.
- fid_floor_train_vs_test: the same FID for as many real *train* images as there are samples, against the test
  set. It is what a perfect generator would score at that sample count (FID is biased upwards for small N), and
  it is printed beside every result so a number can be read against it.

Images: float `B,3,32,32` (or `B,1,32,32`) in [-1, 1], the project's layout, or uint8 `B,32,32,3` / `B,3,32,32`
(ADM sample files), mapped with x / 127.5 - 1. Anything else is an error, not a guess.

Reference statistics (test features' mean and covariance; the train subset of the floor) are cached in
`<VISION_AR_CACHE or ~/.cache/vision_ar>/eval_features/`, keyed by the classifier weights' hash and the
data's hash, so they are computed once per machine; pass cache_dir=False to compute them on the fly.
"""
from __future__ import annotations

import hashlib
import os
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..errors import ConfigError, MissingFileError
from ..io import WEIGHTS_NAME, atomic_path
from .fmnist_classifier import FashionMNISTClassifier
from .frechet import feature_statistics, frechet_distance

DEFAULT_WEIGHTS = Path(__file__).resolve().parents[1] / "weights" / "fmnist_classifier"
NUM_CLASSES = 10
IMAGE_SIZE = 32
TRAIN_SIZE = 60000
FLOOR_SEED = 0  # which train images form the floor: a fixed, seeded subset


# ----------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------
def load_split_images(split: str, root: str | os.PathLike | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(`N,3,32,32` float32 in [-1, 1], `N` int64 labels) of a Fashion-MNIST split, via the shared loader."""
    from ..data.fashion_mnist import load_fashion_mnist_arrays

    images_u8, labels = load_fashion_mnist_arrays(split, root)  # N,32,32 uint8, already padded with 0 (= -1)
    images = torch.from_numpy(np.array(images_u8)).float()  # a copy: the shared arrays are read-only
    images = images.div_(127.5).sub_(1.0).unsqueeze(1)
    return images.expand(-1, 3, -1, -1), torch.from_numpy(np.asarray(labels).astype(np.int64))


@lru_cache(maxsize=8)
def _data_hash(split: str, root) -> str:
    """Part of every cache key, so statistics are recomputed when the data files change."""
    from ..data.fashion_mnist import load_fashion_mnist_arrays

    images_u8, labels = load_fashion_mnist_arrays(split, root)
    h = hashlib.sha256(np.ascontiguousarray(images_u8).tobytes())
    h.update(np.ascontiguousarray(labels).tobytes())
    return h.hexdigest()[:16]


# ----------------------------------------------------------------------------------------------------
# Input checks
# ----------------------------------------------------------------------------------------------------
def to_model_input(images, name: str = "images") -> torch.Tensor:
    """Check and convert images to float `B,C,32,32` in [-1, 1] (C = 1 or 3); raise saying what was expected."""
    x = torch.from_numpy(np.ascontiguousarray(images)) if isinstance(images, np.ndarray) else images
    if not isinstance(x, torch.Tensor):
        raise ConfigError(f"{name}: expected a torch tensor or numpy array, got {type(images).__name__}")
    if x.ndim != 4:
        raise ConfigError(f"{name}: expected 4 dims (B,3,32,32 float in [-1,1] or B,32,32,3 uint8), "
                          f"got shape {tuple(x.shape)}")
    if x.dtype == torch.uint8:
        if x.shape[1] not in (1, 3) and x.shape[-1] in (1, 3):
            x = x.permute(0, 3, 1, 2)  # ADM layout N,H,W,C
        x = x.float().div(127.5).sub(1.0)
    elif x.is_floating_point():
        x = x.float()
        lo, hi = (float(x.min()), float(x.max())) if x.numel() else (-1.0, 1.0)
        if not (np.isfinite(lo) and np.isfinite(hi)):
            raise ConfigError(f"{name}: images contain NaN or inf; the generator or decoder diverged")
        if lo < -1 - 1e-3 or hi > 1 + 1e-3:
            hint = " (looks like [0, 255]: pass uint8 or x / 127.5 - 1)" if hi > 2 else ""
            raise ConfigError(f"{name}: float images must lie in [-1, 1], got [{lo:.4g}, {hi:.4g}]{hint}")
        if lo >= 0 and x.shape[0] >= 8:
            # Every Fashion-MNIST image has a black (-1) background; a batch with nothing below 0 is [0, 1] data
            # (a pipeline's output_type="pt"), which would silently shift every feature.
            raise ConfigError(f"{name}: no value below 0 in {x.shape[0]} images: these look like [0, 1] images "
                              f"(output_type='pt'); pass x * 2 - 1 to get the [-1, 1] layout")
    else:
        raise ConfigError(f"{name}: dtype {x.dtype} not supported; give float in [-1, 1] or uint8 in [0, 255]")
    if x.shape[1] not in (1, 3) or tuple(x.shape[2:]) != (IMAGE_SIZE, IMAGE_SIZE):
        raise ConfigError(f"{name}: expected B,3,{IMAGE_SIZE},{IMAGE_SIZE} (or 1 channel), got {tuple(x.shape)}; "
                          f"Fashion-MNIST samples are 28x28 padded to {IMAGE_SIZE}x{IMAGE_SIZE}")
    if x.shape[0] == 0:
        raise ConfigError(f"{name}: no images given")
    return x


def check_labels(labels, n: int) -> torch.Tensor:
    y = torch.as_tensor(np.asarray(labels) if not isinstance(labels, torch.Tensor) else labels)
    if y.ndim != 1 or y.shape[0] != n:
        raise ConfigError(f"labels: expected {n} class ids (one per image), got shape {tuple(y.shape)}")
    if y.is_floating_point() or y.dtype == torch.bool:
        raise ConfigError(f"labels: expected integer class ids, got dtype {y.dtype}")
    bad = y[(y < 0) | (y >= NUM_CLASSES)]
    if bad.numel():
        raise ConfigError(f"labels: class ids {sorted(set(bad.tolist()))[:10]} are out of range; Fashion-MNIST has "
                          f"classes 0..{NUM_CLASSES - 1}")
    return y.long()


# ----------------------------------------------------------------------------------------------------
# Evaluator
# ----------------------------------------------------------------------------------------------------
class FashionMNISTEvaluator:
    """Accuracy and classifier-feature FID of Fashion-MNIST samples against the test split.

    weights: a classifier folder (config.json + model.safetensors) or a FashionMNISTClassifier; default the
    shipped one. cache_dir: where reference statistics are kept (None: the user cache; False: no cache).
    data_root: folder of the Fashion-MNIST .gz files (default: the shared loader's search order).
    """

    def __init__(self, weights: str | os.PathLike | FashionMNISTClassifier | None = None, device: str = "cpu",
                 batch_size: int = 500, cache_dir: str | os.PathLike | bool | None = None, data_root=None):
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        if isinstance(weights, FashionMNISTClassifier):
            self.model, self.weights_id = weights, None
        else:
            folder = Path(weights) if weights is not None else DEFAULT_WEIGHTS
            if not (folder / WEIGHTS_NAME).is_file() and weights is None:
                raise MissingFileError(f"the shipped Fashion-MNIST classifier is missing ({folder}); reinstall "
                                       f"vision-ar or train it: python scripts/train_fmnist_classifier.py")
            self.model = FashionMNISTClassifier.from_pretrained(folder)
            self.weights_id = hashlib.sha256((folder / WEIGHTS_NAME).read_bytes()).hexdigest()[:16]
        self.model = self.model.to(device).eval()
        self.device, self.batch_size, self.data_root = torch.device(device), batch_size, data_root
        if cache_dir is None:
            from .reference import default_cache_dir

            cache_dir = default_cache_dir()
        self.cache_dir = None if cache_dir is False or self.weights_id is None else Path(cache_dir)
        self._stats: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    # -- features ------------------------------------------------------------------------------------
    @torch.no_grad()
    def _run(self, images) -> tuple[torch.Tensor, torch.Tensor]:
        """(features `N,D`, logits `N,10`) in batches; images checked per batch so big inputs stay lazy."""
        if not isinstance(images, (torch.Tensor, np.ndarray)):
            raise ConfigError(f"images: expected a torch tensor or numpy array, got {type(images).__name__}")
        to_model_input(images[: max(1, min(len(images), 8))])  # shape/dtype errors before any work
        feats, logits = [], []
        for i in range(0, len(images), self.batch_size):
            x = to_model_input(images[i:i + self.batch_size]).to(self.device)
            f = self.model.features(x)
            feats.append(f.float().cpu())
            logits.append(self.model.head(f).float().cpu())
        return torch.cat(feats), torch.cat(logits)

    def features(self, images) -> torch.Tensor:
        """Penultimate classifier features `N,feature_dim` (float32, CPU)."""
        return self._run(images)[0]

    def accuracy(self, images, labels: Sequence[int] | torch.Tensor) -> float:
        y = check_labels(labels, len(images))
        return float((self._run(images)[1].argmax(1) == y).float().mean())

    # -- reference statistics ------------------------------------------------------------------------
    def _cached_stats(self, key: str, compute) -> tuple[np.ndarray, np.ndarray]:
        if key in self._stats:
            return self._stats[key]
        path = None
        if self.cache_dir is not None:
            path = self.cache_dir / f"fmnist-clf{self.weights_id}-{key}.npz"
            if path.is_file():
                with np.load(path, allow_pickle=False) as z:
                    self._stats[key] = (z["mu"], z["sigma"])
                return self._stats[key]
        mu, sigma = feature_statistics(compute().double().numpy())
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as tmp:
                with open(tmp, "wb") as f:
                    np.savez(f, mu=mu, sigma=sigma)
        self._stats[key] = (mu, sigma)
        return mu, sigma

    def reference_statistics(self, split: str = "test") -> tuple[np.ndarray, np.ndarray]:
        """(mu, sigma) of the classifier features of a whole split."""
        if split not in ("test", "train"):
            raise ConfigError(f"ref must be 'test' or 'train', got {split!r}")
        key = f"{split}-{_data_hash(split, self.data_root)}"
        return self._cached_stats(key, lambda: self.features(load_split_images(split, self.data_root)[0]))

    def floor_statistics(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(mu, sigma) of `n` real train images (a fixed seeded subset) for the floor at sample count n."""
        if not 2 <= n <= TRAIN_SIZE:
            raise ConfigError(f"the floor needs 2..{TRAIN_SIZE} train images, got n={n}")

        def compute():  # only when the statistics are not cached: loading 60k images takes seconds
            images, _ = load_split_images("train", self.data_root)
            idx = torch.randperm(len(images), generator=torch.Generator().manual_seed(FLOOR_SEED))[:n]
            return self.features(images[idx])

        return self._cached_stats(f"train{n}s{FLOOR_SEED}-{_data_hash('train', self.data_root)}", compute)

    # -- metrics -------------------------------------------------------------------------------------
    def fid_from_features(self, features: torch.Tensor, ref: str = "test") -> float:
        mu, sigma = feature_statistics(features.double().numpy())
        return frechet_distance(mu, sigma, *self.reference_statistics(ref))

    def fid(self, images, ref: str = "test") -> float:
        """Classifier-feature FID of `images` against a whole split ('test' by default)."""
        if ref not in ("test", "train"):
            raise ConfigError(f"ref must be 'test' or 'train', got {ref!r}")
        return self.fid_from_features(self.features(images), ref)

    def fid_floor(self, n: int = 10000) -> float:
        """FID of n real train images vs the test split: what a perfect generator scores with n samples."""
        return frechet_distance(*self.floor_statistics(n), *self.reference_statistics("test"))

    def evaluate(self, images, labels) -> dict:
        """accuracy, fid (vs test), fid_floor_train_vs_test (same n), n: one pass of the classifier."""
        y = check_labels(labels, len(images))
        feats, logits = self._run(images)
        n = len(y)
        floor_n = min(n, TRAIN_SIZE)
        return {"accuracy": float((logits.argmax(1) == y).float().mean()),
                "fid": self.fid_from_features(feats, "test"),
                "fid_floor_train_vs_test": self.fid_floor(floor_n),
                "n": n}
