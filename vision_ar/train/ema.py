"""Exponential moving average of a model's parameters, kept as an fp32 shadow copy.

The shadow is a dict name -> fp32 tensor on the model's device (under FSDP: the local shards, as DTensors),
so a bf16 model still averages in full precision. Buffers (e.g. norm statistics) are not averaged: a model
built from the EMA takes them from the live model.
"""
from __future__ import annotations

import copy

import torch
from torch import nn


def _full(t: torch.Tensor) -> torch.Tensor:
    """A DTensor (FSDP shard) gathered to the full tensor; a plain tensor as is."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


class EMA:
    def __init__(self, model: nn.Module, decay: float, warmup: bool = False):
        self.decay, self.warmup = decay, warmup
        self.num_updates = 0
        with torch.no_grad():
            self.shadow = {n: p.detach().float().clone() for n, p in model.named_parameters()}

    def current_decay(self) -> float:
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        decay = self.current_decay()
        names = list(self.shadow)
        params = dict(model.named_parameters())
        ema = [self.shadow[n] for n in names]
        live = [params[n].detach().float() for n in names]
        torch._foreach_lerp_(ema, live, 1.0 - decay)  # ema += (1 - decay) * (live - ema)
        self.num_updates += 1

    # ---- state ----------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Full (gathered) fp32 tensors on CPU; every rank must call it under FSDP."""
        return {"shadow": {n: _full(t).cpu() for n, t in self.shadow.items()}, "num_updates": self.num_updates,
                "decay": self.decay}

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        from ..errors import CheckpointError

        shadow = state["shadow"]
        if set(shadow) != set(self.shadow):
            missing, extra = sorted(set(self.shadow) - set(shadow)), sorted(set(shadow) - set(self.shadow))
            raise CheckpointError(f"EMA in the checkpoint does not fit the model: missing {missing[:10]}, "
                                  f"unexpected {extra[:10]}. Resume with the same model config.")
        for n, t in self.shadow.items():
            full = shadow[n]
            if hasattr(t, "device_mesh"):  # FSDP shard: cut this rank's piece out of the full tensor
                from torch.distributed.tensor import distribute_tensor

                t.copy_(distribute_tensor(full.to(t.device_mesh.device_type), t.device_mesh, t.placements))
            else:
                t.copy_(full)
        self.num_updates = int(state["num_updates"])

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        return {n: _full(t) for n, t in self.shadow.items()}

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> nn.Module:
        """Write the averaged weights into `model` (same architecture, not sharded), in its own dtypes."""
        full = self.full_state_dict()
        for n, p in model.named_parameters():
            p.copy_(full[n].to(p.dtype))
        return model

    def make_model(self, model: nn.Module) -> nn.Module:
        """A detached eval-mode copy of a (not sharded) model holding the EMA weights."""
        return self.copy_to(copy.deepcopy(model)).eval().requires_grad_(False)
