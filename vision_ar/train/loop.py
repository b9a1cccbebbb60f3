"""The one training loop: every tokenizer and generator of vision-ar trains through `train(task, dataset, cfg)`.

    from vision_ar.train import TrainConfig, train
    train(MyTask(model), dataset, TrainConfig(out_dir="runs/x", max_steps=1000, batch_size=64))

One process on CPU or one GPU; `torchrun --nproc_per_node N script.py` for DDP (or FSDP with cfg.fsdp).
Each optimizer step (`train_step`):

    lr <- schedule(step)
    for each of grad_accum micro-batches:  loss = task.loss(model, batch) / grad_accum; backward
                                           (gradient all-reduce only on the last micro-batch)
    clip the global grad norm; a non-finite loss or norm skips the step (no optimizer or EMA update)
    optimizer step, EMA update
    [GAN] the same for the discriminator with task.disc_loss, once gan_started(task, step)
    log to metrics.jsonl every log_every steps, checkpoint to latest.pt every ckpt_every steps

Killing the process at any moment and calling `train` again with the same arguments continues from
latest.pt and, on CPU with num_workers=0, produces bit-identical weights to a run that never stopped: the
checkpoint holds everything a step reads: the model and discriminator (state_dicts plus the state their
modules keep outside them, `training_state()`), EMA, optimizer(s), step, every RNG state, the data position,
the non-finite counter and the sums of the metrics line in progress.

Map of this file: the run's state (`Player`, `Run`) | building it | resuming it | checkpoints | one step |
the loop (`train`) | the final model.
"""
from __future__ import annotations

import functools
import math
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torch.utils.data import Dataset

from ..distributed import (DistInfo, all_gather_object, all_reduce_mean, barrier, env_ranks, resolve_device,
                           setup_distributed, teardown_distributed)
from ..errors import CheckpointError, ConfigError, VisionARError
from ..io import check_writable
from . import distributed as D
from .batches import BatchStream, check_enough_samples, to_device
from .checkpoint import (LATEST, METRICS, capture_rng_state, load_module_training_state, load_training_checkpoint,
                         module_training_state, remove_stale_temporaries, restore_rng_state, save_training_checkpoint,
                         seed_everything)
from .config import TrainConfig
from .ema import EMA
from .metrics_log import Window, append_record, truncate_metrics
from .schedule import lr_multiplier, set_lr
from .settings import RESUME_LOG, check_resume_settings, record_changes, run_settings
from .task import TrainTask, default_param_groups, frozen, gan_started


class NonFiniteLossError(VisionARError, FloatingPointError):
    """Training produced non-finite losses or gradients too many steps in a row."""


@dataclass
class TrainResult:
    step: int                        # optimizer steps done
    out_dir: Path
    model: nn.Module                 # the trained (raw, unwrapped) model
    ema_model: nn.Module | None      # a copy holding the EMA weights (None without EMA or under FSDP)
    last_log: dict | None            # the last metrics.jsonl record written
    finished: bool = True            # False: paused at cfg.pause_at_step (latest.pt written, no final/)


# ----------------------------------------------------------------------------------------------------
# The run's state: everything a step reads or writes, and what a checkpoint saves
# ----------------------------------------------------------------------------------------------------
@dataclass
class Player:
    """One trained network with its optimizer: the model (tokenizer / generator) or the GAN discriminator."""

    raw: nn.Module                   # the user's module
    net: nn.Module                   # what forward is called on: the DDP/FSDP wrapper, or `raw`
    opt: torch.optim.Optimizer
    params: list[torch.Tensor]       # the optimizer's parameters (gradient clipping)


@dataclass
class Run:
    cfg: TrainConfig
    info: DistInfo
    out_dir: Path
    model: Player
    disc: Player | None              # the GAN discriminator, when the task has one
    ema: EMA | None
    stream: BatchStream
    window: Window                   # logged values since the last metrics line
    step: int = 0                    # optimizer steps done
    nonfinite_in_row: int = 0
    last_log: dict | None = None


