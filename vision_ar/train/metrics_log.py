"""metrics.jsonl: one JSON line per log step, averaged over the steps since the previous line."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

from ..io import atomic_write_text


class Window:
    """Sums of the logged values since the last log line (finite steps only)."""

    def __init__(self):
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self.steps = self.skipped = 0
        self.t0 = time.perf_counter()

    def add(self, values: dict[str, float]) -> None:
        for k, v in values.items():
            if v is not None and math.isfinite(float(v)):
                self.sums[k] = self.sums.get(k, 0.0) + float(v)
                self.counts[k] = self.counts.get(k, 0) + 1

    def state_dict(self) -> dict:
        """The sums so far: a run resumed between two log lines logs the same averages as one that never stopped."""
        return {"sums": dict(self.sums), "counts": dict(self.counts), "steps": self.steps, "skipped": self.skipped}

    def load_state_dict(self, state: dict) -> None:
        self.sums, self.counts = dict(state["sums"]), dict(state["counts"])
        self.steps, self.skipped = int(state["steps"]), int(state["skipped"])

    def means(self) -> dict[str, float]:
        return {k: self.sums[k] / self.counts[k] for k in self.sums}

    def record(self, step: int, lr: float, batch_size: int) -> dict:
        """The log line of this window."""
        elapsed = max(time.perf_counter() - self.t0, 1e-9)
        record = {"step": step, "lr": lr, **self.means(), "skipped": self.skipped,
                  "throughput": batch_size * self.steps / elapsed}
        record.setdefault("loss", None)
        return record


def append_record(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)  # the run folder is made by its first write
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines logged after `step` (by a run killed after its last checkpoint): the resumed run
    logs those steps again, so the file keeps exactly one line per log step."""
    path = Path(path)
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                keep.append(line)
        except (json.JSONDecodeError, KeyError, TypeError):
            continue  # a line cut short by the kill
    atomic_write_text("".join(k + "\n" for k in keep), path)
