"""ImageNet-style class folders (`root/<class>/<image>`) with the ADM centre crop, as in DiT/VAR/LlamaGen.

Classes are the sorted subfolder names; their position in that order is the label. Every image is cropped by
`center_crop_arr` (the guided-diffusion recipe): halve the image with a BOX filter while its short side is at
least twice the target, resize with BICUBIC so the short side equals the target, then cut the centre square.
The output is a float32 `3,size,size` tensor in [-1, 1].
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..errors import ConfigError, DataError, MissingFileError

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".JPEG")


def center_crop_arr(pil_image: Image.Image, image_size: int) -> Image.Image:
    """ADM centre crop: BOX-halve while short side >= 2*size, BICUBIC to short side = size, centre square."""
    while min(*pil_image.size) >= 2 * image_size:
        pil_image = pil_image.resize(tuple(x // 2 for x in pil_image.size), resample=Image.BOX)
    scale = image_size / min(*pil_image.size)
    pil_image = pil_image.resize(tuple(round(x * scale) for x in pil_image.size), resample=Image.BICUBIC)
    arr = np.array(pil_image)
    top = (arr.shape[0] - image_size) // 2
    left = (arr.shape[1] - image_size) // 2
    return Image.fromarray(arr[top: top + image_size, left: left + image_size])


def find_classes(root: Path, extensions=IMG_EXTENSIONS) -> tuple[list[str], list[tuple[Path, int]]]:
    """Sorted class names and the (path, label) list, with clear errors for empty or missing folders."""
    if not root.is_dir():
        raise MissingFileError(f"image folder {root} not found. Pass a folder laid out as root/<class>/<image>.")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise ConfigError(f"image folder {root} has no class subfolders. Lay it out as root/<class>/<image> "
                          f"(one subfolder per class, even if there is only one class).")
    exts = tuple(e.lower() for e in extensions)
    samples, empty = [], []
    for label, name in enumerate(classes):
        files = sorted(p for p in (root / name).rglob("*") if p.is_file() and p.suffix.lower() in exts)
        if not files:
            empty.append(name)
        samples.extend((p, label) for p in files)
    if empty:
        raise ConfigError(f"image folder {root}: class folder(s) {empty[:10]} hold no images with extensions "
                          f"{sorted(set(exts))}. Remove them or add images (labels are the sorted folder order).")
    return classes, samples


class ImageFolder(Dataset):
    """`(image float32 3,size,size in [-1, 1], label int)` pairs from root/<class>/<image> folders.

    image_size: crop size (256 or 512 for ImageNet). flip: random horizontal flip, drawn from torch's global
    RNG (saved and restored by the training loop).
    """

    def __init__(self, root: str | os.PathLike, image_size: int = 256, flip: bool = False,
                 extensions=IMG_EXTENSIONS):
        if image_size <= 0:
            raise ConfigError(f"image_size must be positive, got {image_size}")
        self.root, self.image_size, self.flip = Path(root), int(image_size), flip
        self.classes, self.samples = find_classes(self.root, extensions)
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self.num_classes = len(self.classes)

    def __len__(self) -> int:
        return len(self.samples)

    def load_image(self, path: Path) -> Image.Image:
        try:
            with Image.open(path) as img:
                return img.convert("RGB")  # convert() forces the full decode inside the try
        except Exception as e:  # PIL raises UnidentifiedImageError, OSError("truncated"), SyntaxError ...
            raise DataError(f"cannot read image {path}: {e}. The file is corrupt or not an image: "
                            f"replace or delete it.") from e

    def __getitem__(self, i: int):
        path, label = self.samples[i]
        img = center_crop_arr(self.load_image(path), self.image_size)
        x = torch.from_numpy(np.asarray(img, dtype=np.float32).copy()).permute(2, 0, 1).div_(127.5).sub_(1.0)
        if self.flip and torch.rand(()) < 0.5:
            x = x.flip(-1)
        return x.contiguous(), label

    @property
    def cache_id(self) -> str:
        """Folder, crop, flip and a hash of the (relative path, size, mtime) list: changes when files change."""
        h = hashlib.sha256()
        for p, label in self.samples:
            st = p.stat()
            h.update(f"{p.relative_to(self.root)}|{label}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        return (f"image_folder:{self.root.resolve()}:size={self.image_size}:flip={self.flip}:"
                f"n={len(self)}:{h.hexdigest()[:16]}")
