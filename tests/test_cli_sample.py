"""`vision-ar sample` and the pipelines end to end on tiny random-weight models, and their bad-input errors."""
import json
import os

import numpy as np
import pytest
import torch

from vision_ar.cli import main
from vision_ar.models.next_scale import VAR, VARConfig
from vision_ar.pipelines import load_pipeline
from vision_ar.pipelines.var import VARPipeline
from vision_ar.tokenizers.multiscale import MultiScaleVQVAE, MultiScaleVQVAEConfig


@pytest.fixture(scope="module")
def tiny_var_folder(tmp_path_factory):
    torch.manual_seed(0)
    vae = MultiScaleVQVAE(MultiScaleVQVAEConfig(vocab_size=64, z_channels=8, ch=32, ch_mult=(1, 2), num_res_blocks=1,
                                                patch_nums=(1, 2, 4), using_sa=False, using_mid_sa=False))
    var = VAR(VARConfig(vocab_size=64, Cvae=8, num_classes=5, depth=2, embed_dim=64, num_heads=2,
                        patch_nums=(1, 2, 4)))
    folder = tmp_path_factory.mktemp("tiny") / "pipe"
    VARPipeline(vae, var, {"guidance_scale": 1.5}, [f"c{i}" for i in range(5)]).save_pretrained(folder)
    return folder


def test_pipeline_roundtrip_and_determinism(tiny_var_folder):
    pipe = load_pipeline(str(tiny_var_folder))
    a = pipe(class_labels=[0, 4], generator=torch.Generator().manual_seed(3), output_type="np")
    b = pipe(class_labels=[0, 4], generator=torch.Generator().manual_seed(3), output_type="np")
    c = pipe(class_labels=[0, 4], generator=torch.Generator().manual_seed(4), output_type="np")
    assert a.images.shape == (2, 8, 8, 3) and a.images.dtype == np.uint8
    assert np.array_equal(a.images, b.images)
    assert not all(torch.equal(x, y) for x, y in zip(a.tokens, c.tokens))
    pil = pipe(class_labels=[1], generator=torch.Generator().manual_seed(0)).images
    assert pil[0].size == (8, 8)


def test_cli_writes_grid_and_npz(tiny_var_folder, tmp_path, capsys):
    png, npz = tmp_path / "g.png", tmp_path / "s.npz"
    assert main(["sample", "--model", str(tiny_var_folder), "--classes", "0", "1", "2", "--repeat", "2",
                 "--seed", "1", "--out", str(png)]) == 0
    assert png.stat().st_size > 0
    assert main(["sample", "--model", str(tiny_var_folder), "--classes", "0", "1", "--repeat", "2",
                 "--seed", "1", "--out", str(npz), "--batch-size", "3"]) == 0
    data = np.load(npz)
    assert data["arr_0"].shape == (4, 8, 8, 3) and data["arr_0"].dtype == np.uint8
    assert data["labels"].tolist() == [0, 1, 0, 1]
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["n"] == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.png", "s.npz"]  # no temporaries left


@pytest.mark.parametrize("args, message", [
    (["--model", "no-such-model"], "unknown preset"),
    (["--classes", "7"], "out of range"),
    (["--cfg", "-1"], ">= 0"),
    (["--out", "x.gif"], "--out must end"),
    (["--model", "var-d16"], "--vae PATH"),
])
def test_cli_errors_are_one_clear_line(tiny_var_folder, tmp_path, capsys, args, message):
    base = {"--model": str(tiny_var_folder), "--classes": "0", "--out": str(tmp_path / "o.png")}
    for flag, value in zip(args[::2], args[1::2]):
        base[flag] = value
    argv = ["sample"] + [x for kv in base.items() for x in kv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "o.png").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_cli_unwritable_output(tiny_var_folder, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    assert main(["sample", "--model", str(tiny_var_folder), "--classes", "0", "--out", str(locked / "g.png")]) == 2
    assert "not writable" in capsys.readouterr().err


def test_cli_unwritable_output_path_is_a_file(tiny_var_folder, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["sample", "--model", str(tiny_var_folder), "--classes", "0", "--out", str(blocker / "g.png")]) == 2
    assert "output folder" in capsys.readouterr().err


def test_many_images_show_progress_and_one_summary(tiny_var_folder, tmp_path, capsys):
    from vision_ar.pipelines.batches import summarize_stats

    assert main(["sample", "--model", str(tiny_var_folder), "--classes", "0", "1", "2", "3", "4", "--batch-size", "2",
                 "--out", str(tmp_path / "s.npz")]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out.strip().splitlines()[-1])
    assert "sampling" in captured.err and "5/5" in captured.err  # the progress bar, per image
    assert summary["n"] == 5 and summary["batches"] == 3
    assert summary["forward_passes"] == 9 and summary["forward_passes_per_batch"] == {"min": 3, "mean": 3.0, "max": 3}
    assert not any(isinstance(v, list) for v in summary.values())  # statistics, not one item per batch
    assert main(["sample", "--model", str(tiny_var_folder), "--classes", "0", "--out", str(tmp_path / "one.png")]) == 0
    assert "sampling" not in capsys.readouterr().err  # one batch: no bar
    s = summarize_stats([{"forward_passes": 10, "mean_accept_length": 2.0, "seconds": 1.0, "accept_histogram": [1]},
                         {"forward_passes": 6, "mean_accept_length": 4.0, "seconds": 0.5}], sizes=[3, 1])
    assert s == {"batches": 2, "seconds": 1.5, "forward_passes": 16, "mean_accept_length": 2.5,
                 "forward_passes_per_batch": {"min": 6, "mean": 8.0, "max": 10}}