# ----------------------------------------------------------------------------------------------------
# Building the run
# ----------------------------------------------------------------------------------------------------
def check_task(task) -> None:
    if not hasattr(task, "model") or not isinstance(task.model, nn.Module) or not callable(getattr(task, "loss", None)):
        raise ConfigError("train() needs a task with `.model` (an nn.Module) and `loss(model, batch, step)`; "
                          "see vision_ar/train/task.py")
    if getattr(task, "discriminator", None) is not None and not callable(getattr(task, "disc_loss", None)):
        raise ConfigError(f"{type(task).__name__} has a discriminator but no disc_loss(model, disc, batch, step)")


def check_before_writing(cfg: TrainConfig, num_samples: int) -> None:
    """What train() checks before its first step, for callers that write files (a token cache) before calling
    it: a run that cannot start must fail before it leaves anything behind."""
    _, world_size, local_rank = env_ranks()
    cfg.validate(world_size)
    resolve_device(cfg.device, local_rank)
    check_enough_samples(num_samples, world_size, cfg.micro_batch_size(world_size))


def make_optimizer(groups: list[dict], lr: float, cfg: TrainConfig) -> torch.optim.Optimizer:
    for g in groups:
        g.setdefault("base_lr", g.get("lr", lr))
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay)


def build_model_player(task, cfg: TrainConfig, info: DistInfo) -> Player:
    raw = task.model.to(info.device).train()
    if cfg.grad_checkpointing:
        if not hasattr(raw, "set_grad_checkpointing"):
            raise ConfigError(f"grad_checkpointing=True but {type(raw).__name__} has no set_grad_checkpointing(); "
                              f"turn it off or add the method to the model.")
        raw.set_grad_checkpointing(True)
    net = D.wrap_model(raw, info, cfg.fsdp, getattr(task, "find_unused_parameters", False))
    groups = (task.param_groups(raw, cfg.weight_decay) if hasattr(task, "param_groups")
              else default_param_groups(raw, cfg.weight_decay))
    opt = make_optimizer(groups, cfg.lr, cfg)
    return Player(raw, net, opt, [p for g in opt.param_groups for p in g["params"]])


def build_disc_player(task, cfg: TrainConfig, info: DistInfo) -> Player | None:
    raw = getattr(task, "discriminator", None)
    if raw is None:
        return None
    raw = raw.to(info.device).train()
    net = D.wrap_model(raw, info, fsdp=False)
    opt = make_optimizer(default_param_groups(raw, cfg.weight_decay), cfg.disc_lr or cfg.lr, cfg)
    return Player(raw, net, opt, [p for g in opt.param_groups for p in g["params"]])


def build_run(task, dataset: Dataset, cfg: TrainConfig, info: DistInfo, out_dir: Path) -> Run:
    model = build_model_player(task, cfg, info)
    disc = build_disc_player(task, cfg, info)
    ema = EMA(model.raw, cfg.ema_decay, cfg.ema_warmup) if cfg.ema_decay > 0 else None
    stream = BatchStream(dataset, cfg.micro_batch_size(info.world_size), cfg.seed, cfg.num_workers,
                         info.rank, info.world_size, pin_memory=info.device.type == "cuda")
    return Run(cfg, info, out_dir, model, disc, ema, stream, Window())


# ----------------------------------------------------------------------------------------------------
# Resuming
# ----------------------------------------------------------------------------------------------------
def load_optimizer_keeping_lrs(player: Player, state: dict, fsdp_aware: bool = True) -> None:
    """Load an optimizer state; the learning rates of THIS run's config win (a resumed run may change lr),
    the moments and step counts come from the checkpoint."""
    base_lrs = [g["base_lr"] for g in player.opt.param_groups]
    if fsdp_aware:
        D.load_optimizer_state_dict(player.raw, player.opt, state)
    else:
        player.opt.load_state_dict(state)
    for g, lr in zip(player.opt.param_groups, base_lrs):
        g["base_lr"] = lr


