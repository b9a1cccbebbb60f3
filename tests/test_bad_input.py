"""Bad input gets one clear error (a vision_ar error class, no traceback), raised before any work or any write.

Each test feeds one wrong thing through the command a user would type (or the library call behind it) and
checks the message names the problem and the fix, and that nothing was left on disk.
"""
import json
from pathlib import Path

import pytest
import torch

from vision_ar.cli import main
from vision_ar.errors import ConfigError
from vision_ar.models.next_scale import VAR, VARConfig
from vision_ar.models.next_token import GPT, GPTConfig
from vision_ar.pipelines.gpt import GPTPipeline
from vision_ar.pipelines.var import VARPipeline
from vision_ar.tokenizers.multiscale import MultiScaleVQVAE, MultiScaleVQVAEConfig
from vision_ar.tokenizers.vq import VQConfig, VQModel


# ----------------------------------------------------------------------------------------------------
# Tiny random-weight pipelines (8x8 images; nothing downloaded)
# ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def var_folder(tmp_path_factory):
    torch.manual_seed(0)
    # f8: 32x32 Fashion-MNIST images -> the 4x4 last scale (the generator-training tests encode real images)
    vae = MultiScaleVQVAE(MultiScaleVQVAEConfig(vocab_size=32, z_channels=8, ch=32, ch_mult=(1, 1, 1, 1), num_res_blocks=1,
                                                patch_nums=(1, 2, 4), using_sa=False, using_mid_sa=False))
    var = VAR(VARConfig(vocab_size=32, Cvae=8, num_classes=3, depth=1, embed_dim=32, num_heads=1, patch_nums=(1, 2, 4)))
    folder = tmp_path_factory.mktemp("var") / "pipe"
    VARPipeline(vae, var).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def gpt_folder(tmp_path_factory):
    torch.manual_seed(0)
    vq = VQModel(VQConfig(codebook_size=32, codebook_embed_dim=4, encoder_ch_mult=(1, 2), decoder_ch_mult=(1, 2),
                          z_channels=8, ch=32, num_res_blocks=1))
    gpt = GPT(GPTConfig(dim=32, n_layer=1, n_head=1, vocab_size=32, num_classes=3, block_size=16))
    folder = tmp_path_factory.mktemp("gpt") / "pipe"
    GPTPipeline(vq, gpt).save_pretrained(folder)
    return folder


def fails_clearly(capsys, argv, *needles) -> str:
    """The command exits with 2 and one error line that contains every needle."""
    assert main(argv) == 2, argv
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("vision-ar "), err
    for needle in needles:
        assert needle in err, (needle, err)
    return err


# ----------------------------------------------------------------------------------------------------
# Devices
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("device, message", [("bogus", "not a device name"), ("cuda:x", "not a device name")])
def test_unknown_device(var_folder, tmp_path, capsys, device, message):
    out = tmp_path / "o.png"
    fails_clearly(capsys, ["sample", "--model", str(var_folder), "--classes", "0", "--device", device,
                           "--out", str(out)], message, "'cpu'")
    fails_clearly(capsys, ["eval", "--pipeline", str(var_folder), "--ref", "fashion-mnist", "--num", "2",
                           "--device", device, "--out-dir", str(tmp_path / "ev")], message)
    assert not out.exists() and not (tmp_path / "ev").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu(var_folder, tmp_path, capsys):
    fails_clearly(capsys, ["sample", "--model", str(var_folder), "--classes", "0", "--device", "cuda",
                           "--out", str(tmp_path / "o.png")], "none is available", "device='cpu'")
    fails_clearly(capsys, ["eval", "--pipeline", str(var_folder), "--ref", "fashion-mnist", "--num", "2",
                           "--device", "cuda", "--out-dir", str(tmp_path / "ev")], "none is available")
    fails_clearly(capsys, ["train", "tokenizer", "--model", "var-vqvae-fmnist", "--out", str(tmp_path / "t"),
                           "--steps", "1", "--set", "device=cuda"], "none is available")
    assert sorted(p.name for p in tmp_path.iterdir()) == []



# ----------------------------------------------------------------------------------------------------
# Output paths: checked (a temporary file really made) before any work; nothing left behind on failure
# ----------------------------------------------------------------------------------------------------
@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc")
def test_output_that_cannot_be_created(var_folder, capsys, monkeypatch):
    import vision_ar.pipelines as pipelines

    def no_sampling(*a, **k):
        raise AssertionError("the pipeline was loaded although the output cannot be written")

    monkeypatch.setattr(pipelines, "load_pipeline", no_sampling)
    fails_clearly(capsys, ["sample", "--model", str(var_folder), "--classes", "0", "--out", "/proc/x.png"],
                  "/proc", "not writable", "Choose another output path")
    fails_clearly(capsys, ["eval", "--pipeline", str(var_folder), "--ref", "fashion-mnist", "--num", "2",
                           "--out-dir", "/proc/ev"], "not writable")


