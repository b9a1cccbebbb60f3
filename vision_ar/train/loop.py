"""The one training loop: every tokenizer and generator of vision-ar trains through `train(task, dataset, cfg)`.

    from vision_ar.train import TrainConfig, train
    train(MyTask(model), dataset, TrainConfig(out_dir="runs/x", max_steps=1000, batch_size=64))

One process on CPU or one GPU; `torchrun --nproc_per_node N script.py` for DDP (or FSDP with cfg.fsdp).
Each optimizer step:

    lr <- schedule(step)
    for each of grad_accum micro-batches:  loss = task.loss(model, batch) / grad_accum; backward
                                           (gradient all-reduce only on the last micro-batch)
    clip the global grad norm; a non-finite loss or norm skips the step (no optimizer or EMA update)
    optimizer step, EMA update
    [GAN] the same for the discriminator with task.disc_loss, from cfg.disc_start_step on
    log to metrics.jsonl every log_every steps, checkpoint to latest.pt every ckpt_every steps

Killing the process at any moment and calling `train` again with the same arguments continues from
latest.pt and, on CPU with num_workers=0, produces bit-identical weights to a run that never stopped: the
checkpoint holds the model, EMA, optimizer(s), step, every RNG state and the data position.
"""
from __future__ import annotations

import json
import math
import random
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..data.sampler import ResumableSampler, epoch_seed
from ..errors import CheckpointError, ConfigError, VisionARError
from ..io import check_writable
from . import distributed as D
from .checkpoint import (LATEST, METRICS, capture_rng_state, load_training_checkpoint, restore_rng_state,
                         save_training_checkpoint, truncate_metrics)
from .config import TrainConfig
from .ema import EMA
from .schedule import lr_multiplier, set_lr
from .task import TrainTask, default_param_groups


class NonFiniteLossError(VisionARError, FloatingPointError):
    """Training produced non-finite losses or gradients too many steps in a row."""


@dataclass
class TrainResult:
    step: int                        # optimizer steps done
    out_dir: Path
    model: nn.Module                 # the trained (raw, unwrapped) model
    ema_model: nn.Module | None      # a copy holding the EMA weights (None without EMA or under FSDP)
    last_log: dict | None            # the last metrics.jsonl record written


# ----------------------------------------------------------------------------------------------------
# Data: an endless stream of micro-batches that knows its exact (epoch, position)
# ----------------------------------------------------------------------------------------------------
class BatchStream:
    """Micro-batches from a ResumableSampler, epoch after epoch, counting what the loop really consumed.

    The position saved in checkpoints is (micro-batches consumed this epoch) x micro_batch_size, not the
    sampler's own counter, because DataLoader workers read the sampler ahead. The last incomplete batch
    of an epoch is dropped so every step sees the same batch size.
    """

    def __init__(self, dataset: Dataset, micro_batch: int, cfg: TrainConfig, info: D.DistInfo):
        self.dataset, self.micro_batch, self.cfg = dataset, micro_batch, cfg
        self.sampler = ResumableSampler(len(dataset), seed=cfg.seed, shuffle=True, rank=info.rank,
                                        world_size=info.world_size)
        if self.sampler.per_rank < micro_batch:
            raise ConfigError(f"the dataset has {len(dataset)} samples, {self.sampler.per_rank} per process, fewer "
                              f"than one micro-batch of {micro_batch}: lower batch_size or raise grad_accum.")
        self.pin = info.device.type == "cuda"
        self.epoch, self.consumed = 0, 0
        self._it = None

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.consumed * self.micro_batch,
                "micro_batch": self.micro_batch, "n": len(self.dataset), "world_size": self.sampler.world_size}

    def load_state_dict(self, state: dict) -> None:
        if state.get("n") != len(self.dataset) or state.get("micro_batch") != self.micro_batch or \
                state.get("world_size") != self.sampler.world_size:
            print(f"warning: data state saved with n={state.get('n')}, micro_batch={state.get('micro_batch')}, "
                  f"world_size={state.get('world_size')}; this run has n={len(self.dataset)}, micro_batch="
                  f"{self.micro_batch}, world_size={self.sampler.world_size}: the batch order will differ.")
        self.epoch, self.consumed = int(state["epoch"]), int(state["position"]) // self.micro_batch
        self._it = None

    def _start_iterator(self) -> None:
        if (self.consumed + 1) * self.micro_batch > self.sampler.per_rank:  # no full batch left in this epoch
            self.epoch, self.consumed = self.epoch + 1, 0
        self.sampler.set_state(self.epoch, self.consumed * self.micro_batch)
        # A private generator for the DataLoader's worker seeds: creating an iterator must not draw from the
        # global torch RNG (which drives dropout), or a resumed run would diverge from an uninterrupted one.
        g = torch.Generator().manual_seed(epoch_seed(self.cfg.seed, self.epoch) + self.consumed)
        loader = DataLoader(self.dataset, batch_size=self.micro_batch, sampler=self.sampler, drop_last=True,
                            num_workers=self.cfg.num_workers, pin_memory=self.pin, generator=g)
        self._it = iter(loader)

    def next(self) -> Any:
        if self._it is None:
            self._start_iterator()
        try:
            batch = next(self._it)
        except StopIteration:
            self.epoch, self.consumed, self._it = self.epoch + 1, 0, None
            return self.next()
        self.consumed += 1
        return batch


