"""`vision-ar edit`: writes the edited PNG; bad files and masks give one clear error and write nothing."""
import json

import numpy as np
import pytest
from PIL import Image

from vision_ar.cli import main


@pytest.fixture
def files(tmp_path):
    img = np.zeros((32, 32), np.uint8)
    img[4:28, 8:24] = 180
    Image.fromarray(img).save(tmp_path / "in.png")
    mask = np.zeros((32, 32), np.uint8)
    mask[8:24, 8:24] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    Image.fromarray(mask[:28, :28]).save(tmp_path / "mask28.png")
    (tmp_path / "notes.png").write_text("not an image")
    return tmp_path


@pytest.mark.parametrize("args,size", [
    (["--mask", "mask.png", "--mode", "inpaint"], (32, 32)),
    (["--box", "8", "8", "24", "24", "--mode", "edit", "--class", "7", "--cfg", "5"], (32, 32)),
    (["--mode", "outpaint", "--direction", "right", "--amount", "16"], (32, 48)),
    (["--mode", "outpaint", "--canvas", "40", "40", "4", "8"], (40, 40)),
])
def test_edit_writes_the_result(files, capsys, args, size):
    out = files / "out.png"
    rc = main(["edit", "--model", "fmnist-var", "--image", str(files / "in.png"), "--seed", "1", "--out", str(out),
               *[str(files / a) if a.endswith(".png") else a for a in args]])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["out"] == str(out) and summary["windows"] >= 1
    result = np.asarray(Image.open(out).convert("L"))
    assert result.shape == size
    src = np.asarray(Image.open(files / "in.png"))
    if "inpaint" in args:
        assert np.array_equal(result[:8], src[:8]) and np.array_equal(result[24:], src[24:])


def test_class_infer_reports_the_class_found(files, capsys):
    rc = main(["edit", "--model", "fmnist-var", "--image", str(files / "in.png"), "--box", "0", "0", "16", "32",
               "--mode", "inpaint", "--class", "infer", "--out", str(files / "out.png")])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    scores = summary["class_log_likelihoods"]
    assert len(scores) == 10 and summary["class"] == max(range(10), key=scores.__getitem__)


def test_edit_is_deterministic_per_seed(files):
    outs = []
    for seed, name in ((3, "a.png"), (3, "b.png"), (4, "c.png")):
        assert main(["edit", "--model", "fmnist-gpt", "--image", str(files / "in.png"), "--mask",
                     str(files / "mask.png"), "--mode", "inpaint", "--seed", str(seed), "--out", str(files / name)]) == 0
        outs.append(np.asarray(Image.open(files / name)))
    assert np.array_equal(outs[0], outs[1]) and not np.array_equal(outs[0], outs[2])


@pytest.mark.parametrize("model", ["fmnist-gpt", "fmnist-var"])
@pytest.mark.parametrize("strategy", ["particles", "passes"])
def test_candidates_and_strategy_flags(files, model, strategy):
    """In-painting the top half: unknown tokens precede known ones, so the candidates are chosen between."""
    out = files / "out.png"
    assert main(["edit", "--model", model, "--image", str(files / "in.png"), "--box", "0", "0", "16", "32",
                 "--mode", "inpaint", "--candidates", "3", "--strategy", strategy, "--out", str(out)]) == 0
    src, result = np.asarray(Image.open(files / "in.png")), np.asarray(Image.open(out).convert("L"))
    assert np.array_equal(result[16:], src[16:])


@pytest.mark.parametrize("args,message", [
    (["--image", "notes.png", "--mask", "mask.png", "--mode", "inpaint"], "image file .*notes.png is not an image"),
    (["--image", "missing.png", "--mask", "mask.png", "--mode", "inpaint"], "missing.png not found"),
    (["--image", "in.png", "--mask", "notes.png", "--mode", "inpaint"], "mask file .*notes.png is not an image"),
    (["--image", "in.png", "--mask", "mask28.png", "--mode", "inpaint"], "the mask is 28x28 but the image is 32x32"),
    (["--image", "in.png", "--mode", "inpaint"], "exactly one of --mask"),
    (["--image", "in.png", "--mask", "mask.png", "--mode", "edit"], "needs --class"),
    (["--image", "in.png", "--mask", "mask.png", "--mode", "edit", "--class", "12"], "out of range"),
    (["--image", "in.png", "--mask", "mask.png", "--mode", "inpaint", "--class", "shoe"], "not a class id"),
    (["--image", "in.png", "--mask", "mask.png", "--mode", "edit", "--class", "infer"], "NEW class"),
    (["--image", "in.png", "--mode", "outpaint"], "exactly one of --direction"),
    (["--image", "in.png", "--mode", "outpaint", "--canvas", "24", "24"], "smaller than the 32x32 image"),
    (["--image", "in.png", "--mode", "outpaint", "--direction", "north"], "unknown out-painting direction"),
    (["--image", "in.png", "--box", "0", "0", "40", "8", "--mode", "inpaint"], "leaves the 32x32 image"),
    (["--image", "in.png", "--mask", "mask.png", "--mode", "inpaint", "--candidates", "0"], "edit_candidates=0"),
])
def test_bad_input_writes_nothing(files, capsys, args, message):
    out = files / "out.png"
    rc = main(["edit", "--model", "fmnist-var", "--out", str(out),
               *[str(files / a) if a.endswith(".png") else a for a in args]])
    err = capsys.readouterr().err
    assert rc == 2 and "vision-ar edit: error:" in err
    import re

    assert re.search(message, err), err
    assert not out.exists() and not list(files.glob(".out.png.*"))


def test_out_must_be_png(files, capsys):
    assert main(["edit", "--model", "fmnist-var", "--image", str(files / "in.png"), "--mask", str(files / "mask.png"),
                 "--mode", "inpaint", "--out", str(files / "out.jpg")]) == 2
    assert ".png" in capsys.readouterr().err
