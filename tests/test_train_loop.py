"""The training loop's parts: schedule, NaN guard, metrics file, atomic checkpoints, EMA, GAN phase, switches,
and 2-process DDP and FSDP runs (gloo on CPU, launched with torchrun) that resume exactly."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from vision_ar.errors import ConfigError
from vision_ar.train import (NonFiniteLossError, TrainConfig, TrainTask, default_param_groups, lr_multiplier,
                             train)
from vision_ar.train.checkpoint import LATEST, METRICS

HERE = Path(__file__).resolve()


# ----------------------------------------------------------------------------------------------------
# A tiny regression problem (no data files needed)
# ----------------------------------------------------------------------------------------------------
def make_data(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    return TensorDataset(x, x @ torch.randn(6, 1, generator=g))


class Regress(TrainTask):
    def __init__(self, model=None, nan_steps=(), nan_grad_steps=()):
        torch.manual_seed(0)
        super().__init__(model or nn.Sequential(nn.Linear(6, 16), nn.LayerNorm(16), nn.Dropout(0.1),
                                                nn.Linear(16, 1)))
        self.nan_steps, self.nan_grad_steps = set(nan_steps), set(nan_grad_steps)

    def loss(self, model, batch, step):
        x, y = batch
        pred = model(x)
        if step in self.nan_grad_steps:  # finite loss, non-finite gradient
            pred.register_hook(lambda g: g * float("nan"))
        loss = F.mse_loss(pred.float(), y)
        if step in self.nan_steps:
            loss = loss * float("nan")
        return loss, {"pred_mean": pred.mean().item()}


def cfg_for(tmp_path, **kw):
    base = dict(out_dir=str(tmp_path / "run"), max_steps=6, batch_size=8, grad_accum=2, lr=1e-2, warmup_steps=1,
                ckpt_every=2, log_every=2, progress=False)
    return TrainConfig(**{**base, **kw})


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)  # tiny models: threads only add contention on the shared CPUs
    yield


def read_metrics(out_dir):
    return [json.loads(l) for l in (Path(out_dir) / METRICS).read_text().splitlines()]


# ----------------------------------------------------------------------------------------------------
# Schedule, param groups, config checks
# ----------------------------------------------------------------------------------------------------
def test_lr_schedule_shapes():
    c = TrainConfig(max_steps=110, warmup_steps=10, lr_schedule="cosine", min_lr_ratio=0.1)
    assert [lr_multiplier(s, c) for s in (0, 4, 9)] == [0.1, 0.5, 1.0]
    assert lr_multiplier(10, c) == 1.0 and lr_multiplier(110, c) == pytest.approx(0.1)
    assert lr_multiplier(60, c) == pytest.approx(0.1 + 0.9 * 0.5)
    lin = TrainConfig(max_steps=110, warmup_steps=10, lr_schedule="linear")
    assert lr_multiplier(35, lin) == pytest.approx(0.75)
    assert lr_multiplier(77, TrainConfig(lr_schedule="constant")) == 1.0


def test_default_param_groups_skip_norms_biases_embeddings():
    m = nn.ModuleDict({"emb": nn.Embedding(5, 4), "lin": nn.Linear(4, 4), "norm": nn.LayerNorm(4)})
    decay, no_decay = default_param_groups(m, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert [p.shape for p in decay["params"]] == [(4, 4)]
    assert len(no_decay["params"]) == 4  # embedding, bias, norm weight, norm bias


def test_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="batch_size"):
        TrainConfig(batch_size=10, grad_accum=4)
    with pytest.raises(ConfigError, match="lr_schedule"):
        TrainConfig(lr_schedule="step")
    with pytest.raises(ConfigError, match="precision"):
        TrainConfig(precision="fp16")
    with pytest.raises(ConfigError, match="fewer than one micro-batch"):
        train(Regress(), make_data(n=3), cfg_for(tmp_path))
    with pytest.raises(ConfigError, match="set_grad_checkpointing"):
        train(Regress(), make_data(), cfg_for(tmp_path, grad_checkpointing=True))


# ----------------------------------------------------------------------------------------------------
# Metrics, NaN guard, checkpoints
# ----------------------------------------------------------------------------------------------------
def test_metrics_one_line_per_log_step(tmp_path):
    result = train(Regress(), make_data(), cfg_for(tmp_path, max_steps=7, log_every=3))
    lines = read_metrics(tmp_path / "run")
    assert [l["step"] for l in lines] == [3, 6, 7]
    for l in lines:
        assert {"step", "loss", "lr", "grad_norm", "throughput", "pred_mean", "skipped"} <= set(l)
        assert math.isfinite(l["loss"]) and l["throughput"] > 0 and l["skipped"] == 0
    assert lines[-1] == result.last_log
    assert lines[0]["loss"] > lines[-1]["loss"]  # it learns


def test_nan_guard_skips_the_step(tmp_path):
    task = Regress(nan_steps={2}, nan_grad_steps={4})
    result = train(task, make_data(), cfg_for(tmp_path, ema_decay=0.9))
    ckpt = torch.load(tmp_path / "run" / LATEST, weights_only=True)
    assert ckpt["step"] == 6
    adam_steps = {int(s["step"]) for s in ckpt["optimizer"]["state"].values()}
    assert adam_steps == {4}  # two of the six steps were skipped: no optimizer update
    assert ckpt["ema"]["num_updates"] == 4  # ... and no EMA update
    assert [l["skipped"] for l in read_metrics(tmp_path / "run")] == [0, 1, 1]
    assert all(torch.isfinite(p).all() for p in result.model.parameters())


def test_nan_guard_stops_after_several_in_a_row(tmp_path):
    task = Regress(nan_steps={3, 4, 5, 6, 7})
    with pytest.raises(NonFiniteLossError, match="3 non-finite steps in a row.*lower lr"):
        train(task, make_data(), cfg_for(tmp_path, max_steps=10, max_nonfinite_in_row=3))
    ckpt = torch.load(tmp_path / "run" / LATEST, weights_only=True)
    assert ckpt["step"] == 4 and ckpt["nonfinite_in_row"] == 1
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())


def test_interrupted_checkpoint_write_keeps_previous_latest(tmp_path, monkeypatch):
    real_save, calls = torch.save, []

    def dying_save(obj, f, *a, **k):
        calls.append(f)
        if len(calls) == 2:  # the second checkpoint: half the bytes, then the "crash"
            Path(f).write_bytes(b"PK\x03\x04 half a checkpoint")
            raise KeyboardInterrupt("killed while writing")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        train(Regress(), make_data(), cfg_for(tmp_path))
    monkeypatch.setattr(torch, "save", real_save)
    run = tmp_path / "run"
    assert torch.load(run / LATEST, weights_only=True)["step"] == 2  # the previous checkpoint, intact
    assert sorted(p.name for p in run.iterdir()) == [LATEST, METRICS]  # no temporary file left behind
    assert train(Regress(), make_data(), cfg_for(tmp_path)).step == 6  # and it resumes from it


def test_restart_before_the_first_checkpoint_and_stale_temporaries(tmp_path):
    """A run killed before its first checkpoint starts over without logging its steps twice; temporary files
    of writes interrupted by a kill are removed at start."""
    class Stop(Exception):
        pass

    class Dies(Regress):
        def loss(self, model, batch, step):
            if step == 3:
                raise Stop()
            return super().loss(model, batch, step)

    run = tmp_path / "run"
    with pytest.raises(Stop):
        train(Dies(), make_data(), cfg_for(tmp_path, ckpt_every=4, log_every=1))
    assert [l["step"] for l in read_metrics(run)] == [1, 2, 3] and not (run / LATEST).exists()
    stale = [run / ".latest.pt.x1y2.tmp", run / ".metrics.jsonl.abc.tmp", run / ".ckpt_00000004.pt.link"]
    for p in stale:
        p.write_bytes(b"half")
    (run / ".final.q9").mkdir()
    train(Regress(), make_data(), cfg_for(tmp_path, ckpt_every=4, log_every=1))
    assert [l["step"] for l in read_metrics(run)] == [1, 2, 3, 4, 5, 6]
    assert sorted(p.name for p in run.iterdir()) == [LATEST, METRICS]


def test_resume_on_a_machine_that_resolves_another_precision_is_a_changed_setting(tmp_path, monkeypatch):
    """precision='auto' follows the CPU (bf16 where it runs natively): a run moved to a CPU that resolves it to
    fp32 would no longer continue exactly, so the resolved precision is recorded and compared like a setting."""
    from vision_ar.train import loop

    run = tmp_path / "run"
    monkeypatch.setattr(loop, "autocast_name", lambda r: "bf16")  # as written on an AVX512-BF16 machine
    train(Regress(), make_data(), cfg_for(tmp_path, max_steps=2))
    assert torch.load(run / LATEST, weights_only=True)["settings"]["machine"] == {"autocast": "bf16"}
    monkeypatch.setattr(loop, "autocast_name", lambda r: "fp32")  # resumed on an AVX2-only one
    with pytest.raises(ConfigError, match="machine.autocast: 'bf16' then, 'fp32' now.*--allow-changed-settings"):
        train(Regress(), make_data(), cfg_for(tmp_path, max_steps=4))
    assert train(Regress(), make_data(), cfg_for(tmp_path, max_steps=4, allow_changed_settings=True)).step == 4
    assert "machine.autocast" in json.loads((run / "resume_log.jsonl").read_text().splitlines()[0])["changed"]


def test_resume_with_changed_settings_is_refused_unless_allowed(tmp_path):
    run = tmp_path / "run"
    train(Regress(), make_data(), cfg_for(tmp_path, max_steps=2))
    for change, needle in ((dict(lr=2e-2), "train.lr: 0.01 then, 0.02 now"), (dict(batch_size=16), "train.batch_size"),
                           (dict(seed=1), "train.seed")):
        with pytest.raises(ConfigError, match=needle + ".*--allow-changed-settings"):
            train(Regress(), make_data(), cfg_for(tmp_path, max_steps=4, **change))
    with pytest.raises(ConfigError, match="data.samples: 64 then, 48 now"):
        train(Regress(), make_data(n=48), cfg_for(tmp_path, max_steps=4))
    assert torch.load(run / LATEST, weights_only=True)["step"] == 2 and not (run / "resume_log.jsonl").exists()
    # bookkeeping may change freely; an intended change is accepted and recorded
    result = train(Regress(), make_data(), cfg_for(tmp_path, max_steps=4, lr=2e-2, log_every=1,
                                                   allow_changed_settings=True))
    assert result.step == 4
    log = [json.loads(l) for l in (run / "resume_log.jsonl").read_text().splitlines()]
    assert [(l["step"], l["changed"]) for l in log] == [
        (2, {"train.lr": {"then": 0.01, "now": 0.02}, "train.max_steps": {"then": 2, "now": 4}})]
    # the new settings are the run's own now; raising max_steps (extending the run) needs no flag
    assert train(Regress(), make_data(), cfg_for(tmp_path, max_steps=5, lr=2e-2)).step == 5
    assert [l["step"] for l in map(json.loads, (run / "resume_log.jsonl").read_text().splitlines())] == [2, 4]


# ----------------------------------------------------------------------------------------------------
# EMA, GAN discriminator, switches
# ----------------------------------------------------------------------------------------------------
def test_ema_is_the_average_of_the_trained_weights(tmp_path):
    task = Regress(nn.Linear(6, 1))
    start = {k: v.clone() for k, v in task.model.state_dict().items()}
    result = train(task, make_data(), cfg_for(tmp_path, max_steps=1, ema_decay=0.75))
    for (name, p), e in zip(result.model.named_parameters(), result.ema_model.parameters()):
        assert not torch.equal(p, start[name])
        torch.testing.assert_close(e, 0.75 * start[name] + 0.25 * p)
    class Hook(Regress):
        calls = []

        def on_checkpoint(self, step, out_dir, model, ema_model):
            self.calls.append((step, ema_model is not None and not ema_model.training))

    hooked = Hook(nn.Linear(6, 1))
    train(hooked, make_data(), cfg_for(tmp_path, out_dir=str(tmp_path / "hook"), max_steps=3, ema_decay=0.5))
    assert hooked.calls == [(2, True), (3, True)]
    res2 = train(Regress(nn.Linear(6, 1)), make_data(),
                 cfg_for(tmp_path, out_dir=str(tmp_path / "r2"), max_steps=5, ema_decay=0.9, ema_every=2))
    assert torch.load(tmp_path / "r2" / LATEST, weights_only=True)["ema"]["num_updates"] == 2
    assert res2.ema_model is not None


class GanTask(Regress):
    """A generator whose loss also uses the discriminator, as a GAN tokenizer's does."""

    def __init__(self):
        super().__init__(nn.Linear(6, 1))
        self.discriminator = nn.Linear(1, 1)
        self.disc_calls = []

    def loss(self, model, batch, step):
        loss, m = super().loss(model, batch, step)
        adv = -self.discriminator(model(batch[0])).mean()
        return loss + 0.1 * adv, m

    def disc_loss(self, model, disc, batch, step):
        self.disc_calls.append(step)
        if step == 3:
            return None, {}  # nothing to train at this step
        x, y = batch
        with torch.no_grad():
            fake = model(x)
        return F.softplus(disc(fake)).mean() + F.softplus(-disc(y)).mean(), {"d_acc": 0.5}


