"""Generate N evaluation samples with any pipeline, on one CPU process or across GPUs with torchrun.

Determinism does not depend on the number of workers
----------------------------------------------------
The N global indices 0..N-1 are cut into fixed chunks of `chunk_size` consecutive indices (the last may be
shorter). A chunk is the unit of work, of randomness and of storage:

- labels: index i gets class `i % num_classes` (N = 50,000 and 1,000 classes -> 50 per class);
- randomness: the chunk starting at global index s is drawn in ONE pipeline call with a fresh
  `torch.Generator().manual_seed(chunk_seed(base_seed, s))`, the seed mixed from (base_seed, s) by numpy's
  SeedSequence. Batched samplers draw their noise for the whole batch, so per-image randomness is only
  reproducible for a fixed batch composition; fixing the chunks (not the worker count) gives exactly that;
- work split: chunk c goes to rank c % world_size. Which worker draws a chunk changes nothing in it.
  (The process setup is vision_ar/distributed.py, the same as training's.)

So the same (pipeline, settings, N, chunk_size, base_seed) give the same images with 1 or 8 workers. The
run's manifest records the settings (chunk size included) and the sha256 of every component's weights; a
resume with other settings or other weights is refused, so one run never mixes two models. The manifest is
written with the first shard: settings the pipeline rejects leave nothing in the folder.

Crash safety
------------
Each chunk is one shard file `shard_<start>-<end>.npz` (uint8 images B x H x W x 3, labels, indices), written
to a temporary name and renamed, so a shard on disk is complete. A killed run is restarted with the same
command: finished shards are skipped. `export_adm_npz` checks that every index 0..N-1 is present exactly once
before writing the ADM layout (`arr_0` uint8 N x H x W x 3, `arr_1` labels).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
import numpy as np
import torch
from torch import nn

from ..errors import ConfigError
from ..io import atomic_path, atomic_write_text, check_writable
from .images import npz_array_info, to_uint8_nchw, write_adm_npz

MANIFEST = "manifest.json"
SHARD_RE = re.compile(r"^shard_(\d+)-(\d+)\.npz$")
LABEL_RULE = "label(i) = i % num_classes"
SEED_RULE = "chunk [s, s+chunk_size) drawn in one call with torch.Generator().manual_seed(SeedSequence([base_seed, s]))"


@dataclass
class SampleSpec:
    """Everything the samples depend on (besides the pipeline's weights)."""

    num: int = 50_000
    num_classes: int = 1000
    chunk_size: int = 50
    base_seed: int = 0
    model: str = ""
    pipeline_kwargs: dict = field(default_factory=dict)  # guidance_scale, top_k, ... passed to every call

    def __post_init__(self):
        if self.num < 1 or self.num_classes < 1 or self.chunk_size < 1:
            raise ConfigError(f"num, num_classes and chunk_size must be >= 1, got {self.num}, {self.num_classes}, "
                              f"{self.chunk_size}")
        if self.base_seed < 0:
            raise ConfigError(f"base seed must be >= 0, got {self.base_seed}")

    def manifest(self) -> dict:
        return {**asdict(self), "label_rule": LABEL_RULE, "seed_rule": SEED_RULE}


# ----------------------------------------------------------------------------------------------------
# The determinism rules
# ----------------------------------------------------------------------------------------------------
def class_labels(start: int, end: int, num_classes: int) -> list[int]:
    return [i % num_classes for i in range(start, end)]


def chunk_ranges(num: int, chunk_size: int) -> list[tuple[int, int]]:
    return [(s, min(s + chunk_size, num)) for s in range(0, num, chunk_size)]


def chunk_seed(base_seed: int, start: int) -> int:
    """A well-mixed 63-bit seed from (base_seed, first global index of the chunk)."""
    return int(np.random.SeedSequence([int(base_seed), int(start)]).generate_state(1, dtype=np.uint64)[0] >> 1)


def shard_path(out_dir: Path, start: int, end: int) -> Path:
    return Path(out_dir) / f"shard_{start:08d}-{end:08d}.npz"


# ----------------------------------------------------------------------------------------------------
# Manifest: the settings and the weights the samples on disk were made with
# ----------------------------------------------------------------------------------------------------
def module_sha256(module: nn.Module) -> str:
    """sha256 over a module's state_dict (names, dtypes, shapes and bytes, in name order)."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().to("cpu").contiguous().reshape(-1)
        h.update(f"{name}:{t.dtype}:{t.numel()};".encode())
        if t.numel():
            h.update(memoryview(t.view(torch.uint8).numpy()))
    return h.hexdigest()


def component_hashes(pipe) -> dict[str, str]:
    """{component name: sha256 of its weights} for every nn.Module a pipeline holds (tokenizer, generator...)."""
    return {name: module_sha256(m) for name, m in sorted(vars(pipe).items()) if isinstance(m, nn.Module)}


def run_manifest(spec: SampleSpec, weights: dict[str, str]) -> dict:
    return {**spec.manifest(), "weights": weights}


def prepare_run_dir(out_dir: str | os.PathLike, manifest: dict) -> str:
    """Check, before any sampling, that the run folder can hold these samples: it is writable, and samples
    already there were made with the same settings and the same weights. Returns the manifest's text, which
    `write_manifest` writes with the first shard (so a setting the pipeline rejects leaves nothing behind)."""
    out_dir = Path(out_dir)
    check_writable(out_dir / MANIFEST)
    try:
        text = json.dumps(manifest, indent=2, sort_keys=True, allow_nan=False)
    except ValueError:
        raise ConfigError(f"the sampling settings hold a non-finite number ({manifest.get('pipeline_kwargs')}): "
                          f"give finite values") from None
    want = json.loads(text)
    path = out_dir / MANIFEST
    if path.is_file():
        have = json.loads(path.read_text())
        diff = sorted(k for k in set(want) | set(have) if want.get(k) != have.get(k))
        if "weights" in diff and "weights" not in have:
            raise ConfigError(f"{out_dir} holds samples whose manifest records no weights (made by an older "
                              f"vision-ar), so a resume cannot tell whether they come from this model: choose a new "
                              f"output folder.")
        if "weights" in diff:
            old, new = have["weights"], want["weights"]
            parts = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            raise ConfigError(f"{out_dir} holds samples made with other weights (component(s) {', '.join(parts)} "
                              f"differ from the manifest's sha256): a resume would mix two models. Use the "
                              f"weights the run started with, or choose a new output folder.")
        if diff:
            details = ", ".join(f"{k}: {have.get(k)!r} on disk vs {want.get(k)!r} now" for k in diff)
            raise ConfigError(f"{out_dir} holds samples made with other settings ({details}). Resume with the same "
                              f"settings or choose a new output folder.")
    return text


def write_manifest(out_dir: Path, text: str) -> None:
    # Every rank may get here at once; each writes identical bytes by atomic rename, so that is harmless.
    if not (out_dir / MANIFEST).is_file():
        atomic_write_text(text, out_dir / MANIFEST)


# ----------------------------------------------------------------------------------------------------
# Generation
# ----------------------------------------------------------------------------------------------------
def _write_shard(path: Path, images: np.ndarray, labels: list[int], start: int) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, images=images, labels=np.asarray(labels, dtype=np.int64),
                     indices=np.arange(start, start + len(labels), dtype=np.int64))


def generate_samples(pipe, out_dir: str | os.PathLike, spec: SampleSpec, rank: int = 0, world_size: int = 1,
                     generator_device: str = "cpu", image_size: int | None = None, progress: bool = True) -> dict:
    """Draw this rank's chunks that are not on disk yet. Returns {'written': n, 'skipped': n} (chunks)."""
    if not 0 <= rank < world_size:
        raise ConfigError(f"rank {rank} is outside world size {world_size}")
    num_classes = getattr(pipe, "num_classes", None)
    if num_classes is not None and num_classes != spec.num_classes:
        raise ConfigError(f"the pipeline has {num_classes} classes but the sample spec says {spec.num_classes}")
    out_dir = Path(out_dir)
    manifest = prepare_run_dir(out_dir, run_manifest(spec, component_hashes(pipe)))
    mine = chunk_ranges(spec.num, spec.chunk_size)[rank::world_size]
    todo = [(s, e) for s, e in mine if not shard_path(out_dir, s, e).is_file()]
    from tqdm.auto import tqdm

    done = 0
    with tqdm(total=sum(e - s for s, e in mine), initial=sum(e - s for s, e in mine) - sum(e - s for s, e in todo),
              desc=f"sampling (rank {rank}/{world_size})", unit="img", disable=not progress) as bar:
        for start, end in todo:
            labels = class_labels(start, end, spec.num_classes)
            generator = torch.Generator(device=generator_device).manual_seed(chunk_seed(spec.base_seed, start))
            out = pipe(class_labels=labels, generator=generator, output_type="pt", **spec.pipeline_kwargs)
            images = to_uint8_nchw(out.images, name=f"pipeline output for indices {start}..{end - 1}",
                                   expected_size=image_size)
            if images.shape[0] != end - start:
                raise ConfigError(f"the pipeline returned {images.shape[0]} images for {end - start} class labels")
            write_manifest(out_dir, manifest)  # only now that the pipeline took the settings
            _write_shard(shard_path(out_dir, start, end), images.permute(0, 2, 3, 1).cpu().numpy(), labels, start)
            done += 1
            bar.update(end - start)
    return {"written": done, "skipped": len(mine) - len(todo)}


# ----------------------------------------------------------------------------------------------------
# Checking and export
# ----------------------------------------------------------------------------------------------------
def _ranges_text(idx: np.ndarray, limit: int = 5) -> str:
    if idx.size == 0:
        return "none"
    runs, start = [], idx[0]
    for a, b in zip(idx[:-1], idx[1:]):
        if b != a + 1:
            runs.append((start, a))
            start = b
    runs.append((start, idx[-1]))
    text = ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in runs[:limit])
    return text + (f" and {len(runs) - limit} more ranges" if len(runs) > limit else "")


