"""Exact resume: a run killed and started again ends bit-identical to one that never stopped.

First a tiny classifier through a real SIGKILL: the model has dropout (so the torch RNG matters), EMA is
on, gradients are accumulated over 2 micro-batches and the lr follows warmup + cosine; 96 Fashion-MNIST
images make an epoch of 6 steps, so the resumed part crosses an epoch boundary. The killed run is a real
subprocess (this file run as a script) that hangs inside the loss after its step-4 checkpoint and a step-6
log line, until we SIGKILL it.

Then every trainable family and preset kind (`FAMILY_CASES`: multi-scale tokenizer with dead-code restart,
2D VQ tokenizer, the GAN phase, each generator), each cut between two checkpoints and resumed with freshly
built objects, compared on every tensor of the checkpoint (model and discriminator state_dicts with their
buffers, EMA, optimizers, RNGs, data position, module state outside the state_dict) and on the metrics log.
A new family adds one `ResumeCase`.
"""
import functools
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vision_ar.io import PretrainedMixin
from vision_ar.train import TrainConfig, TrainTask, train
from vision_ar.train.checkpoint import LATEST, METRICS

HERE = Path(__file__).resolve()


# ----------------------------------------------------------------------------------------------------
# The tiny run, shared by the test process and the subprocess
# ----------------------------------------------------------------------------------------------------
class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 8, 3, 2, 1), nn.Conv2d(8, 16, 3, 2, 1)
        self.norm = nn.GroupNorm(4, 16)
        self.drop = nn.Dropout(0.3)
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        x = self.drop(self.norm(F.gelu(self.conv2(F.gelu(self.conv1(x))))))
        return self.head(x.mean((2, 3)))


class ClassifyTask(TrainTask):
    def __init__(self, model, hang_at_step=None, marker=None):
        super().__init__(model)
        self.hang_at_step, self.marker = hang_at_step, marker

    def loss(self, model, batch, step):
        if step == self.hang_at_step:  # the subprocess waits here to be killed
            Path(self.marker).write_text("hanging")
            time.sleep(120)
        x, y = batch
        logits = model(x)
        return F.cross_entropy(logits, y), {"acc": (logits.argmax(1) == y).float().mean().item()}


def run_config(out_dir, max_steps=10) -> TrainConfig:
    return TrainConfig(out_dir=str(out_dir), max_steps=max_steps, batch_size=16, grad_accum=2, lr=3e-3,
                       weight_decay=0.05, warmup_steps=2, lr_schedule="cosine", min_lr_ratio=0.1, grad_clip=0.5,
                       ema_decay=0.8, ema_warmup=True, ckpt_every=4, log_every=2, seed=7, progress=False)


def run(out_dir, max_steps=10, hang_at_step=None, marker=None):
    from vision_ar.data import FashionMNIST

    torch.set_num_threads(1)  # the same thread count in every process: identical float reductions
    torch.manual_seed(0)
    task = ClassifyTask(TinyNet(), hang_at_step, marker)
    return train(task, FashionMNIST("train", limit=96), run_config(out_dir, max_steps))


def load(out_dir) -> dict:
    return torch.load(Path(out_dir) / LATEST, map_location="cpu", weights_only=True)


def assert_same_state(a, b, path="ckpt"):
    """Recursive torch.equal over checkpoint dicts (RNG states, optimizer state, EMA, data position)."""
    if isinstance(a, torch.Tensor):
        if not (isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)):
            raise AssertionError(f"{path} differs")
    elif isinstance(a, dict):
        assert set(a) == set(b), f"{path}: keys {sorted(set(a) ^ set(b))}"
        for k in a:
            if k != "config":  # holds out_dir, which differs between the two runs
                assert_same_state(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_state(x, y, f"{path}[{i}]")
    else:
        assert a == b, f"{path}: {a} != {b}"


needs_fmnist = pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist/train-labels-idx1-ubyte.gz").is_file(),
                                  reason="apt-get install -y dataset-fashion-mnist")


