"""What a model family hands to the training loop: a Task.

A task is any object with

    model                                   nn.Module that is trained (and EMA'd)
    loss(model, batch, step)                -> (scalar loss tensor, {name: float} metrics)

and optionally

    param_groups(model, weight_decay)       -> optimizer param groups (default: `default_param_groups`)
    discriminator                           nn.Module of a GAN tokenizer (None = no GAN)
    disc_start                              the step the GAN phase starts at (default 0); `gan_started`
                                               below is the one test of it, for the loop and the task
    disc_loss(model, disc, batch, step)     -> (scalar loss tensor, metrics); trained by a second AdamW with
                                               the same schedule, stepped after the generator, once
                                               gan_started(task, step); a None loss = nothing to train
                                               for this step
    on_checkpoint(step, out_dir, model, ema_model)   called on rank 0 after each checkpoint (samples, evals)
    settings()                              -> dict of the task's own settings (loss weights...): saved in
                                               checkpoints; a resume that changes them is refused unless
                                               allowed (vision_ar/train/settings.py)

`model` passed to `loss` is the wrapped module (DDP/FSDP): call it (forward) so gradients are synchronised;
use `unwrap(model)` for attributes and other methods. The loop runs the generator's forward and backward
inside `frozen(discriminator)` (requires_grad False), so the task may call `self.discriminator` for the
adversarial term without freezing it itself. `disc` passed to `disc_loss` is the (possibly DDP-wrapped) discriminator; `model` there is the raw
generator (a task usually re-uses the reconstruction it kept from `loss`, detached).

Subclass `TrainTask` for the defaults, or write a plain class with the same attributes.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn


@runtime_checkable
class Task(Protocol):
    model: nn.Module

    def loss(self, model: nn.Module, batch: Any, step: int) -> tuple[torch.Tensor, dict[str, float]]: ...


def unwrap(model: nn.Module) -> nn.Module:
    """The user's module inside DDP (`.module`) or torch.compile (`._orig_mod`)."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def gan_started(task, step: int) -> bool:
    """Whether the GAN phase (adversarial term and discriminator training) is on at optimizer step `step`."""
    return getattr(task, "discriminator", None) is not None and step >= getattr(task, "disc_start", 0)


@contextmanager
def frozen(module: nn.Module | None):
    """Parameters of `module` receive no gradients inside the block (the discriminator during the generator's
    step); their requires_grad flags are restored afterwards."""
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


def default_param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices and conv kernels only; none on biases, norm scales, embeddings and tokens.

    Decaying a norm gain or a bias pulls it towards 0 for no regularisation benefit; decaying embedding
    tables shrinks rarely-seen codes (the LlamaGen/nanoGPT convention). Parameters with `_no_weight_decay`
    set, or named in the module's `no_weight_decay()` set (timm convention), are also excluded.
    """
    model = unwrap(model)
    skip_names = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    embedding_params = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if (p.dim() < 2 or id(p) in embedding_params or name in skip_names
                or getattr(p, "_no_weight_decay", False)):
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


class TrainTask:
    """Base class with the optional parts filled in; a family overrides `loss` (and the GAN parts)."""

    discriminator: nn.Module | None = None
    disc_start: int = 0

    def __init__(self, model: nn.Module):
        self.model = model

    def loss(self, model: nn.Module, batch: Any, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError(f"{type(self).__name__} must implement loss(model, batch, step)")

    def param_groups(self, model: nn.Module, weight_decay: float) -> list[dict]:
        return default_param_groups(model, weight_decay)

    def disc_loss(self, model, disc, batch, step):
        raise NotImplementedError(f"{type(self).__name__} has a discriminator but no disc_loss")

    def on_checkpoint(self, step: int, out_dir, model: nn.Module, ema_model: nn.Module | None) -> None:
        pass