def test_gan_discriminator_phase(tmp_path):
    task = GanTask()
    d0 = {k: v.clone() for k, v in task.discriminator.state_dict().items()}
    task.disc_start = 2
    train(task, make_data(), cfg_for(tmp_path, max_steps=2))
    # before disc_start the discriminator is untouched, even though the generator loss used it
    assert all(torch.equal(v, d0[k]) for k, v in task.discriminator.state_dict().items())
    assert all(p.grad is None for p in task.discriminator.parameters()) and task.disc_calls == []
    train(task, make_data(), cfg_for(tmp_path, max_steps=5, disc_lr=5e-2, allow_changed_settings=True))
    assert sorted(set(task.disc_calls)) == [2, 3, 4]
    assert not torch.equal(task.discriminator.weight, d0["weight"])
    ckpt = torch.load(tmp_path / "run" / LATEST, weights_only=True)
    assert ckpt["disc_optimizer"]["param_groups"][0]["base_lr"] == 5e-2
    assert {int(s["step"]) for s in ckpt["disc_optimizer"]["state"].values()} == {2}  # steps 2 and 4
    lines = read_metrics(tmp_path / "run")
    assert "disc_loss" in lines[-1] and "d_acc" in lines[-1]


def test_bf16_autocast_and_grad_checkpointing_switch(tmp_path):
    class Ckpt(nn.Sequential):
        grad_ckpt = False

        def set_grad_checkpointing(self, on=True):
            self.grad_ckpt = on

    seen = []

    class Probe(Regress):
        def loss(self, model, batch, step):
            seen.append((model(batch[0]).dtype, torch.is_autocast_enabled("cpu")))
            return super().loss(model, batch, step)

    task = Probe(Ckpt(nn.Linear(6, 4), nn.Linear(4, 1)))
    train(task, make_data(), cfg_for(tmp_path, max_steps=2, precision="bf16", grad_checkpointing=True))
    assert task.model.grad_ckpt and seen[0] == (torch.bfloat16, True)
    assert all(p.dtype == torch.float32 for p in task.model.parameters())  # autocast: fp32 master weights
    seen.clear()
    train(Probe(), make_data(), cfg_for(tmp_path, out_dir=str(tmp_path / "fp32"), max_steps=1))
    from vision_ar.precision import cpu_has_native_bf16

    # 'auto' on a CPU: bf16 autocast only where the CPU runs bf16 natively (AVX512-BF16 / AMX), else fp32
    assert seen[0] == ((torch.bfloat16, True) if cpu_has_native_bf16() else (torch.float32, False))


