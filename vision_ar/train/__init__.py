"""The one training loop (torchrun DDP, FSDP, bf16 autocast, EMA, exact resume) and its task protocol."""
from .config import TrainConfig
from .ema import EMA
from .loop import NonFiniteLossError, TrainResult, train
from .schedule import lr_multiplier
from .task import Task, TrainTask, default_param_groups, unwrap

__all__ = ["TrainConfig", "EMA", "NonFiniteLossError", "TrainResult", "train", "lr_multiplier", "Task",
           "TrainTask", "default_param_groups", "unwrap"]