def to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch


# ----------------------------------------------------------------------------------------------------
# Small helpers
# ----------------------------------------------------------------------------------------------------
@contextmanager
def frozen(module: nn.Module | None):
    """Parameters of `module` do not receive gradients inside the block (the discriminator during the
    generator's backward)."""
    if module is None:
        yield
        return
    flags = [p.requires_grad for p in module.parameters()]
    module.requires_grad_(False)
    try:
        yield
    finally:
        for p, f in zip(module.parameters(), flags):
            p.requires_grad_(f)


def grad_norm_and_clip(params: list[torch.Tensor], max_norm: float) -> torch.Tensor:
    """Global L2 norm of the gradients, clipped to max_norm (0 = measure only)."""
    params = [p for p in params if p.grad is not None]
    if not params:
        return torch.zeros(())
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else float("inf"))
    return norm.full_tensor() if hasattr(norm, "full_tensor") else norm


def make_optimizer(groups: list[dict], lr: float, cfg: TrainConfig) -> torch.optim.Optimizer:
    for g in groups:
        g.setdefault("base_lr", g.get("lr", lr))
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay)


def keep_base_lrs(opt: torch.optim.Optimizer, base_lrs: list[float]) -> None:
    """After loading an optimizer state, the learning rates of THIS run's config win (a resumed run may
    change lr); the moments and step counts come from the checkpoint."""
    for g, lr in zip(opt.param_groups, base_lrs):
        g["base_lr"] = lr