def restore_run(run: Run, ckpt: dict, path: Path) -> None:
    """Put the checkpoint's models, optimizers, EMA, data position, counters and RNG states into `run`."""
    D.load_model_state_dict(run.model.raw, ckpt["model"])
    load_optimizer_keeping_lrs(run.model, ckpt["optimizer"])
    if run.ema is not None:
        if ckpt.get("ema") is None:
            raise CheckpointError(f"{path} has no EMA but ema_decay={run.cfg.ema_decay}: resume with "
                                  f"ema_decay=0, or start a new out_dir.")
        run.ema.load_state_dict(ckpt["ema"])
    if run.disc is not None:
        if ckpt.get("discriminator") is None:
            raise CheckpointError(f"{path} has no discriminator state but the task has a discriminator.")
        D.load_model_state_dict(run.disc.raw, ckpt["discriminator"])
        load_optimizer_keeping_lrs(run.disc, ckpt["disc_optimizer"], fsdp_aware=False)
    modules = ckpt.get("module_state", {})
    load_module_training_state(run.model.raw, modules.get("model", {}), path)
    if run.disc is not None:
        load_module_training_state(run.disc.raw, modules.get("discriminator", {}), path)
    run.stream.load_state_dict(ckpt["data"])
    if ckpt.get("log_window") is not None:
        run.window.load_state_dict(ckpt["log_window"])
    run.step = int(ckpt["step"])
    run.nonfinite_in_row = int(ckpt.get("nonfinite_in_row", 0))
    rng, info = ckpt["rng"], run.info
    if len(rng) == info.world_size:
        restore_rng_state(rng[info.rank])
    elif info.is_main:
        print(f"warning: {path} was written by {len(rng)} processes, this run has {info.world_size}: "
              f"random streams restart from the seed (the run is not an exact continuation).")


def resume_run(run: Run, task) -> None:
    """Continue from latest.pt: refuse changed settings unless allowed (and record accepted changes)."""
    path = run.out_dir / LATEST
    ckpt = load_training_checkpoint(path)
    now = run_settings(task, run.cfg, len(run.stream.dataset), autocast_name(run))
    changes = check_resume_settings(ckpt.get("settings"), now, run.cfg.allow_changed_settings, path)
    restore_run(run, ckpt, path)
    if run.info.is_main:
        truncate_metrics(run.out_dir / METRICS, run.step)  # the lines logged after it are logged again
        if changes:
            record_changes(run.out_dir, run.step, changes)
            print(f"settings changed on resume (recorded in {run.out_dir / RESUME_LOG}): "
                  + ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changes.items()))
        print(f"resumed from {path} at step {run.step}")


def start_run_folder(run: Run, resuming: bool) -> None:
    """Rank 0 clears what a killed run left behind: temporary files of interrupted writes, and, for a fresh
    start, the metrics lines of a run that never reached its first checkpoint (they would be logged twice)."""
    if not run.info.is_main:
        return
    for p in remove_stale_temporaries(run.out_dir):
        print(f"removed {p} (left by an interrupted write)")
    metrics = run.out_dir / METRICS
    if not resuming and metrics.is_file() and metrics.stat().st_size:
        print(f"note: {metrics} holds lines of a run without a checkpoint to resume from: starting it over")
        truncate_metrics(metrics, 0)


# ----------------------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------------------
def ema_model(run: Run) -> nn.Module | None:
    """A copy of the model holding the EMA weights (None without EMA, or under FSDP)."""
    if run.ema is None or D.is_fsdp(run.model.raw):
        return None
    return run.ema.make_model(run.model.raw)


def checkpoint_state(run: Run, task) -> dict:
    """Every rank takes part (FSDP gathers, the RNG states of every rank); only rank 0 needs the result."""
    m, d = run.model, run.disc
    return {
        "step": run.step,
        "model": D.model_state_dict(m.net, m.raw),
        "optimizer": D.optimizer_state_dict(m.raw, m.opt),
        "ema": run.ema.state_dict() if run.ema is not None else None,
        "discriminator": D.model_state_dict(d.net, d.raw) if d is not None else None,
        "disc_optimizer": d.opt.state_dict() if d is not None else None,
        "data": run.stream.state_dict(),
        "rng": all_gather_object(capture_rng_state(), run.info),
        "nonfinite_in_row": run.nonfinite_in_row,
        "module_state": {"model": module_training_state(m.raw),
                         "discriminator": module_training_state(d.raw) if d is not None else {}},
        "log_window": run.window.state_dict(),
        "config": run.cfg.to_dict(),
        "settings": run_settings(task, run.cfg, len(run.stream.dataset), autocast_name(run)),
        "world_size": run.info.world_size,
    }


