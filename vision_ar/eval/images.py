"""Image sources for evaluation, and the checks that keep bad images out of the metrics.

Every metric here sees images the way both reference evaluators do: uint8 RGB, any size, which the Inception
network resizes to 299x299 itself (TF1-style bilinear; that resize is part of the protocol and the only one we
do). Sources:

- `FolderSource`: a folder of PNG/JPEG files, read in sorted path order with `PIL.Image.open(...).convert("RGB")`
  exactly like torch-fidelity (so "no shuffle" Inception Scores agree image for image).
- `NpzImageSource`: an ADM-layout `.npz` (`arr_0`: uint8 N x H x W x 3), streamed batch by batch so a 50,000
  image file never has to fit in memory.
- `ArraySource`: images already in memory (numpy / torch), checked by `to_uint8_nchw`.

`write_adm_npz` writes the ADM layout the same streaming way.
"""
from __future__ import annotations

import hashlib
import os
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch

from ..errors import ConfigError, MissingFileError
from ..io import atomic_path

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
ADM_LAYOUT = "uint8 array arr_0 of shape N x H x W x 3 (ADM layout, e.g. N x 256 x 256 x 3)"
_HASH_CHUNK = 1 << 23


# ----------------------------------------------------------------------------------------------------
# Checking and converting in-memory images
# ----------------------------------------------------------------------------------------------------
def to_uint8_nchw(images, name: str = "images", expected_size: int | Sequence[int] | None = None) -> torch.Tensor:
    """Return images as a uint8 tensor B x 3 x H x W, or raise saying what was expected.

    Accepted: uint8 B,H,W,3 or B,3,H,W (numpy or torch); float B,3,H,W or B,H,W,3 in [0, 1] (a pipeline's
    output_type="pt"), mapped with round(x * 255). Float images in [-1, 1] or [0, 255], other integer dtypes,
    other channel counts are errors: guessing the range would silently change the metric.
    """
    x = torch.from_numpy(np.ascontiguousarray(images)) if isinstance(images, np.ndarray) else images
    if not isinstance(x, torch.Tensor):
        raise ConfigError(f"{name}: expected a numpy array or torch tensor, got {type(images).__name__}")
    if x.ndim != 4:
        raise ConfigError(f"{name}: expected 4 dims (B,H,W,3) or (B,3,H,W), got shape {tuple(x.shape)}")
    if x.shape[1] != 3 and x.shape[-1] == 3:
        x = x.permute(0, 3, 1, 2)
    if x.shape[1] != 3:
        raise ConfigError(f"{name}: expected 3 RGB channels (B,H,W,3) or (B,3,H,W), got shape {tuple(x.shape)}; "
                          f"repeat grayscale images to 3 channels first")
    if x.dtype == torch.uint8:
        out = x
    elif x.is_floating_point():
        lo, hi = float(x.min()), float(x.max())
        if not (np.isfinite(lo) and np.isfinite(hi)):
            raise ConfigError(f"{name}: float images contain NaN or inf")
        if lo < -1e-4 or hi > 1 + 1e-4:
            hint = " (looks like [-1, 1]: pass (x + 1) / 2)" if lo < 0 else " (looks like [0, 255]: pass uint8)"
            raise ConfigError(f"{name}: float images must lie in [0, 1], got values in [{lo:.4g}, {hi:.4g}]{hint}")
        out = (x.float().clamp(0, 1) * 255).round().to(torch.uint8)
    else:
        raise ConfigError(f"{name}: dtype {x.dtype} is not supported: give uint8 in [0, 255] or float in [0, 1]")
    if expected_size is not None:
        want = (expected_size, expected_size) if isinstance(expected_size, int) else tuple(expected_size)
        if tuple(out.shape[2:]) != want:
            raise ConfigError(f"{name}: images are {tuple(out.shape[2:])} (H, W) but {want} was expected; this "
                              f"protocol does not resize, generate images at the expected size")
    return out.contiguous()