def resolve_precision(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for plain fp32."""
    if cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def _finite(x: float) -> bool:
    return math.isfinite(x)


class _Window:
    """Sums of the logged values since the last log line (finite steps only)."""

    def __init__(self):
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self.steps = self.skipped = 0
        self.t0 = time.perf_counter()

    def add(self, values: dict[str, float]) -> None:
        for k, v in values.items():
            if v is not None and _finite(float(v)):
                self.sums[k] = self.sums.get(k, 0.0) + float(v)
                self.counts[k] = self.counts.get(k, 0) + 1

    def means(self) -> dict[str, float]:
        return {k: self.sums[k] / self.counts[k] for k in self.sums}


# ----------------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------------
def train(task, dataset: Dataset, cfg: TrainConfig, resume: bool = True) -> TrainResult:
    """Train `task.model` on `dataset` as `cfg` says; continue from cfg.out_dir/latest.pt when resume=True."""
    if not hasattr(task, "model") or not isinstance(task.model, nn.Module) or not callable(getattr(task, "loss", None)):
        raise ConfigError("train() needs a task with `.model` (an nn.Module) and `loss(model, batch, step)`; "
                          "see vision_ar/train/task.py")
    info = D.setup_distributed(cfg.device)
    try:
        return _train(task, dataset, cfg, resume, info)
    finally:
        D.teardown_distributed(info)


def _train(task, dataset: Dataset, cfg: TrainConfig, resume: bool, info: D.DistInfo) -> TrainResult:
    cfg.validate(info.world_size)
    out_dir = Path(cfg.out_dir)
    check_writable(out_dir / LATEST)
    device, autocast_dtype = info.device, resolve_precision(cfg, info.device)
    micro_batch = cfg.micro_batch_size(info.world_size)

    # Fresh-run seeding; a resumed run overwrites all of it with the checkpoint's RNG states below.
    random.seed(cfg.seed + info.rank)
    np.random.seed((cfg.seed + info.rank) % 2**32)
    torch.manual_seed(cfg.seed + info.rank)

    # ---- models, wrappers, optimizers ---------------------------------------------------------------
    raw = task.model.to(device).train()
    if cfg.grad_checkpointing:
        if not hasattr(raw, "set_grad_checkpointing"):
            raise ConfigError(f"grad_checkpointing=True but {type(raw).__name__} has no set_grad_checkpointing(); "
                              f"turn it off or add the method to the model.")
        raw.set_grad_checkpointing(True)
    model = D.wrap_model(raw, info, cfg.fsdp, getattr(task, "find_unused_parameters", False))
    groups = (task.param_groups(raw, cfg.weight_decay) if hasattr(task, "param_groups")
              else default_param_groups(raw, cfg.weight_decay))
    opt = make_optimizer(groups, cfg.lr, cfg)
    params = [p for g in opt.param_groups for p in g["params"]]

    disc_raw = getattr(task, "discriminator", None)
    disc = disc_opt = disc_params = None
    if disc_raw is not None:
        if not callable(getattr(task, "disc_loss", None)):
            raise ConfigError(f"{type(task).__name__} has a discriminator but no disc_loss(model, disc, batch, step)")
        disc_raw = disc_raw.to(device).train()
        disc = D.wrap_model(disc_raw, info, fsdp=False)
        disc_opt = make_optimizer(default_param_groups(disc_raw, cfg.weight_decay), cfg.disc_lr or cfg.lr, cfg)
        disc_params = [p for g in disc_opt.param_groups for p in g["params"]]

    ema = EMA(raw, cfg.ema_decay, cfg.ema_warmup) if cfg.ema_decay > 0 else None
    stream = BatchStream(dataset, micro_batch, cfg, info)

    # ---- resume ---------------------------------------------------------------------------------------
    step, nonfinite_in_row, last_ckpt_step = 0, 0, -1
    latest = out_dir / LATEST
    if resume and latest.is_file():
        ckpt = load_training_checkpoint(latest)
        D.load_model_state_dict(raw, ckpt["model"])
        base_lrs = [g["base_lr"] for g in opt.param_groups]
        D.load_optimizer_state_dict(raw, opt, ckpt["optimizer"])
        keep_base_lrs(opt, base_lrs)
        if ema is not None:
            if ckpt.get("ema") is None:
                raise CheckpointError(f"{latest} has no EMA but ema_decay={cfg.ema_decay}: resume with "
                                      f"ema_decay=0, or start a new out_dir.")
            ema.load_state_dict(ckpt["ema"])
        if disc is not None:
            if ckpt.get("discriminator") is None:
                raise CheckpointError(f"{latest} has no discriminator state but the task has a discriminator.")
            D.load_model_state_dict(disc_raw, ckpt["discriminator"])
            disc_base = [g["base_lr"] for g in disc_opt.param_groups]
            disc_opt.load_state_dict(ckpt["disc_optimizer"])
            keep_base_lrs(disc_opt, disc_base)
        stream.load_state_dict(ckpt["data"])
        step = last_ckpt_step = int(ckpt["step"])
        nonfinite_in_row = int(ckpt.get("nonfinite_in_row", 0))
        rng = ckpt["rng"]
        if len(rng) == info.world_size:
            restore_rng_state(rng[info.rank])
        elif info.is_main:
            print(f"warning: {latest} was written by {len(rng)} processes, this run has {info.world_size}: "
                  f"random streams restart from the seed (the run is not an exact continuation).")
        if info.is_main:
            truncate_metrics(out_dir, step)
            print(f"resumed from {latest} at step {step}")
        del ckpt

    # ---- checkpointing ----------------------------------------------------------------------------------
    def ema_model() -> nn.Module | None:
        if ema is None or D.is_fsdp(raw):
            return None
        return ema.make_model(raw)

    def save_checkpoint() -> None:
        # Every rank takes part (FSDP gathers, RNG states of every rank); rank 0 writes; the others wait.
        state = {
            "step": step,
            "model": D.model_state_dict(model, raw),
            "optimizer": D.optimizer_state_dict(raw, opt),
            "ema": ema.state_dict() if ema is not None else None,
            "discriminator": D.model_state_dict(disc, disc_raw) if disc is not None else None,
            "disc_optimizer": disc_opt.state_dict() if disc is not None else None,
            "data": stream.state_dict(),
            "rng": D.all_gather_object(capture_rng_state(), info),
            "nonfinite_in_row": nonfinite_in_row,
            "config": cfg.to_dict(),
            "world_size": info.world_size,
        }
        if info.is_main:
            save_training_checkpoint(state, out_dir, step, cfg.keep_last_ckpts)
            hook = getattr(task, "on_checkpoint", None)
            if hook is not None and getattr(hook, "__func__", None) is not TrainTask.on_checkpoint:
                task.on_checkpoint(step, out_dir, raw, ema_model())  # (the EMA copy is built only when needed)
                raw.train()
        D.barrier(info)

    # ---- one optimizer step -------------------------------------------------------------------------------
    autocast = (lambda: torch.autocast(device.type, dtype=autocast_dtype)) if autocast_dtype else nullcontext

    def run_phase(net: nn.Module, loss_fn, micro_batches: list, opt_: torch.optim.Optimizer,
                  params_: list[torch.Tensor], prefix: str) -> tuple[bool, dict]:
        """Accumulate gradients over the micro-batches, clip, and step unless non-finite."""
        loss_sum, metric_sums, used = torch.zeros((), device=device), {}, 0
        for i, mb in enumerate(micro_batches):
            with D.maybe_no_sync(net, skip_sync=i < len(micro_batches) - 1), autocast():
                loss, metrics = loss_fn(mb)
            if loss is None:  # the task has nothing to train this step (e.g. before its discriminator starts)
                continue
            (loss / len(micro_batches)).backward()
            loss_sum += loss.detach().float()
            used += 1
            for k, v in (metrics or {}).items():
                metric_sums[k] = metric_sums.get(k, 0.0) + float(v)
        if used == 0:
            opt_.zero_grad(set_to_none=True)
            return True, {}
        norm = grad_norm_and_clip(params_, cfg.grad_clip)
        # One sync per step: the skip decision must be the same on every rank.
        both = D.all_reduce_mean(torch.stack([loss_sum / len(micro_batches), norm.float().to(device)]), info)
        loss_val, norm_val = both.tolist()
        ok = _finite(loss_val) and _finite(norm_val)
        if ok:
            opt_.step()
        opt_.zero_grad(set_to_none=True)
        values = {f"{prefix}loss": loss_val, f"{prefix}grad_norm": norm_val}
        values.update({k: v / len(micro_batches) for k, v in metric_sums.items()})
        return ok, values

    # ---- main loop -----------------------------------------------------------------------------------------
    progress = None
    if info.is_main and cfg.progress:
        from tqdm import tqdm
        progress = tqdm(total=cfg.max_steps, initial=step, desc=f"train {out_dir.name}", dynamic_ncols=True)
    window, last_log = _Window(), None
    metrics_path = out_dir / METRICS

    while step < cfg.max_steps:
        lr = set_lr(opt, lr_multiplier(step, cfg))
        micro_batches = [to_device(stream.next(), device) for _ in range(cfg.grad_accum)]

        with frozen(disc_raw):
            ok, values = run_phase(model, lambda mb: task.loss(model, mb, step), micro_batches, opt, params, "")
        disc_ok = True
        if disc is not None and step >= cfg.disc_start_step and ok:
            set_lr(disc_opt, lr_multiplier(step, cfg))
            disc_ok, disc_values = run_phase(disc, lambda mb: task.disc_loss(raw, disc, mb, step), micro_batches,
                                             disc_opt, disc_params, "disc_")
            values.update(disc_values)
        step += 1

        if ok and ema is not None and step % cfg.ema_every == 0:
            ema.update(raw)
        if ok and disc_ok:
            nonfinite_in_row = 0
            window.add(values)
        else:
            nonfinite_in_row += 1
            window.skipped += 1
            if info.is_main:
                print(f"warning: non-finite {'loss/grad norm' if not ok else 'discriminator loss/grad norm'} at "
                      f"step {step}: step skipped ({nonfinite_in_row} in a row)")
            if nonfinite_in_row >= cfg.max_nonfinite_in_row:
                raise NonFiniteLossError(
                    f"{nonfinite_in_row} non-finite steps in a row (last at step {step}, values {values}). Training "
                    f"diverged: lower lr, raise warmup_steps, keep grad_clip > 0, or try precision='fp32'. "
                    f"{out_dir / LATEST} holds the last good checkpoint.")
        window.steps += 1
        if progress is not None:
            progress.update(1)

        if step % cfg.log_every == 0 or step == cfg.max_steps:
            elapsed = max(time.perf_counter() - window.t0, 1e-9)
            record = {"step": step, "lr": lr, **window.means(), "skipped": window.skipped,
                      "throughput": cfg.batch_size * window.steps / elapsed}
            record.setdefault("loss", None)
            if info.is_main:
                with open(metrics_path, "a") as f:
                    f.write(json.dumps(record) + "\n")
                if progress is not None:
                    progress.set_postfix(loss=record["loss"], lr=f"{lr:.2e}")
            last_log, window = record, _Window()

        if step % cfg.ckpt_every == 0 or step == cfg.max_steps:
            save_checkpoint()
            last_ckpt_step = step

    if progress is not None:
        progress.close()
    if last_ckpt_step != step:  # resumed at max_steps with nothing left to do, or max_steps=0
        save_checkpoint()

    # ---- final model -----------------------------------------------------------------------------------
    final_ema = ema_model()
    if info.is_main and hasattr(raw, "save_pretrained") and not D.is_fsdp(raw):
        (final_ema if final_ema is not None else raw).save_pretrained(out_dir / "final")
    elif D.is_fsdp(raw) and hasattr(raw, "save_pretrained") and hasattr(raw, "config"):
        _save_final_fsdp(raw, ema, out_dir, info)
    D.barrier(info)
    return TrainResult(step=step, out_dir=out_dir, model=raw, ema_model=final_ema, last_log=last_log)


def _save_final_fsdp(raw: nn.Module, ema: EMA | None, out_dir: Path, info: D.DistInfo) -> None:
    """Under FSDP the weights are sharded: gather them (all ranks) into a fresh unsharded copy on rank 0."""
    full = ema.full_state_dict() if ema is not None else None
    sd = D.model_state_dict(raw, raw)
    if info.is_main:
        fresh = type(raw)(raw.config)
        if full is not None:
            sd = {**sd, **{k: v.to(sd[k].dtype).cpu() for k, v in full.items()}}
        fresh.load_state_dict(sd)
        fresh.save_pretrained(out_dir / "final")
