"""Fashion-MNIST from Debian's `dataset-fashion-mnist` package, in the project's image layout.

Every image becomes a float32 `3,32,32` tensor in [-1, 1]: the 28x28 grey digit-sized picture is scaled from
0..255 to [-1, 1], padded by 2 pixels on each side with the background value -1 (= black, the dataset's own
background) and repeated to 3 channels, so every architecture written for RGB 2^k images runs unchanged.

The IDX files are parsed here with gzip + numpy (nothing is downloaded). Where they are looked for, in order:
the `root` argument, the VISION_AR_FASHION_MNIST environment variable, /usr/share/datasets/fashion-mnist.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import zlib
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import ConfigError, DataError, MissingFileError

DEBIAN_ROOT = Path("/usr/share/datasets/fashion-mnist")
ROOT_ENV_VAR = "VISION_AR_FASHION_MNIST"
INSTALL_HINT = "apt-get install -y dataset-fashion-mnist"

CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
               "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
NUM_CLASSES = len(CLASS_NAMES)

# split -> (images file, labels file, number of samples the official release has)
SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", 60000),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", 10000),
}
# IDX magic number: 0x0000 | data type (0x08 = uint8) | number of dimensions
IMAGES_MAGIC, LABELS_MAGIC = 0x00000803, 0x00000801
PAD = 2  # 28 + 2 * 2 = 32


def default_root(root: str | os.PathLike | None = None) -> Path:
    if root is not None:
        return Path(root)
    return Path(os.environ.get(ROOT_ENV_VAR) or DEBIAN_ROOT)


# ----------------------------------------------------------------------------------------------------
# IDX parsing
# ----------------------------------------------------------------------------------------------------
def read_idx(path: Path, magic: int) -> np.ndarray:
    """Read one gzip'ed IDX file: big-endian int32 magic, one big-endian int32 per dimension, uint8 data."""
    if not path.is_file():
        raise MissingFileError(f"Fashion-MNIST file {path} not found. Install it with `{INSTALL_HINT}`, or pass "
                               f"root=/folder/with/the/4/files or set {ROOT_ENV_VAR}.")
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError; a cut-off stream is an EOFError
        raise DataError(f"Fashion-MNIST file {path} is corrupt or truncated ({e}). "
                        f"Reinstall it: `apt-get install --reinstall -y dataset-fashion-mnist`.") from e
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header or int.from_bytes(raw[:4], "big") != magic:
        found = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else None
        raise DataError(f"Fashion-MNIST file {path} does not start with the IDX magic number {magic:#010x} "
                        f"(found {found if found is None else hex(found)}): wrong or corrupt file. "
                        f"Reinstall it: `apt-get install --reinstall -y dataset-fashion-mnist`.")
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape))
    if len(raw) - header != expected:
        raise DataError(f"Fashion-MNIST file {path} holds {len(raw) - header} data bytes but its header says "
                        f"{shape} = {expected}: truncated or corrupt. "
                        f"Reinstall it: `apt-get install --reinstall -y dataset-fashion-mnist`.")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


@lru_cache(maxsize=4)
def _load_split_cached(images_path: Path, labels_path: Path, stamp: tuple) -> tuple[np.ndarray, np.ndarray]:
    # `stamp` (sizes + mtimes) is part of the cache key so a replaced file is read again.
    images = read_idx(images_path, IMAGES_MAGIC)
    labels = read_idx(labels_path, LABELS_MAGIC)
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise DataError(f"Fashion-MNIST file {images_path} holds images of shape {images.shape[1:]}, expected 28x28.")
    if labels.shape != (images.shape[0],):
        raise DataError(f"Fashion-MNIST files disagree: {images_path} has {images.shape[0]} images, "
                        f"{labels_path} has {labels.shape[0]} labels. Reinstall dataset-fashion-mnist.")
    if labels.size and int(labels.max()) >= NUM_CLASSES:
        raise DataError(f"Fashion-MNIST file {labels_path} has label {int(labels.max())} >= {NUM_CLASSES}: corrupt.")
    # Pad once here (background value 0 in uint8 = -1 in [-1, 1]) so __getitem__ is a cheap cast.
    padded = np.pad(images, ((0, 0), (PAD, PAD), (PAD, PAD)), constant_values=0)
    padded.setflags(write=False)
    labels = labels.copy()
    labels.setflags(write=False)
    return padded, labels


def load_fashion_mnist_arrays(split: str = "train", root: str | os.PathLike | None = None):
    """The whole split as (uint8 `N,32,32` padded images, uint8 `N` labels), read once per process."""
    if split not in SPLIT_FILES:
        raise ConfigError(f"Fashion-MNIST split {split!r} does not exist; use one of {sorted(SPLIT_FILES)}.")
    folder = default_root(root)
    img_name, lab_name, _ = SPLIT_FILES[split]
    paths = (folder / img_name, folder / lab_name)
    for p in paths:  # name the missing file before anything else
        if not p.is_file():
            read_idx(p, 0)
    stamp = tuple((p.stat().st_size, p.stat().st_mtime_ns) for p in paths)
    return _load_split_cached(paths[0].resolve(), paths[1].resolve(), stamp)


# ----------------------------------------------------------------------------------------------------
# Dataset
# ----------------------------------------------------------------------------------------------------
class FashionMNIST(Dataset):
    """Fashion-MNIST as `(image float32 3,32,32 in [-1, 1], label int)` pairs.

    split: 'train' (60k) or 'test' (10k). root: folder holding the four .gz files (default: the
    VISION_AR_FASHION_MNIST variable, else Debian's folder). flip: random horizontal flip (off by default;
    drawn from torch's global RNG, which the training loop saves and restores). limit: keep the first
    `limit` samples (small experiments and tests).
    """

    classes = CLASS_NAMES
    num_classes = NUM_CLASSES

    def __init__(self, split: str = "train", root: str | os.PathLike | None = None, flip: bool = False,
                 limit: int | None = None):
        images, labels = load_fashion_mnist_arrays(split, root)
        if limit is not None:
            if limit <= 0:
                raise ConfigError(f"limit must be a positive number of samples, got {limit}")
            images, labels = images[:limit], labels[:limit]
        self.split, self.flip = split, flip
        self.images = torch.from_numpy(images.copy())  # N,32,32 uint8; a copy, the cached arrays are read-only
        self.labels = torch.from_numpy(labels.astype(np.int64))

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int):
        x = self.images[i].float().div_(127.5).sub_(1.0)
        if self.flip and torch.rand(()) < 0.5:
            x = x.flip(-1)
        return x.unsqueeze(0).expand(3, -1, -1).contiguous(), int(self.labels[i])

    @property
    def cache_id(self) -> str:
        """What identifies this data for a token cache: split, flip, size and a hash of the pixels + labels."""
        h = hashlib.sha256(self.images.numpy().tobytes())
        h.update(self.labels.numpy().tobytes())
        return f"fashion_mnist:{self.split}:n={len(self)}:flip={self.flip}:{h.hexdigest()[:16]}"