# ----------------------------------------------------------------------------------------------------
# Content hashing (for the statistics cache)
# ----------------------------------------------------------------------------------------------------
def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_HASH_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------------
# Sources
# ----------------------------------------------------------------------------------------------------
class ImageSource:
    """A finite sequence of images, delivered as uint8 B x 3 x H x W batches."""

    description: str = "images"

    def __len__(self) -> int:
        raise NotImplementedError

    def batches(self, batch_size: int, limit: int | None = None) -> Iterator[torch.Tensor]:
        raise NotImplementedError

    def content_hash(self) -> str:
        raise NotImplementedError


class ArraySource(ImageSource):
    def __init__(self, images, name: str = "images"):
        self.images = to_uint8_nchw(images, name)
        self.description = name

    def __len__(self) -> int:
        return self.images.shape[0]

    def batches(self, batch_size, limit=None):
        n = len(self) if limit is None else min(limit, len(self))
        for i in range(0, n, batch_size):
            yield self.images[i: min(i + batch_size, n)]

    def content_hash(self) -> str:
        h = hashlib.sha256(str(tuple(self.images.shape)).encode())
        h.update(self.images.numpy().tobytes())
        return h.hexdigest()


class FolderSource(ImageSource):
    def __init__(self, folder: str | os.PathLike, extensions: Sequence[str] = IMAGE_EXTENSIONS):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise MissingFileError(f"image folder {self.folder} does not exist")
        # Sorted real paths, non-recursive: the order torch-fidelity uses.
        self.files = sorted(os.path.realpath(p) for p in self.folder.iterdir()
                            if p.is_file() and p.suffix.lower() in extensions)
        if not self.files:
            raise ConfigError(f"no images ({', '.join(extensions)}) found in {self.folder}")
        self.description = f"folder {self.folder} ({len(self.files)} images)"
        self._size = None

    def __len__(self) -> int:
        return len(self.files)

    def _read(self, path: str) -> np.ndarray:
        from PIL import Image

        try:
            with Image.open(path) as im:
                arr = np.asarray(im.convert("RGB"))
        except Exception as e:  # PIL raises many types for corrupt files
            raise ConfigError(f"cannot read image {path}: {e}. Remove or re-export the file.") from e
        if self._size is None:
            self._size = arr.shape[:2]
        elif arr.shape[:2] != self._size:
            raise ConfigError(f"{path} is {arr.shape[1]}x{arr.shape[0]} but earlier images in {self.folder} are "
                              f"{self._size[1]}x{self._size[0]}: a sample folder must hold images of one size")
        return arr

    def batches(self, batch_size, limit=None):
        files = self.files if limit is None else self.files[:limit]
        for i in range(0, len(files), batch_size):
            arr = np.stack([self._read(p) for p in files[i: i + batch_size]])
            yield torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()

    def content_hash(self) -> str:
        h = hashlib.sha256()
        for p in self.files:
            h.update(os.path.basename(p).encode() + b"\0" + file_sha256(p).encode())
        return h.hexdigest()