# ----------------------------------------------------------------------------------------------------
# DDP: 2 processes, gloo, CPU
# ----------------------------------------------------------------------------------------------------
def ddp_worker(out_root: str) -> None:
    """Runs under torchrun: a straight 4-step run, and a 2-step run resumed to 4 steps, in one launch."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo")  # created here so both train() calls share it
    rank = dist.get_rank()
    root = Path(out_root)
    kw = dict(batch_size=8, grad_accum=2, ema_decay=0.5, log_every=1)
    train(Regress(), make_data(n=40), cfg_for(root, out_dir=str(root / "straight"), max_steps=4, **kw))
    train(Regress(), make_data(n=40), cfg_for(root, out_dir=str(root / "split"), max_steps=2, **kw))
    res = train(Regress(), make_data(n=40), cfg_for(root, out_dir=str(root / "split"), max_steps=4, **kw))
    torch.save(res.model.state_dict(), root / f"rank{rank}.pt")
    # FSDP2 (fully_shard) through the same loop: sharded weights, full-state checkpoints, exact resume
    kw["fsdp"] = True
    train(Regress(), make_data(n=40), cfg_for(root, out_dir=str(root / "fsdp"), max_steps=4, **kw))
    train(Regress(), make_data(n=40), cfg_for(root, out_dir=str(root / "fsdp_split"), max_steps=2, **kw))
    train(Regress(), make_data(n=40), cfg_for(root, out_dir=str(root / "fsdp_split"), max_steps=4, **kw))
    dist.destroy_process_group()


@pytest.mark.timeout(120)
def test_ddp_and_fsdp_two_processes_agree_and_resume(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(HERE), str(tmp_path)], env=env, capture_output=True, text=True, timeout=110)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert all(torch.equal(r0[k], r1[k]) for k in r0)  # DDP kept the replicas identical
    a = torch.load(tmp_path / "straight" / LATEST, weights_only=True)
    b = torch.load(tmp_path / "split" / LATEST, weights_only=True)
    assert len(a["rng"]) == 2 and a["data"]["world_size"] == 2
    for part in ("model", "optimizer", "ema", "data", "rng"):
        assert _equal(a[part], b[part]), part
    assert [l["step"] for l in read_metrics(tmp_path / "split")] == [1, 2, 3, 4]
    f = torch.load(tmp_path / "fsdp" / LATEST, weights_only=True)
    g = torch.load(tmp_path / "fsdp_split" / LATEST, weights_only=True)
    for part in ("model", "optimizer", "ema", "data", "rng"):
        assert _equal(f[part], g[part]), f"fsdp {part}"
    for k in a["model"]:  # sharding changes reduction order only: FSDP ~ DDP
        torch.testing.assert_close(f["model"][k], a["model"][k], rtol=1e-5, atol=1e-6)


def _equal(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return a == b


if __name__ == "__main__":  # torchrun entry
    ddp_worker(sys.argv[1])
