"""Training checkpoints: everything needed to continue a run as if it had never stopped.

Besides state_dicts, a module may keep state that later training steps read but that must stay out of its
state_dict (to keep an official checkpoint's keys): it then defines `training_state() -> dict` and
`load_training_state(state)`, and the loop saves that state for every such sub-module (see
`module_training_state`).

`out_dir/latest.pt` is written to a temporary name and renamed (vision_ar.io.atomic_torch_save), so a crash
during the write leaves the previous latest.pt intact. With keep_last_ckpts = k > 0 the last k checkpoints
are also kept as `ckpt_<step>.pt` (hard links to the same bytes). The file is read back with
torch.load(weights_only=True): only tensors, numbers, strings, lists, tuples and dicts are stored (the
numpy RNG state is converted to a tensor for that reason).
"""
from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from ..errors import CheckpointError
from ..io import atomic_torch_save, load_checkpoint

CKPT_FORMAT = "vision_ar.train_ckpt.v1"
LATEST = "latest.pt"
METRICS = "metrics.jsonl"


# ----------------------------------------------------------------------------------------------------
# RNG states (python, numpy, torch CPU, every CUDA device)
# ----------------------------------------------------------------------------------------------------
def seed_everything(seed: int, rank: int = 0) -> None:
    """Seed python, numpy and torch (CPU and every CUDA device) from the run's seed: everything a run draws,
    model initialisation included, follows from it. Each rank gets its own stream (seed + rank)."""
    random.seed(seed + rank)
    np.random.seed((seed + rank) % 2**32)
    torch.manual_seed(seed + rank)


def capture_rng_state() -> dict:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng_state(state: dict) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        if len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["cuda"])
        else:  # another machine shape: keep at least the current device's stream reproducible
            torch.cuda.set_rng_state(state["cuda"][torch.cuda.current_device() % len(state["cuda"])])


# ----------------------------------------------------------------------------------------------------
# Module state outside the state_dict
# ----------------------------------------------------------------------------------------------------
def module_training_state(model: torch.nn.Module) -> dict:
    """{sub-module name: its training_state()} for every sub-module that defines one."""
    return {name: m.training_state() for name, m in model.named_modules() if callable(getattr(m, "training_state", None))}


def load_module_training_state(model: torch.nn.Module, state: dict, path) -> None:
    modules = dict(model.named_modules())
    for name, sub in state.items():
        target = modules.get(name)
        if target is None or not callable(getattr(target, "load_training_state", None)):
            raise CheckpointError(f"{path} holds training state for sub-module {name!r}, which this model does not "
                                  f"have (or which keeps none): resume with the model config the run started with.")
        target.load_training_state(sub)


# ----------------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------------
def save_training_checkpoint(state: dict, out_dir: Path, step: int, keep_last: int = 0) -> Path:
    """Write latest.pt atomically; keep `keep_last` step-numbered copies (hard links) and prune older ones."""
    out_dir = Path(out_dir)
    latest = out_dir / LATEST
    atomic_torch_save({"format": CKPT_FORMAT, **state}, latest)
    if keep_last > 0:
        numbered = out_dir / f"ckpt_{step:08d}.pt"
        tmp = out_dir / f".{numbered.name}.link"
        tmp.unlink(missing_ok=True)
        try:
            os.link(latest, tmp)
        except OSError:  # file systems without hard links
            shutil.copyfile(latest, tmp)
        os.replace(tmp, numbered)
        for old in sorted(out_dir.glob("ckpt_*.pt"))[:-keep_last]:
            old.unlink(missing_ok=True)
    return latest


def remove_stale_temporaries(out_dir: Path) -> list[Path]:
    """Delete what writes interrupted by a kill left in a run folder: temporary checkpoint and metrics files
    (`.latest.pt.*.tmp`), checkpoint links, and half-written `final/` folders. Returns what was removed."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return []
    stale = []
    for pattern in (f".{LATEST}.*.tmp", f".{METRICS}.*.tmp", ".ckpt_*.pt.link", ".final.*"):
        stale += sorted(out_dir.glob(pattern))
    for p in stale:
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    return stale


def load_training_checkpoint(path: Path) -> dict:
    ckpt = load_checkpoint(path, what="training checkpoint")
    if not isinstance(ckpt, dict) or ckpt.get("format") != CKPT_FORMAT:
        raise CheckpointError(f"{path} is not a vision_ar training checkpoint (format "
                              f"{ckpt.get('format') if isinstance(ckpt, dict) else type(ckpt).__name__!r}). "
                              f"Use another out_dir, or pass resume=False to start over (it will be overwritten).")
    return ckpt
