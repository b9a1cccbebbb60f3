"""Model wrapping and full state dicts for one process, torchrun DDP, or FSDP2 (fully_shard).

The process setup (device, rank, process group) is `vision_ar/distributed.py`, shared with evaluation.

Under torchrun (WORLD_SIZE > 1) every process trains on its own slice of each batch; DDP all-reduces the
gradients, FSDP additionally shards parameters, gradients and optimizer state for models too big to copy.
Checkpoints always hold FULL (unsharded) CPU state dicts, so a run may resume with or without FSDP.
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn

from ..distributed import DistInfo


# ----------------------------------------------------------------------------------------------------
# Wrapping
# ----------------------------------------------------------------------------------------------------
def fsdp_units(model: nn.Module) -> list[nn.Module]:
    """Modules sharded as one unit each: the model's `fsdp_units()` if it defines it, else every child of
    every nn.ModuleList (transformer blocks)."""
    if hasattr(model, "fsdp_units"):
        return list(model.fsdp_units())
    return [child for m in model.modules() if isinstance(m, nn.ModuleList) for child in m]


def wrap_model(model: nn.Module, info: DistInfo, fsdp: bool, find_unused_parameters: bool = False) -> nn.Module:
    if fsdp:
        if not info.distributed:
            return model  # one process: nothing to shard; the same code path otherwise
        from torch.distributed.fsdp import fully_shard

        for unit in fsdp_units(model):
            fully_shard(unit)
        fully_shard(model)  # in place: `model` itself now holds DTensor shards
        return model
    if info.distributed and any(p.requires_grad for p in model.parameters()):
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [info.device.index] if info.device.type == "cuda" else None
        return DDP(model, device_ids=ids, find_unused_parameters=find_unused_parameters)
    return model


def is_fsdp(model: nn.Module) -> bool:
    return hasattr(model, "set_requires_gradient_sync")


@contextlib.contextmanager
def maybe_no_sync(model: nn.Module, skip_sync: bool):
    """Skip the gradient all-reduce on non-final micro-steps of gradient accumulation."""
    if not skip_sync:
        if is_fsdp(model):
            model.set_requires_gradient_sync(True)
        yield
    elif is_fsdp(model):
        model.set_requires_gradient_sync(False)
        yield
    elif hasattr(model, "no_sync"):
        with model.no_sync():
            yield
    else:
        yield


# ----------------------------------------------------------------------------------------------------
# Full state dicts (all ranks call these; only rank 0 needs the result)
# ----------------------------------------------------------------------------------------------------
def model_state_dict(model: nn.Module, raw: nn.Module) -> dict:
    if is_fsdp(raw):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(raw, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {k: v.detach().cpu().clone() for k, v in raw.state_dict().items()}


def load_model_state_dict(raw: nn.Module, sd: dict) -> None:
    if is_fsdp(raw):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        set_model_state_dict(raw, sd, options=StateDictOptions(full_state_dict=True))
        return
    from ..io import load_state_dict_strict

    load_state_dict_strict(raw, sd, what="training checkpoint")


def optimizer_state_dict(raw: nn.Module, opt: torch.optim.Optimizer) -> dict:
    if is_fsdp(raw):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        return get_optimizer_state_dict(raw, opt, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return opt.state_dict()


def load_optimizer_state_dict(raw: nn.Module, opt: torch.optim.Optimizer, sd: dict) -> None:
    if is_fsdp(raw):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(raw, opt, sd, options=StateDictOptions(full_state_dict=True))
        return
    opt.load_state_dict(sd)