def test_failed_runs_leave_no_folders(var_folder, tmp_path, capsys):
    fails_clearly(capsys, ["sample", "--model", str(var_folder), "--classes", "7", "--out",
                           str(tmp_path / "new" / "sub" / "o.png")], "out of range")
    fails_clearly(capsys, ["train", "tokenizer", "--model", "var-vqvae-fmnist", "--out", str(tmp_path / "run"),
                           "--steps", "1", "--set", "batch_size=3", "--set", "grad_accum=2"], "batch_size")
    assert list(tmp_path.iterdir()) == []


def test_written_weights_have_the_permissions_of_their_config(tmp_path):
    import os
    import stat

    torch.manual_seed(0)
    VQModel(VQConfig(codebook_size=8, codebook_embed_dim=4, encoder_ch_mult=(1,), decoder_ch_mult=(1,),
                     z_channels=8, ch=32, num_res_blocks=1)).save_pretrained(tmp_path / "m")
    mode = {p.name: stat.S_IMODE(os.stat(p).st_mode) for p in (tmp_path / "m").iterdir()}
    assert mode["model.safetensors"] == mode["config.json"], mode


# ----------------------------------------------------------------------------------------------------
# Training settings
# ----------------------------------------------------------------------------------------------------
TRAIN_TINY = ["train", "tokenizer", "--model", "var-vqvae-fmnist", "--model-set", "vocab_size=32", "--data",
              "fashion-mnist", "--limit", "8", "--set", "batch_size=4", "--set", "progress=false"]


def test_resume_with_changed_settings_needs_the_flag(tmp_path, capsys):
    out = ["--out", str(tmp_path / "run")]
    assert main(TRAIN_TINY + out + ["--steps", "1"]) == 0
    fails_clearly(capsys, TRAIN_TINY + out + ["--steps", "2", "--set", "lr=0.001"], "train.lr: 0.0003 then, 0.001 now",
                  "--allow-changed-settings")
    assert main(TRAIN_TINY + out + ["--steps", "2", "--set", "lr=0.001", "--allow-changed-settings"]) == 0
    assert "train.lr" in (tmp_path / "run" / "resume_log.jsonl").read_text()


def test_training_values_of_the_wrong_type(tmp_path, capsys):
    out = ["--out", str(tmp_path / "run")]
    fails_clearly(capsys, TRAIN_TINY + out + ["--steps", "1", "--set", "lr=abc"], "lr must be a number", "'abc'")
    fails_clearly(capsys, TRAIN_TINY + out + ["--steps", "0"], "max_steps (--steps) must be >= 1", "untrained")
    fails_clearly(capsys, TRAIN_TINY + out + ["--steps", "1", "--model-set", "bogus=3"],
                  "preset 'var-vqvae-fmnist' has no config field 'bogus'", "known fields:", "patch_nums")
    fails_clearly(capsys, TRAIN_TINY + out + ["--steps", "1", "--model-set", "patch_nums=1,2,4"],
                  "patch_nums must be a list", "'1,2,4'")
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"_class": "MultiScaleVQVAE", "patch_nums": "1248", "test_mode": False}))
    fails_clearly(capsys, TRAIN_TINY[:3] + [str(cfg)] + TRAIN_TINY[4:] + out + ["--steps", "1"],
                  "MultiScaleVQVAE config: patch_nums must be a list", "'1248'")
    assert list(tmp_path.iterdir()) == [cfg]


@pytest.mark.parametrize("extra, message", [
    (["--model-set", "bogus=3"], "bogus"),
    (["--set", "batch_size=16"], "fewer than one micro-batch"),
    (["--set", "device=bogus"], "not a device name"),
])
def test_bad_generator_settings_leave_no_run_folder(var_folder, tmp_path, capsys, extra, message):
    fails_clearly(capsys, ["train", "generator", "--model", "var-fmnist", "--tokenizer", str(var_folder / "tokenizer"),
                           "--data", "fashion-mnist", "--limit", "8", "--steps", "1", "--out", str(tmp_path / "gen"),
                           "--model-set", "vocab_size=32", "--model-set", "Cvae=8", "--model-set", "patch_nums=[1,2,4]",
                           *extra], message)
    assert not (tmp_path / "gen").exists()  # no folder, no token cache