def save_checkpoint(run: Run, task) -> None:
    """Write latest.pt (rank 0), then call the task's on_checkpoint hook; the other ranks wait."""
    state = checkpoint_state(run, task)
    if run.info.is_main:
        save_training_checkpoint(state, run.out_dir, run.step, run.cfg.keep_last_ckpts)
        hook = getattr(task, "on_checkpoint", None)
        if hook is not None and getattr(hook, "__func__", None) is not TrainTask.on_checkpoint:
            task.on_checkpoint(run.step, run.out_dir, run.model.raw, ema_model(run))  # EMA copy only when needed
            run.model.raw.train()
    barrier(run.info)


# ----------------------------------------------------------------------------------------------------
# One optimizer step
# ----------------------------------------------------------------------------------------------------
def autocast_name(run: Run) -> str:
    """'bf16' or 'fp32': what this run's `precision` resolves to here (recorded in checkpoints, compared on resume)."""
    return "bf16" if resolve_precision(run.cfg, run.info.device) is torch.bfloat16 else "fp32"


def resolve_precision(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for plain fp32 (resolved once per run and device, printed once).

    'auto': bf16 on CUDA; on a CPU bf16 only where it measurably runs faster than fp32 (AVX512-BF16 / AMX
    hardware; on an AVX2-only CPU torch emulates bf16 hundreds of times slower, so auto trains in fp32 there).
    'bf16' asked on a CPU that emulates it runs, with a warning saying what the CPU runs."""
    return _resolved_precision(cfg.precision, device.type)


@functools.lru_cache(maxsize=None)
def _resolved_precision(requested: str, device_type: str) -> torch.dtype | None:
    if requested == "fp32":
        return None
    if device_type == "cuda":
        return torch.bfloat16
    fast, why = _cpu_runs_bf16_natively() if device_type == "cpu" else (False, f"no bf16 autocast on {device_type}")
    if requested == "bf16":
        if not fast:  # the user's explicit choice wins, but it should know the cost
            print(f"warning: precision=bf16: {why}; training will be far slower than fp32 (--set precision=auto "
                  f"or fp32)", file=sys.stderr, flush=True)
        return torch.bfloat16
    dtype = torch.bfloat16 if fast else None
    if requested == "auto":
        print(f"training precision auto -> {'bf16 autocast' if fast else 'fp32'} on {device_type} ({why})",
              flush=True)  # stdout: stderr is for errors and warnings
    return dtype


def _cpu_runs_bf16_natively() -> tuple[bool, str]:
    """(bf16 runs natively here, why). A capability, not a timing: a killed run and its resume must choose the
    same, and a timing on a shared machine can flip. Measured on the project's CPUs (2 threads): AVX512-BF16/AMX
    bf16 matmul ~413 GFLOP/s vs fp32 ~146; AVX2 bf16 emulated at ~0.3 GFLOP/s vs fp32 ~105."""
    from ..precision import cpu_capability, cpu_has_native_bf16

    if not cpu_has_native_bf16():
        return False, f"CPU capability {cpu_capability()} has no AVX512-BF16 / AMX: bf16 would be emulated"
    return True, f"CPU capability {cpu_capability()} with native bf16 (AVX512-BF16 / AMX)"


def grad_norm_and_clip(params: list[torch.Tensor], max_norm: float) -> torch.Tensor:
    """Global L2 norm of the gradients, clipped to max_norm (0 = measure only)."""
    params = [p for p in params if p.grad is not None]
    if not params:
        return torch.zeros(())
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else float("inf"))
    return norm.full_tensor() if hasattr(norm, "full_tensor") else norm


def optimizer_step(run: Run, player: Player, loss_fn: Callable, micro_batches: list, prefix: str) -> tuple[bool, dict]:
    """Accumulate `loss_fn`'s gradients over the micro-batches, clip, and step unless non-finite.

    Returns (finite, logged values). A None loss (the task has nothing to train this step) contributes nothing.
    """
    device, n = run.info.device, len(micro_batches)
    dtype = resolve_precision(run.cfg, device)
    autocast = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype else nullcontext
    loss_sum, metric_sums, used = torch.zeros((), device=device), {}, 0
    for i, mb in enumerate(micro_batches):
        with D.maybe_no_sync(player.net, skip_sync=i < n - 1), autocast():
            loss, metrics = loss_fn(mb)
        if loss is None:
            continue
        (loss / n).backward()
        loss_sum += loss.detach().float()
        used += 1
        for k, v in (metrics or {}).items():
            metric_sums[k] = metric_sums.get(k, 0.0) + float(v)
    if used == 0:
        player.opt.zero_grad(set_to_none=True)
        return True, {}
    norm = grad_norm_and_clip(player.params, run.cfg.grad_clip)
    # One sync per step: the skip decision must be the same on every rank.
    both = all_reduce_mean(torch.stack([loss_sum / n, norm.float().to(device)]), run.info)
    loss_val, norm_val = both.tolist()
    ok = math.isfinite(loss_val) and math.isfinite(norm_val)
    if ok:
        player.opt.step()
    player.opt.zero_grad(set_to_none=True)
    values = {f"{prefix}loss": loss_val, f"{prefix}grad_norm": norm_val}
    values.update({k: v / n for k, v in metric_sums.items()})
    return ok, values


def train_step(run: Run, task) -> tuple[float, str | None, dict]:
    """One optimizer step of the model, then of the discriminator once the GAN phase has started, then EMA.

    Returns (lr, what was non-finite or None, logged values)."""
    step, cfg, m = run.step, run.cfg, run.model
    lr = set_lr(m.opt, lr_multiplier(step, cfg))
    micro_batches = [to_device(run.stream.next(), run.info.device) for _ in range(cfg.grad_accum)]
    with frozen(run.disc.raw if run.disc is not None else None):  # the generator's step must not train D
        ok, values = optimizer_step(run, m, lambda mb: task.loss(m.net, mb, step), micro_batches, "")
    failed = None if ok else "loss/grad norm"
    if run.disc is not None and ok and gan_started(task, step):
        set_lr(run.disc.opt, lr_multiplier(step, cfg))
        disc_ok, disc_values = optimizer_step(run, run.disc, lambda mb: task.disc_loss(m.raw, run.disc.net, mb, step),
                                              micro_batches, "disc_")
        values.update(disc_values)
        failed = None if disc_ok else "discriminator loss/grad norm"
    run.step += 1
    if ok and run.ema is not None and run.step % cfg.ema_every == 0:
        run.ema.update(m.raw)
    return lr, failed, values


def count_outcome(run: Run, failed: str | None, values: dict) -> None:
    """Add a finished step to the log window; stop after too many non-finite steps in a row."""
    if failed is None:
        run.nonfinite_in_row = 0
        run.window.add(values)
    else:
        run.nonfinite_in_row += 1
        run.window.skipped += 1
        if run.info.is_main:
            print(f"warning: non-finite {failed} at step {run.step}: step skipped ({run.nonfinite_in_row} in a row)")
        if run.nonfinite_in_row >= run.cfg.max_nonfinite_in_row:
            latest = run.out_dir / LATEST
            where = (f"{latest} holds the last good checkpoint." if latest.is_file() else
                     "No checkpoint was written yet.")
            raise NonFiniteLossError(
                f"{run.nonfinite_in_row} non-finite steps in a row (last at step {run.step}, values {values}). "
                f"Training diverged: lower lr, raise warmup_steps, keep grad_clip > 0, or try precision='fp32'. "
                f"{where}")
    run.window.steps += 1


def write_log_line(run: Run, lr: float, progress) -> None:
    record = run.window.record(run.step, lr, run.cfg.batch_size)
    if run.info.is_main:
        append_record(run.out_dir / METRICS, record)
        if progress is not None:
            progress.set_postfix(loss=record["loss"], lr=f"{lr:.2e}")
    run.last_log, run.window = record, Window()


# ----------------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------------
def train(task, dataset: Dataset, cfg: TrainConfig, resume: bool = True) -> TrainResult:
    """Train `task.model` on `dataset` as `cfg` says; continue from cfg.out_dir/latest.pt when resume=True."""
    check_task(task)
    info = setup_distributed(cfg.device)
    try:
        return _train(task, dataset, cfg, resume, info)
    finally:
        teardown_distributed(info)


def _train(task, dataset: Dataset, cfg: TrainConfig, resume: bool, info: DistInfo) -> TrainResult:
    cfg.validate(info.world_size)
    out_dir = Path(cfg.out_dir)
    check_writable(out_dir / LATEST)
    seed_everything(cfg.seed, info.rank)  # a resumed run then restores the checkpoint's RNG states
    run = build_run(task, dataset, cfg, info, out_dir)
    resuming = resume and (out_dir / LATEST).is_file()
    start_run_folder(run, resuming)
    if resuming:
        resume_run(run, task)
    last_saved = run.step if resuming else -1

    progress = None
    if info.is_main and cfg.progress:
        from tqdm import tqdm
        progress = tqdm(total=cfg.max_steps, initial=run.step, desc=f"train {out_dir.name}", dynamic_ncols=True)
    end = min(cfg.max_steps, cfg.pause_at_step) if cfg.pause_at_step else cfg.max_steps
    while run.step < end:
        lr, failed, values = train_step(run, task)
        count_outcome(run, failed, values)
        if progress is not None:
            progress.update(1)
        if run.step % cfg.log_every == 0 or run.step == cfg.max_steps:  # a pause keeps the line in progress
            write_log_line(run, lr, progress)
        if run.step % cfg.ckpt_every == 0 or run.step == end:
            save_checkpoint(run, task)
            last_saved = run.step
    if progress is not None:
        progress.close()
    if last_saved != run.step:  # resumed at max_steps (or the pause step) with nothing left to do
        save_checkpoint(run, task)
    if run.step < cfg.max_steps:
        if info.is_main:
            print(f"paused at step {run.step} of {cfg.max_steps} ({out_dir / LATEST}); the same command without "
                  f"pause_at_step (or with a later one) continues exactly from there", flush=True)
        return TrainResult(step=run.step, out_dir=out_dir, model=run.model.raw, ema_model=ema_model(run),
                           last_log=run.last_log, finished=False)
    final_ema = save_final_model(run)
    return TrainResult(step=run.step, out_dir=out_dir, model=run.model.raw, ema_model=final_ema,
                       last_log=run.last_log)


# ----------------------------------------------------------------------------------------------------
# The final model
# ----------------------------------------------------------------------------------------------------
def save_final_model(run: Run) -> nn.Module | None:
    """out_dir/final: the EMA weights (or the raw ones without EMA), for models that save themselves."""
    raw, info = run.model.raw, run.info
    final_ema = ema_model(run)
    if info.is_main and hasattr(raw, "save_pretrained") and not D.is_fsdp(raw):
        (final_ema if final_ema is not None else raw).save_pretrained(run.out_dir / "final")
    elif D.is_fsdp(raw) and hasattr(raw, "save_pretrained") and hasattr(raw, "config"):
        _save_final_fsdp(raw, run.ema, run.out_dir, info)
    barrier(info)
    return final_ema


def _save_final_fsdp(raw: nn.Module, ema: EMA | None, out_dir: Path, info: DistInfo) -> None:
    """Under FSDP the weights are sharded: gather them (all ranks) into a fresh unsharded copy on rank 0."""
    full = ema.full_state_dict() if ema is not None else None
    sd = D.model_state_dict(raw, raw)
    if info.is_main:
        fresh = type(raw)(raw.config)
        if full is not None:
            sd = {**sd, **{k: v.to(sd[k].dtype).cpu() for k, v in full.items()}}
        fresh.load_state_dict(sd)
        fresh.save_pretrained(out_dir / "final")
