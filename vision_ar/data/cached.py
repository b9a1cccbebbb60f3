"""Tokenizer outputs computed once and stored, so a generator trains on tokens instead of images.

`cache_tokenizer_outputs(encode_fn, dataset, path, batch_size)` runs `encode_fn(images)` over the whole
dataset (in order, no augmentation) and writes ONE safetensors file (atomically):

    tokens  N x T   every sample's tokens flattened; a tokenizer that returns a list of per-scale grids
                    (VAR) has its grids flattened and concatenated in list order
    labels  N       int64 class labels

with metadata: the layout ("tensor" = one tensor per sample, "list" = a list of per-scale tensors), every
part's per-sample shape, the dtype, the tokenizer's declared `TokenLayout` when given (every batch is checked
against it), and a content key = sha256(tokenizer weights + dataset identity). Loading
with `expected_key` (or calling the cache function again) detects a cache built by another tokenizer or from
other data. Integer tokens are stored in the smallest integer type that holds them and read back as int64;
float latents (KL tokenizers) are stored as they come.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..errors import ConfigError, DataError, MissingFileError
from ..io import atomic_save_safetensors, check_writable
from ..tokens import TokenLayout

CACHE_FORMAT = "vision_ar.token_cache.v1"


# ----------------------------------------------------------------------------------------------------
# Content key: which tokenizer, which data
# ----------------------------------------------------------------------------------------------------
def hash_state_dict(module_or_sd: nn.Module | dict) -> str:
    """sha256 over (name, dtype, shape, bytes) of every tensor, in sorted key order."""
    sd = module_or_sd.state_dict() if isinstance(module_or_sd, nn.Module) else module_or_sd
    h = hashlib.sha256()
    for name in sorted(sd):
        t = sd[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def dataset_identity(dataset: Dataset) -> str:
    """A dataset's `cache_id` when it has one (FashionMNIST, ImageFolder), else its class name and length."""
    cid = getattr(dataset, "cache_id", None)
    return str(cid) if cid is not None else f"{type(dataset).__module__}.{type(dataset).__name__}:n={len(dataset)}"


def content_key(encode_fn: Callable, dataset: Dataset, tokenizer: nn.Module | None = None,
                dataset_id: str | None = None) -> str:
    """sha256(tokenizer weights + dataset identity). The tokenizer is `encode_fn.__self__` for a bound method."""
    tokenizer = tokenizer if tokenizer is not None else getattr(encode_fn, "__self__", None)
    if not isinstance(tokenizer, nn.Module):
        raise ConfigError("cache_tokenizer_outputs needs the tokenizer's weights for the cache key: pass a bound "
                          "method (tokenizer.encode) or tokenizer=<nn.Module>.")
    h = hashlib.sha256(hash_state_dict(tokenizer).encode())
    h.update((dataset_id or dataset_identity(dataset)).encode())
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------------
def _split_parts(tokens) -> list[torch.Tensor]:
    parts = list(tokens) if isinstance(tokens, (list, tuple)) else [tokens]
    if not parts or not all(isinstance(p, torch.Tensor) and p.dim() >= 1 for p in parts):
        raise ConfigError("encode_fn must return a tensor B,... or a list of tensors B,... (one per scale); "
                          f"got {type(tokens).__name__}")
    return parts


def _storage_dtype(tokens: torch.Tensor) -> torch.dtype:
    if tokens.is_floating_point():
        return tokens.dtype
    lo, hi = int(tokens.min()), int(tokens.max())
    for dt in (torch.int16, torch.int32):
        if torch.iinfo(dt).min <= lo and hi <= torch.iinfo(dt).max:
            return dt
    return torch.int64


def read_cache_metadata(path: str | os.PathLike) -> dict:
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"token cache {path} not found; build it with cache_tokenizer_outputs(...).")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as e:
        raise DataError(f"token cache {path} is unreadable ({e}); delete it and build it again.") from e
    if meta.get("format") != CACHE_FORMAT:
        raise DataError(f"{path} is not a vision_ar token cache (format {meta.get('format')!r}); "
                        f"delete it or choose another path.")
    return meta


