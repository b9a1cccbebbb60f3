"""Process setup and model wrapping for one process, torchrun DDP, or FSDP2 (fully_shard).

Under torchrun (WORLD_SIZE > 1) every process trains on its own slice of each batch; DDP all-reduces the
gradients, FSDP additionally shards parameters, gradients and optimizer state for models too big to copy.
Checkpoints always hold FULL (unsharded) CPU state dicts, so a run may resume with or without FSDP.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from ..errors import ConfigError


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    initialized_here: bool = False  # we created the process group, so we destroy it at the end

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup_distributed(device: str = "auto") -> DistInfo:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        dev = torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    else:
        dev = torch.device(device)
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device(f"cuda:{local_rank}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {device!r} asked for CUDA but none is available; use device='cpu'")
        torch.cuda.set_device(dev)
    info = DistInfo(rank, world_size, local_rank, dev)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
        info.initialized_here = True
    return info


def teardown_distributed(info: DistInfo) -> None:
    if info.initialized_here and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def all_reduce_mean(x: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.distributed:
        x = x.clone()
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
        x /= info.world_size
    return x


def all_gather_object(obj, info: DistInfo) -> list:
    if not info.distributed:
        return [obj]
    out = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


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