def check_complete(out_dir: str | os.PathLike, spec: SampleSpec) -> list[Path]:
    """The shards covering 0..num-1 in order; raise unless every index appears exactly once."""
    out_dir = Path(out_dir)
    shards = []
    for p in out_dir.iterdir():
        m = SHARD_RE.match(p.name)
        if m:
            shards.append((int(m.group(1)), int(m.group(2)), p))
    shards.sort()
    count = np.zeros(spec.num, dtype=np.int64)
    for start, end, p in shards:
        if not (0 <= start < end <= spec.num):
            raise ConfigError(f"{p} covers indices {start}..{end - 1}, outside 0..{spec.num - 1}: it belongs to "
                              f"another run; remove it")
        count[start:end] += 1
    missing, dup = np.nonzero(count == 0)[0], np.nonzero(count > 1)[0]
    if missing.size or dup.size:
        raise ConfigError(f"{out_dir} does not hold every sample exactly once: missing {missing.size} "
                          f"({_ranges_text(missing)}), duplicated {dup.size} ({_ranges_text(dup)}). Run the "
                          f"sampling command again to fill the gaps (finished shards are kept).")
    return [p for _, _, p in shards]


def export_adm_npz(out_dir: str | os.PathLike, spec: SampleSpec, out_path: str | os.PathLike,
                   progress: bool = True) -> Path:
    """Write all samples of a finished run as the ADM layout (arr_0 uint8 N x H x W x 3, arr_1 labels)."""
    paths = check_complete(out_dir, spec)
    labels, size = [], None
    for p in paths:  # first pass: indices, labels and image shapes only (the images are not read here)
        m = SHARD_RE.match(p.name)
        start, end = int(m.group(1)), int(m.group(2))
        with np.load(p, allow_pickle=False) as z:
            idx, lab = z["indices"], z["labels"]
        shape, dtype = npz_array_info(p, "images")
        if not np.array_equal(idx, np.arange(start, end)) or lab.shape != idx.shape or shape[0] != idx.size:
            raise ConfigError(f"{p} does not hold indices {start}..{end - 1} as its name says; it is corrupt: delete "
                              f"it and run the sampling command again")
        if size is None:
            size = shape[1:3]
        elif shape[1:3] != size:
            raise ConfigError(f"samples have different sizes ({size} and {shape[1:3]}); the run mixes settings")
        labels.append(lab)

    def chunks():
        from tqdm.auto import tqdm

        for p in tqdm(paths, desc=f"export {out_path}", unit="shard", disable=not progress):
            with np.load(p, allow_pickle=False) as z:
                yield z["images"]

    return write_adm_npz(out_path, chunks(), spec.num, int(size[0]), int(size[1]), labels=np.concatenate(labels))
