"""TrainConfig: every setting of the one training loop, checked before any work is done."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..errors import ConfigError
from ..validation import check_dataclass_types


@dataclass
class TrainConfig:
    out_dir: str = "runs/exp"
    max_steps: int = 1000              # optimizer steps (a skipped non-finite step counts as a step)
    # stop after this step's checkpoint without finishing (0 = run to max_steps): a run longer than one sitting
    # is split into pieces that resume exactly; the schedule follows max_steps throughout
    pause_at_step: int = 0
    batch_size: int = 64               # GLOBAL samples per optimizer step = micro_batch * grad_accum * world_size
    grad_accum: int = 1                # micro-steps per optimizer step
    # ---- optimizer (AdamW) and schedule
    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    warmup_steps: int = 0              # linear warmup from 0 to lr
    lr_schedule: str = "cosine"        # 'cosine' | 'linear' | 'constant' after warmup
    min_lr_ratio: float = 0.0          # the decay ends at lr * min_lr_ratio
    grad_clip: float = 1.0             # max global grad norm; 0 = no clipping (the norm is still logged)
    # ---- GAN discriminator (tasks that define one)
    disc_lr: float | None = None       # None = lr (the GAN phase starts at the task's disc_start)
    # ---- EMA
    ema_decay: float = 0.0             # 0 = no EMA
    ema_every: int = 1                 # update the EMA every k optimizer steps
    ema_warmup: bool = False           # decay_t = min(ema_decay, (1 + t) / (10 + t)) over EMA updates t
    # ---- bookkeeping
    ckpt_every: int = 1000
    keep_last_ckpts: int = 0           # also keep this many step-numbered checkpoints besides latest.pt
    log_every: int = 10
    seed: int = 0
    progress: bool = True              # tqdm bar on rank 0
    # ---- hardware
    device: str = "auto"               # 'auto' = cuda:LOCAL_RANK when CUDA is available, else cpu
    precision: str = "auto"            # 'auto' (bf16 on CUDA; on a CPU bf16 only where measured faster) | 'fp32' | 'bf16'
    grad_checkpointing: bool = False   # calls model.set_grad_checkpointing(True)
    fsdp: bool = False                 # shard params/grads/optimizer state (FSDP2) instead of DDP, for 1B+ models
    max_nonfinite_in_row: int = 5      # stop with an error after this many skipped steps in a row
    num_workers: int = 0               # DataLoader workers (0 = in-process: bit-exact resume incl. augmentation)
    # ---- resuming
    allow_changed_settings: bool = False  # resume although settings differ from the checkpoint's (recorded)

    def __post_init__(self):
        check_dataclass_types(self, "TrainConfig", fix=" (a --set value from the command line is read as JSON)")
        if isinstance(self.betas, list):
            self.betas = tuple(self.betas)
        self.validate()

    def validate(self, world_size: int = 1) -> None:
        def need(ok: bool, msg: str):
            if not ok:
                raise ConfigError(f"TrainConfig: {msg}")

        need(self.pause_at_step >= 0, f"pause_at_step must be >= 0 (0 = never pause), got {self.pause_at_step}")
        need(self.max_steps >= 1, f"max_steps (--steps) must be >= 1, got {self.max_steps}: a run of no steps "
                                   f"would only write untrained weights")
        need(self.grad_accum >= 1, f"grad_accum must be >= 1, got {self.grad_accum}")
        need(self.batch_size >= 1 and self.batch_size % (self.grad_accum * world_size) == 0,
             f"batch_size {self.batch_size} must be a positive multiple of grad_accum ({self.grad_accum}) x "
             f"processes ({world_size}); change batch_size or grad_accum")
        need(self.lr > 0, f"lr must be > 0, got {self.lr}")
        need(self.lr_schedule in ("cosine", "linear", "constant"),
             f"lr_schedule must be 'cosine', 'linear' or 'constant', got {self.lr_schedule!r}")
        need(0.0 <= self.min_lr_ratio <= 1.0, f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        need(self.warmup_steps >= 0, f"warmup_steps must be >= 0, got {self.warmup_steps}")
        need(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), f"betas must be 2 numbers in [0, 1)")
        need(self.grad_clip >= 0, f"grad_clip must be >= 0 (0 = off), got {self.grad_clip}")
        need(0.0 <= self.ema_decay < 1.0, f"ema_decay must be in [0, 1) (0 = off), got {self.ema_decay}")
        need(self.ema_every >= 1, f"ema_every must be >= 1, got {self.ema_every}")
        need(self.ckpt_every >= 1 and self.log_every >= 1, "ckpt_every and log_every must be >= 1")
        need(self.keep_last_ckpts >= 0, "keep_last_ckpts must be >= 0")
        need(self.precision in ("auto", "fp32", "bf16"),
             f"precision must be 'auto', 'fp32' or 'bf16', got {self.precision!r}")
        need(self.max_nonfinite_in_row >= 1, "max_nonfinite_in_row must be >= 1")
        need(self.num_workers >= 0, "num_workers must be >= 0")
        need(self.disc_lr is None or self.disc_lr > 0, "disc_lr must be > 0 (or None = lr)")

    def micro_batch_size(self, world_size: int = 1) -> int:
        return self.batch_size // (self.grad_accum * world_size)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