# ----------------------------------------------------------------------------------------------------
# Tests
# ----------------------------------------------------------------------------------------------------
@needs_fmnist
@pytest.mark.timeout(120)
def test_sigkilled_run_resumes_bit_identical(tmp_path):
    torch.set_num_threads(1)
    ref = run(tmp_path / "ref")  # uninterrupted, in this process
    assert ref.step == 10

    killed, marker = tmp_path / "killed", tmp_path / "hanging"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(HERE), str(killed), "10", "6", str(marker)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 90
        while not marker.exists():
            if proc.poll() is not None:
                pytest.fail(f"the subprocess ended early:\n{proc.stdout.read().decode()[-3000:]}")
            if time.time() > deadline:
                pytest.fail("the subprocess never reached step 6")
            time.sleep(0.1)
        os.kill(proc.pid, signal.SIGKILL)  # a real, unannounced kill
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert load(killed)["step"] == 4  # the last checkpoint before the kill
    lines = [json.loads(l) for l in (killed / METRICS).read_text().splitlines()]
    assert [l["step"] for l in lines] == [2, 4, 6]  # step 6 was logged, then lost with the kill

    resumed = run(killed)  # same call: continues from latest.pt
    assert resumed.step == 10
    a, b = load(tmp_path / "ref"), load(killed)
    assert_same_state(a, b)  # model, EMA, optimizer, data position, every RNG state
    for (n, p), q in zip(ref.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(p, q), n
    for p, q in zip(ref.ema_model.parameters(), resumed.ema_model.parameters()):
        assert torch.equal(p, q)
    # metrics.jsonl: exactly one line per log step, the lost step-6 line replaced by the resumed run's
    ref_lines = [json.loads(l) for l in (tmp_path / "ref" / METRICS).read_text().splitlines()]
    res_lines = [json.loads(l) for l in (killed / METRICS).read_text().splitlines()]
    assert [l["step"] for l in res_lines] == [2, 4, 6, 8, 10] == [l["step"] for l in ref_lines]
    assert [l["loss"] for l in res_lines] == [l["loss"] for l in ref_lines]
    # a second call at max_steps does no work and leaves the weights alone
    again = run(killed)
    assert again.step == 10
    assert_same_state(load(killed)["model"], a["model"])


class FolderNet(TinyNet, PretrainedMixin):
    """TinyNet that saves itself as a folder: the loop writes out_dir/final from the EMA weights."""

    from dataclasses import dataclass as _dc

    @_dc
    class Config:
        width: int = 8

    config_class = Config

    def __init__(self, config=None):
        super().__init__()
        self.config = config or self.Config()


@needs_fmnist
def test_interrupted_in_process_resume_and_final_folder(tmp_path):
    """The same guarantee through an exception after step 5 (a checkpoint at 4, keep_last history), and the
    final EMA folder."""
    from vision_ar.data import FashionMNIST

    torch.set_num_threads(1)
    data = FashionMNIST("train", limit=96)

    def make(out, hang=None):
        torch.manual_seed(0)
        cfg = run_config(out, max_steps=8)
        cfg.keep_last_ckpts = 1
        return ClassifyTask(FolderNet(), hang, None), cfg

    class Stop(Exception):
        pass

    task, cfg = make(tmp_path / "ref")
    train(task, data, cfg)
    task, cfg = make(tmp_path / "cut")
    task.loss = (lambda orig: lambda model, batch, step: (_ for _ in ()).throw(Stop()) if step == 5
                 else orig(model, batch, step))(task.loss)
    with pytest.raises(Stop):
        train(task, data, cfg)
    assert load(tmp_path / "cut")["step"] == 4
    task, cfg = make(tmp_path / "cut")
    result = train(task, data, cfg)
    assert_same_state(load(tmp_path / "ref"), load(tmp_path / "cut"))
    assert sorted(p.name for p in (tmp_path / "cut").glob("ckpt_*.pt")) == ["ckpt_00000008.pt"]
    final = FolderNet.from_pretrained(tmp_path / "cut" / "final")
    for p, q in zip(final.parameters(), result.ema_model.parameters()):
        assert torch.equal(p, q)


def test_a_paused_run_continues_exactly(tmp_path):
    """pause_at_step splits a run into sittings: it stops after that step's checkpoint (between the regular ones)
    with no final folder, and the same command without it continues to the uninterrupted run's state."""
    from vision_ar.data import FashionMNIST

    torch.set_num_threads(1)
    data = FashionMNIST("train", limit=96)

    def go(out, **changes):
        torch.manual_seed(0)
        cfg = run_config(out, max_steps=8)
        for k, v in changes.items():
            setattr(cfg, k, v)
        return train(ClassifyTask(FolderNet(), None, None), data, cfg)

    go(tmp_path / "ref")
    paused = go(tmp_path / "cut", pause_at_step=3)
    assert not paused.finished and paused.step == 3 and load(tmp_path / "cut")["step"] == 3
    assert not (tmp_path / "cut" / "final").exists()
    assert go(tmp_path / "cut", pause_at_step=3).step == 3  # already there: nothing to do, still paused
    assert go(tmp_path / "cut").finished
    assert_same_state(load(tmp_path / "ref"), load(tmp_path / "cut"))
    assert metrics_without_timing(tmp_path / "ref") == metrics_without_timing(tmp_path / "cut")
    assert not (tmp_path / "cut" / "resume_log.jsonl").exists()  # pausing is not a changed setting


@needs_fmnist
def test_the_same_command_twice_gives_the_same_weights(tmp_path):
    """Model initialisation is seeded from the run's seed too (not by whatever ran before in the process)."""
    from vision_ar.cli import main
    from vision_ar.io import load_checkpoint

    torch.set_num_threads(1)

    def run_cli(out):
        argv = ["train", "tokenizer", "--model", "var-vqvae-fmnist", "--model-set", "vocab_size=64", "--data",
                "fashion-mnist", "--limit", "16", "--steps", "2", "--out", str(out), "--set", "batch_size=8",
                "--set", "progress=false", "--set", "log_every=1"]
        assert main(argv) == 0
        return load_checkpoint(out / "final" / "model.safetensors")

    a = run_cli(tmp_path / "a")
    torch.rand(100)  # the process's global RNG is somewhere else now
    b = run_cli(tmp_path / "b")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    la, lb = ([json.loads(l)["loss"] for l in (tmp_path / d / METRICS).read_text().splitlines()] for d in "ab")
    assert la == lb
    # another seed gives another initialisation
    argv = ["train", "tokenizer", "--model", "var-vqvae-fmnist", "--model-set", "vocab_size=64", "--data",
            "fashion-mnist", "--limit", "16", "--steps", "1", "--out", str(tmp_path / "c"), "--set", "batch_size=8",
            "--set", "progress=false", "--set", "seed=1"]
    assert main(argv) == 0
    c = load_checkpoint(tmp_path / "c" / "final" / "model.safetensors")
    assert not torch.equal(c["encoder.conv_in.weight"], a["encoder.conv_in.weight"])


# ----------------------------------------------------------------------------------------------------
# Every trainable family: cut between two checkpoints, resumed with fresh objects, bit-identical
# ----------------------------------------------------------------------------------------------------
@dataclass
class ResumeCase:
    """One trainable family or preset kind. `build()` returns (task, dataset) and is called right after the
    run's seeding, as a recipe does; `settings` override the shared TrainConfig below."""

    name: str
    build: Callable[[], tuple]
    settings: dict = field(default_factory=dict)
    needs_fmnist: bool = False


@functools.lru_cache(maxsize=None)
def fmnist_images(n=16):  # read once: opening the archive costs seconds, the dataset is never written
    from vision_ar.data import FashionMNIST

    return FashionMNIST("train", limit=n)


def random_codes(n, length, vocab, classes=10, seed=0):
    """Stand-in cached codes (tokens (L,), label) for generator training: what _FlatTokens hands the loop."""
    g = torch.Generator().manual_seed(seed)
    return torch.utils.data.TensorDataset(torch.randint(vocab, (n, length), generator=g),
                                          torch.randint(classes, (n,), generator=g))


def multiscale_tokenizer(**overrides):
    from vision_ar.registry import create

    return create("var-vqvae-fmnist", **{"vocab_size": 64, "z_channels": 8, "ch": 32, **overrides})


def case_multiscale_tokenizer():
    from vision_ar.train.tokenizer_task import TokenizerTask

    tok = multiscale_tokenizer(dead_code_restart=2).train().requires_grad_(True)  # restarts before and after the cut
    return TokenizerTask(tok), fmnist_images()


def case_vq_tokenizer():
    from vision_ar.registry import create
    from vision_ar.train.tokenizer_task import TokenizerTask

    tok = create("vq-fmnist", codebook_size=64, ch=32, z_channels=16).train().requires_grad_(True)
    return TokenizerTask(tok), fmnist_images()


def case_gan_tokenizer():
    from vision_ar.train.tokenizer_task import TokenizerLossConfig, TokenizerTask

    tok = multiscale_tokenizer().train().requires_grad_(True)
    # the GAN phase starts at step 2, before the checkpoint the resumed run starts from
    return TokenizerTask(tok, TokenizerLossConfig(disc_weight=0.1, disc_start=2, disc_channels=8)), fmnist_images()


def case_var_generator():
    from vision_ar.registry import create
    from vision_ar.train.generator_tasks import NextScaleTask

    vae = multiscale_tokenizer()
    var = create("var-fmnist", vocab_size=64, Cvae=8, depth=1, embed_dim=32, num_heads=1, drop_rate=0.1)
    return NextScaleTask(var, vae), random_codes(16, var.config.L, 64)


def case_gpt_generator():
    from vision_ar.registry import create
    from vision_ar.train.generator_tasks import NextTokenTask

    gpt = create("gpt-fmnist", vocab_size=64, n_layer=1, dim=32, n_head=1, token_dropout_p=0.1, resid_dropout_p=0.1)
    return NextTokenTask(gpt), random_codes(16, 64, 64)


def tiny_kl_tokenizer():
    from vision_ar.tokenizers.kl import KLConfig, KLVAE

    # f2 on 32x32 images: a 16x16x4 latent map
    return KLVAE(KLConfig(latent_channels=4, ch=32, ch_mult=(1, 2), num_res_blocks=1, encoder_attn_levels=()))


def case_kl_tokenizer():
    from vision_ar.train.tokenizer_task import TokenizerTask

    return TokenizerTask(tiny_kl_tokenizer().train().requires_grad_(True)), fmnist_images()


def case_xar_generator():
    from vision_ar.models.next_x import XAR, XARConfig
    from vision_ar.train.flow_task import NextXTask

    # cached posterior moments [mean | logvar] (B, 2*4*4*4): every step draws a fresh latent sample, so the
    # global RNG at the cut matters, as do the per-entity times and noise drawn inside the forward
    xar = XAR(XARConfig(latent_channels=4, grid_size=4, num_classes=10, encoder_embed_dim=32, encoder_depth=1,
                        encoder_num_heads=2, decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2,
                        entity="cell", entity_size=2))
    vae = tiny_kl_tokenizer()
    g = torch.Generator().manual_seed(0)
    moments = torch.cat([torch.randn(16, 64, generator=g), torch.full((16, 64), -2.0)], dim=1)
    return NextXTask(xar, vae), torch.utils.data.TensorDataset(moments, torch.randint(10, (16,), generator=g))


FAMILY_CASES = [
    ResumeCase("multiscale-tokenizer-dead-code-restart", case_multiscale_tokenizer, needs_fmnist=True),
    ResumeCase("vq-tokenizer", case_vq_tokenizer, needs_fmnist=True),
    ResumeCase("gan-tokenizer", case_gan_tokenizer, needs_fmnist=True),
    ResumeCase("var-generator", case_var_generator),
    ResumeCase("gpt-generator", case_gpt_generator),
    ResumeCase("kl-tokenizer", case_kl_tokenizer, needs_fmnist=True),
    ResumeCase("xar-generator", case_xar_generator),
]

# 16 samples / batch 4 = 4 steps per epoch; checkpoints at 3 and 6; the first run dies in step 5 (after the
# step-4 log line, which the resumed run must replace), so the resumed part crosses an epoch boundary and
# starts with a metrics line half summed.
MAX_STEPS, CUT_AT = 8, 5
FAMILY_SETTINGS = dict(max_steps=MAX_STEPS, batch_size=4, grad_accum=2, lr=2e-3, warmup_steps=2, ema_decay=0.9,
                       ema_warmup=True, ckpt_every=3, log_every=2, seed=3, progress=False)


class Killed(Exception):
    pass


def run_case(case: ResumeCase, out_dir: Path, die_at: int | None = None):
    from vision_ar.train.checkpoint import seed_everything

    cfg = TrainConfig(out_dir=str(out_dir), **{**FAMILY_SETTINGS, **case.settings})
    seed_everything(cfg.seed)
    task, data = case.build()
    if die_at is not None:
        loss = task.loss

        def dying_loss(model, batch, step):
            if step == die_at:
                raise Killed(step)
            return loss(model, batch, step)

        task.loss = dying_loss
    return train(task, data, cfg)


def metrics_without_timing(out_dir: Path) -> list[dict]:
    lines = [json.loads(l) for l in (out_dir / METRICS).read_text().splitlines()]
    return [{k: v for k, v in l.items() if k != "throughput"} for l in lines]


@pytest.mark.parametrize("case", FAMILY_CASES, ids=lambda c: c.name)
@pytest.mark.timeout(180)
def test_every_family_resumes_bit_identical(tmp_path, case):
    if case.needs_fmnist and not Path("/usr/share/datasets/fashion-mnist/train-labels-idx1-ubyte.gz").is_file():
        pytest.skip("apt-get install -y dataset-fashion-mnist")
    torch.set_num_threads(1)
    ref = run_case(case, tmp_path / "ref")
    with pytest.raises(Killed):
        run_case(case, tmp_path / "cut", die_at=CUT_AT)
    assert load(tmp_path / "cut")["step"] == 3
    resumed = run_case(case, tmp_path / "cut")  # fresh task, model and data: all state comes from latest.pt
    assert resumed.step == ref.step == MAX_STEPS

    a, b = load(tmp_path / "ref"), load(tmp_path / "cut")
    assert_same_state(a, b)  # every tensor and buffer: model, discriminator, EMA, optimizers, RNGs, data, modules
    assert_same_state(ref.model.state_dict(), resumed.model.state_dict(), "model")
    assert_same_state(ref.ema_model.state_dict(), resumed.ema_model.state_dict(), "ema_model")
    if a["discriminator"] is not None:
        assert a["disc_optimizer"]["state"], "the GAN phase never trained the discriminator"
    assert metrics_without_timing(tmp_path / "ref") == metrics_without_timing(tmp_path / "cut")
    assert [l["step"] for l in metrics_without_timing(tmp_path / "cut")] == [2, 4, 6, 8]


@needs_fmnist
def test_gan_phase_starts_at_one_step_for_both_players(tmp_path):
    """The adversarial term and the discriminator's training start at the same step (the task's disc_start)."""
    torch.set_num_threads(1)
    run_case(ResumeCase("gan", case_gan_tokenizer, settings=dict(max_steps=4, log_every=1)), tmp_path / "gan")
    lines = metrics_without_timing(tmp_path / "gan")
    assert [("g_adv" in l, "disc_loss" in l) for l in lines] == [(False, False)] * 2 + [(True, True)] * 2


def test_module_state_outside_the_state_dict_is_saved(tmp_path):
    """The multi-scale quantizer's step counter stays out of its (official) state_dict, yet checkpoints hold it."""
    from vision_ar.train.checkpoint import module_training_state

    torch.set_num_threads(1)
    tok = multiscale_tokenizer().train()
    assert not any("record_hit" in k for k in tok.state_dict())
    assert module_training_state(tok) == {"quantize": {"record_hit": 0}}
    tok(torch.rand(2, 3, 32, 32) * 2 - 1)
    assert module_training_state(tok) == {"quantize": {"record_hit": 1}}
    case = ResumeCase("var-generator", case_var_generator, settings=dict(max_steps=2))
    run_case(case, tmp_path / "r")  # the frozen tokenizer of a generator task is not the trained model
    assert load(tmp_path / "r")["module_state"] == {"model": {}, "discriminator": {}}


if __name__ == "__main__":  # subprocess entry: OUT_DIR MAX_STEPS HANG_AT_STEP MARKER
    out, steps, hang, mark = sys.argv[1:5]
    run(out, int(steps), int(hang), mark)