# ----------------------------------------------------------------------------------------------------
# .npz files, streamed
# ----------------------------------------------------------------------------------------------------
def npz_keys(path: str | os.PathLike) -> list[str]:
    """Array names stored in an .npz, without loading any of them."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{path} does not exist")
    try:
        with zipfile.ZipFile(path) as zf:
            return [n[:-4] for n in zf.namelist() if n.endswith(".npy")]
    except zipfile.BadZipFile as e:
        raise ConfigError(f"{path} is not a valid .npz file ({e}); it may be truncated, re-create it") from e


@contextmanager
def _open_npy_member(path: Path, key: str):
    with zipfile.ZipFile(path) as zf:
        name = f"{key}.npy"
        if name not in zf.namelist():
            raise ConfigError(f"{path} has no array '{key}' (it holds {npz_keys(path)})")
        with zf.open(name) as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            else:  # (3, 0): utf-8 field names; same header layout as 2.0
                shape, fortran, dtype = np.lib.format._read_array_header(f, version)  # noqa: SLF001
            yield f, tuple(shape), bool(fortran), np.dtype(dtype)


def npz_array_info(path: str | os.PathLike, key: str) -> tuple[tuple[int, ...], np.dtype]:
    with _open_npy_member(Path(path), key) as (_, shape, _, dtype):
        return shape, dtype


class NpzImageSource(ImageSource):
    """Images stored as `key` (default arr_0) in an .npz, ADM layout uint8 N x H x W x 3, read in batches."""

    def __init__(self, path: str | os.PathLike, key: str = "arr_0"):
        self.path, self.key = Path(path), key
        shape, dtype = npz_array_info(self.path, key)
        if len(shape) != 4 or shape[-1] != 3:
            hint = " (this looks like N x 3 x H x W; transpose to N x H x W x 3)" if len(shape) == 4 and shape[1] == 3 else ""
            raise ConfigError(f"{self.path}: '{key}' has shape {shape}; expected {ADM_LAYOUT}{hint}")
        if dtype != np.uint8:
            raise ConfigError(f"{self.path}: '{key}' has dtype {dtype}; expected {ADM_LAYOUT}. Convert with "
                              f"np.clip(np.round(x * 255), 0, 255).astype(np.uint8) for [0, 1] floats")
        self.shape = shape
        self.description = f"{self.path} ({shape[0]} images {shape[1]}x{shape[2]})"

    def __len__(self) -> int:
        return self.shape[0]

    def batches(self, batch_size, limit=None):
        n = len(self) if limit is None else min(limit, len(self))
        per_image = int(np.prod(self.shape[1:]))
        with _open_npy_member(self.path, self.key) as (f, shape, fortran, dtype):
            if fortran:  # rare; streaming needs C order
                arr = np.load(self.path, allow_pickle=False)[self.key]
                for i in range(0, n, batch_size):
                    yield torch.from_numpy(np.ascontiguousarray(arr[i: i + batch_size])).permute(0, 3, 1, 2).contiguous()
                return
            for i in range(0, n, batch_size):
                b = min(batch_size, n - i)
                buf = f.read(b * per_image)
                if len(buf) != b * per_image:
                    raise ConfigError(f"{self.path}: '{self.key}' ends early (truncated file); re-export it")
                arr = np.frombuffer(buf, dtype=np.uint8).reshape(b, *self.shape[1:])
                yield torch.from_numpy(arr.copy()).permute(0, 3, 1, 2).contiguous()

    def content_hash(self) -> str:
        return file_sha256(self.path)


def write_adm_npz(path: str | os.PathLike, chunks: Iterable[np.ndarray], num: int, height: int, width: int,
                  labels: np.ndarray | None = None) -> Path:
    """Stream uint8 N x H x W x 3 chunks into `path` as arr_0 (and labels as arr_1, like ADM's sampler),
    written to a temporary name and renamed. Raises if the chunks do not add up to exactly `num` images."""
    path = Path(path)
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False,
              "shape": (num, height, width, 3)}
    written = 0
    with atomic_path(path) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            with zf.open("arr_0.npy", "w", force_zip64=True) as f:
                np.lib.format.write_array_header_2_0(f, header)
                for chunk in chunks:
                    if chunk.dtype != np.uint8 or chunk.shape[1:] != (height, width, 3):
                        raise ConfigError(f"sample chunk has {chunk.dtype} {chunk.shape}; expected uint8 "
                                          f"(*, {height}, {width}, 3)")
                    f.write(np.ascontiguousarray(chunk).tobytes())
                    written += chunk.shape[0]
            if written != num:
                raise ConfigError(f"{written} images were written but {num} were expected")
            if labels is not None:
                with zf.open("arr_1.npy", "w") as f:
                    np.lib.format.write_array(f, np.asarray(labels, dtype=np.int64))
    return path


def open_image_source(path: str | os.PathLike) -> ImageSource:
    """A folder of images or an .npz holding arr_0 images."""
    path = Path(path)
    if path.is_dir():
        return FolderSource(path)
    if path.suffix.lower() == ".npz":
        return NpzImageSource(path)
    if not path.exists():
        raise MissingFileError(f"{path} does not exist")
    raise ConfigError(f"{path}: expected an image folder or an .npz file")