# ----------------------------------------------------------------------------------------------------
# Pipeline folders with bad content
# ----------------------------------------------------------------------------------------------------
def copy_of(folder, tmp_path):
    import shutil

    dst = tmp_path / "copy"
    shutil.copytree(folder, dst)
    return dst


def sample_argv(folder, tmp_path, *extra):
    return ["sample", "--model", str(folder), "--classes", "0", "--out", str(tmp_path / "o.png"), *extra]


def test_pipeline_json_with_bad_values(var_folder, tmp_path, capsys):
    folder = copy_of(var_folder, tmp_path)
    cfg = json.loads((folder / "pipeline.json").read_text())
    cfg["defaults"]["guidance_scale"] = "high"
    (folder / "pipeline.json").write_text(json.dumps(cfg))
    fails_clearly(capsys, sample_argv(folder, tmp_path), "pipeline.json", "guidance_scale must be a number", "'high'")
    (folder / "pipeline.json").write_text("{not json")
    fails_clearly(capsys, sample_argv(folder, tmp_path), "pipeline.json is not valid JSON")
    gen_cfg = folder / "generator" / "config.json"
    (folder / "pipeline.json").write_text(json.dumps({**cfg, "defaults": {}}))
    gen_cfg.write_text(json.dumps({**json.loads(gen_cfg.read_text()), "patch_nums": "124"}))
    fails_clearly(capsys, sample_argv(folder, tmp_path), "VAR config: patch_nums must be a list", "'124'")
    assert not (tmp_path / "o.png").exists()


@pytest.mark.parametrize("poison, message", [
    (lambda t: t.index_fill(0, torch.tensor([0]), float("nan")), "non-finite value(s) (NaN)"),
    (lambda t: t.index_fill(0, torch.tensor([0]), float("inf")), "non-finite value(s) (inf)"),
    (lambda t: t.round().to(torch.int64), "torch.int64 vs model torch.float32"),
])
def test_weights_that_cannot_be_right(var_folder, tmp_path, capsys, poison, message):
    from safetensors.torch import load_file, save_file

    folder = copy_of(var_folder, tmp_path)
    path = folder / "generator" / "model.safetensors"
    sd = load_file(str(path))
    name = next(k for k, v in sd.items() if v.is_floating_point() and k.endswith("weight"))
    sd[name] = poison(sd[name])
    save_file(sd, str(path))
    fails_clearly(capsys, sample_argv(folder, tmp_path), name, message)


# ----------------------------------------------------------------------------------------------------
# Sampling options
# ----------------------------------------------------------------------------------------------------
def test_sampler_options(gpt_folder, tmp_path, capsys):
    fails_clearly(capsys, sample_argv(gpt_folder, tmp_path, "--sjd-window", "4"),
                  "--sjd-window only apply with --sampler sjd", "add --sampler sjd")
    fails_clearly(capsys, sample_argv(gpt_folder, tmp_path, "--sjd-init", "vertical", "--sjd-window", "4"),
                  "--sjd-window and --sjd-init")
    err = fails_clearly(capsys, sample_argv(gpt_folder, tmp_path, "--sampler", "bogus"), "unknown sampler 'bogus'")
    help_text = [a.help for a in __import__("vision_ar.cli", fromlist=["x"]).build_parser()._subparsers._group_actions[0]
                 .choices["sample"]._actions if "--sampler" in a.option_strings][0]
    assert help_text.startswith("default | sjd") and "'default'" in err and "'sjd'" in err and "'loop'" not in err
    assert not (tmp_path / "o.png").exists()


def test_uppercase_suffix_writes_the_format_it_names(var_folder, tmp_path):
    assert main(["sample", "--model", str(var_folder), "--classes", "0", "--out", str(tmp_path / "up.PNG")]) == 0
    assert (tmp_path / "up.PNG").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["sample", "--model", str(var_folder), "--classes", "0", "--out", str(tmp_path / "up.JPG")]) == 0
    assert (tmp_path / "up.JPG").read_bytes()[:3] == b"\xff\xd8\xff"


def test_eval_rejected_setting_leaves_no_run_folder(var_folder, tmp_path, capsys):
    base = ["eval", "--pipeline", str(var_folder), "--ref", "fashion-mnist", "--num", "2", "--chunk-size", "2",
            "--no-progress", "--device", "cpu", "--out-dir", str(tmp_path / "ev")]
    fails_clearly(capsys, base + ["--cfg", "nan"], "guidance_scale")
    assert not (tmp_path / "ev").exists()
