"""Rebuild an official state_dict from a fixture folder's `recipe.json` + `buffers.safetensors`.

The fixtures store parameters as a recipe (the official models are too large to ship): each `kind == "param"`
entry is `shift + scale * fixture_uniform(numel, key)` in float32; `kind == "buffer"` entries are stored as they
are. Every entry carries the SHA-256 of its raw bytes, checked here, so a wrong rebuild fails loudly.
"""
from __future__ import annotations

import hashlib
import json
import math
from collections import OrderedDict
from pathlib import Path

import torch
from safetensors.torch import load_file

_DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16,
           "bfloat16": torch.bfloat16, "int64": torch.int64, "int32": torch.int32, "bool": torch.bool}


def fixture_uniform(numel: int, key: int) -> torch.Tensor:
    """Integer hash of (index, key) -> float64 in (-1, 1) (the fixtures' README, 'fixture_uniform v1')."""
    i = torch.arange(numel, dtype=torch.int64)
    x = (i * 0x9E3779B1 + key) & 0xFFFFFFFF
    x = (((x >> 16) ^ x) * 0x045D9F3B) & 0xFFFFFFFF
    x = (((x >> 16) ^ x) * 0x045D9F3B) & 0xFFFFFFFF
    x = (x >> 16) ^ x
    return (x.to(torch.float64) + 0.5) / 4294967296.0 * 2.0 - 1.0


def tensor_sha256(t: torch.Tensor) -> str:
    """SHA-256 of a tensor's C-contiguous little-endian bytes (x86/ARM hosts are little-endian)."""
    t = t.detach().contiguous().cpu()
    return hashlib.sha256(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"").hexdigest()


def state_dict_from_recipe(folder: str | Path) -> OrderedDict:
    """The complete official state_dict (official key order) described by folder/recipe.json."""
    folder = Path(folder)
    recipe = json.loads((folder / "recipe.json").read_text())
    buffers_path = folder / "buffers.safetensors"
    buffers = load_file(str(buffers_path)) if buffers_path.is_file() else {}
    sd: OrderedDict = OrderedDict()
    for e in recipe["entries"]:
        name, shape, dtype = e["name"], tuple(e["shape"]), _DTYPES[e["dtype"]]
        if e["kind"] == "param":
            u = fixture_uniform(math.prod(shape), int(e["key"]))
            t = (float(e["shift"]) + float(e["scale"]) * u).to(dtype).reshape(shape)
        elif e["kind"] == "buffer":
            if name not in buffers:
                raise AssertionError(f"{buffers_path} lacks buffer {name}")
            t = buffers[name]
            assert tuple(t.shape) == shape and t.dtype == dtype, (name, t.shape, t.dtype, shape, dtype)
        else:
            raise AssertionError(f"unknown recipe kind {e['kind']!r} for {name}")
        got = tensor_sha256(t)
        if got != e["sha256"]:
            raise AssertionError(f"rebuilt {name} does not match its sha256 ({got} != {e['sha256']})")
        sd[name] = t
    return sd