@torch.no_grad()
def cache_tokenizer_outputs(encode_fn: Callable, dataset: Dataset, path: str | os.PathLike, batch_size: int = 64,
                            *, tokenizer: nn.Module | None = None, dataset_id: str | None = None,
                            device: str | torch.device = "cpu", num_workers: int = 0, overwrite: bool = False,
                            progress: bool = False, token_layout: TokenLayout | None = None) -> Path:
    """Encode `dataset` once and store tokens + labels in `path`; reuse an up-to-date cache.

    token_layout: the tokenizer's declared token layout (`tokenizer.token_layout(image_size)`); every batch must
    have it (a tokenizer whose encode disagrees with its declaration is an error), and it is stored.

    A cache at `path` whose content key matches is kept (no work). One with another key (other tokenizer
    weights, other data) is rebuilt, with a message, unless it is not a token cache at all (then an error).
    """
    path = Path(path)
    check_writable(path)
    key = content_key(encode_fn, dataset, tokenizer, dataset_id)
    if path.exists() and not overwrite:
        old = read_cache_metadata(path).get("content_key")
        if old == key:
            return path
        print(f"token cache {path} is stale (built by other tokenizer weights or from other data): rebuilding")

    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, drop_last=False)
    chunks, labels, shapes, layout = [], [], None, None
    it = loader
    if progress:
        from tqdm import tqdm
        it = tqdm(loader, desc=f"caching tokens -> {path.name}")
    for images, y in it:
        out = encode_fn(images.to(device))
        if token_layout is not None:
            token_layout.check(out, who=f"the tokens of {getattr(encode_fn, '__qualname__', 'encode_fn')}")
        parts = _split_parts(out)
        batch_layout = "list" if isinstance(out, (list, tuple)) else "tensor"
        batch_shapes = [list(p.shape[1:]) for p in parts]
        if shapes is None:
            shapes, layout = batch_shapes, batch_layout
        elif (batch_shapes, batch_layout) != (shapes, layout):
            raise ConfigError(f"encode_fn returned per-sample shapes {batch_shapes} after {shapes}: a cache needs "
                              f"the same token layout for every image (same image size).")
        chunks.append(torch.cat([p.reshape(p.shape[0], -1) for p in parts], dim=1).cpu())
        labels.append(torch.as_tensor(y, dtype=torch.int64).reshape(-1))
    tokens = torch.cat(chunks)
    meta = {"format": CACHE_FORMAT, "content_key": key, "layout": layout, "shapes": json.dumps(shapes),
            "dtype": str(tokens.dtype).replace("torch.", ""), "num_samples": str(tokens.shape[0]),
            "dataset_id": dataset_id or dataset_identity(dataset)}
    if token_layout is not None:
        meta["token_layout"] = token_layout.to_json()
    atomic_save_safetensors({"tokens": tokens.to(_storage_dtype(tokens)), "labels": torch.cat(labels)}, path,
                            metadata=meta)
    return path


# ----------------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------------
class CachedTokens(Dataset):
    """`(tokens, label)` pairs from a cache file: tokens is one tensor, or a list of per-scale tensors
    (default collate then gives the batched list the tokenizer's encode returned).

    expected_key: when given (e.g. content_key(tokenizer.encode, dataset)), a cache with another key raises.
    """

    def __init__(self, path: str | os.PathLike, expected_key: str | None = None):
        from safetensors.torch import load_file

        self.path = Path(path)
        meta = read_cache_metadata(self.path)
        self.content_key = meta["content_key"]
        if expected_key is not None and expected_key != self.content_key:
            raise DataError(f"token cache {self.path} is stale: it was built by other tokenizer weights or from "
                            f"other data. Rebuild it with cache_tokenizer_outputs(...) (or delete the file).")
        try:
            tensors = load_file(str(self.path))
        except Exception as e:
            raise DataError(f"token cache {self.path} is unreadable ({e}); delete it and build it again.") from e
        self.layout, self.shapes = meta["layout"], [tuple(s) for s in json.loads(meta["shapes"])]
        self.dtype = getattr(torch, meta["dtype"])
        self.tokens, self.labels = tensors["tokens"], tensors["labels"]
        # what the tokenizer declared (caches written without one: None)
        self.token_layout = TokenLayout.from_json(meta["token_layout"]) if "token_layout" in meta else None
        self.sizes = [int(torch.tensor(s).prod()) if s else 1 for s in self.shapes]
        if self.tokens.shape[1] != sum(self.sizes) or self.tokens.shape[0] != self.labels.shape[0]:
            raise DataError(f"token cache {self.path} is inconsistent (tokens {tuple(self.tokens.shape)}, "
                            f"labels {tuple(self.labels.shape)}, parts {self.shapes}); rebuild it.")

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def __getitem__(self, i: int):
        flat = self.tokens[i].to(self.dtype)
        parts = [p.reshape(s) for p, s in zip(flat.split(self.sizes), self.shapes)]
        return (parts if self.layout == "list" else parts[0]), int(self.labels[i])
