"""What a run was started with, and what resuming it may change.

A checkpoint records the settings that decide what the run computes: the TrainConfig (less the bookkeeping
below), the number of training samples, the trained model's config and the task's own settings (`task.settings()`, when it has them). A
resume whose settings differ is refused, unless `TrainConfig.allow_changed_settings` (`vision-ar train
--allow-changed-settings`) says the change is intended; an accepted change is recorded in
`out_dir/resume_log.jsonl`. Raising max_steps is how a run is extended, so it needs no flag (it is
recorded too).
"""
from __future__ import annotations

import dataclasses
import datetime
import json
from pathlib import Path

from ..errors import ConfigError
from ..io import atomic_write_text

RESUME_LOG = "resume_log.jsonl"

# Where, how often and on which hardware: changing these changes no number the run computes.
BOOKKEEPING = ("out_dir", "progress", "ckpt_every", "log_every", "keep_last_ckpts", "device", "num_workers", "fsdp",
               "grad_checkpointing", "allow_changed_settings", "pause_at_step")
EXTENDS_THE_RUN = ("train.max_steps",)


def _plain(x):
    """JSON-like values (tuples as lists) so settings compare the same before and after a checkpoint."""
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        x = dataclasses.asdict(x)
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


def run_settings(task, cfg, num_samples: int, autocast: str | None = None) -> dict:
    """{'train', 'data', 'model', 'task', 'machine'}: every setting whose change would change the run.

    machine.autocast: the precision `precision` resolved to on this machine ('bf16' or 'fp32'): 'auto' follows
    the CPU, so a run moved from an AVX512-BF16 CPU to an AVX2 one would silently continue in another precision
    (no longer an exact continuation); recorded, it is a changed setting like any other."""
    out = {"train": {k: v for k, v in _plain(cfg).items() if k not in BOOKKEEPING}, "data": {"samples": num_samples}}
    if autocast is not None:
        out["machine"] = {"autocast": autocast}
    model_cfg = getattr(task.model, "config", None)
    if dataclasses.is_dataclass(model_cfg):
        out["model"] = _plain(model_cfg)
    if callable(getattr(task, "settings", None)):
        out["task"] = _plain(task.settings())
    return out


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def changed_settings(saved: dict, now: dict) -> dict[str, tuple]:
    """{'train.lr': (then, now), ...} for every setting that differs."""
    a, b = _flat(saved), _flat(now)
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def check_resume_settings(saved: dict | None, now: dict, allow: bool, path: Path) -> dict[str, tuple]:
    """The accepted changes; raise unless every change is allowed (no settings saved = an older checkpoint)."""
    if saved is None:
        return {}
    changes = changed_settings(saved, now)
    # checkpoints written before the resolved precision was recorded: nothing to compare it with
    changes = {k: v for k, v in changes.items() if not (k.startswith("machine.") and v[0] is None)}
    needs_flag = {k: v for k, v in changes.items() if k not in EXTENDS_THE_RUN}
    if needs_flag and not allow:
        listed = "; ".join(f"{k}: {a!r} then, {b!r} now" for k, (a, b) in needs_flag.items())
        raise ConfigError(f"{path} was written with other settings ({listed}). Resume with the settings the run "
                          f"started with, choose a new output folder, or pass --allow-changed-settings "
                          f"(TrainConfig.allow_changed_settings=True) to continue with the new ones (the change is "
                          f"recorded in {RESUME_LOG}).")
    return changes


def record_changes(out_dir: Path, step: int, changes: dict[str, tuple]) -> None:
    """Append one line to out_dir/resume_log.jsonl: at which step which settings changed."""
    path = Path(out_dir) / RESUME_LOG
    old = path.read_text() if path.is_file() else ""
    line = {"step": step, "changed": {k: {"then": a, "now": b} for k, (a, b) in changes.items()},
            "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    atomic_write_text(old + json.dumps(line) + "\n", path)
