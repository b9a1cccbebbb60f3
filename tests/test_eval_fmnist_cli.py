"""`vision-ar eval --ref fashion-mnist`: the classifier metrics through the same sampling + report path.

A stand-in pipeline returns real Fashion-MNIST test images of the requested classes, so accuracy must be high
and the FID near the floor; with the images of another class it must collapse. No Inception weights needed."""
import json

import pytest
import torch

from vision_ar.cli import main as cli_main
from vision_ar.data import FashionMNIST
from vision_ar.pipelines.base import PipelineOutput


class RealImagesPipeline:
    def __init__(self, shift_class=0):
        data = FashionMNIST("test", limit=2000)
        self.by_class = {c: (data.images[data.labels == c].float() / 255.0) for c in range(10)}
        self.shift = shift_class
        self.num_classes = 10

    def __call__(self, class_labels, guidance_scale=None, generator=None, output_type="pt", **kw):
        imgs = []
        for c in class_labels:
            pool = self.by_class[(c + self.shift) % 10]
            i = int(torch.randint(len(pool), (1,), generator=generator))
            imgs.append(pool[i].expand(3, -1, -1))
        return PipelineOutput(images=torch.stack(imgs), labels=list(class_labels))


@pytest.mark.parametrize("shift, good", [(0, True), (3, False)])
def test_eval_fashion_mnist_report(tmp_path, monkeypatch, capsys, shift, good):
    import vision_ar.pipelines as pipelines

    pipe = RealImagesPipeline(shift)
    monkeypatch.setattr(pipelines, "load_pipeline", lambda name, device="cpu", **kw: pipe)
    out = tmp_path / "run"
    assert cli_main(["eval", "--pipeline", "fake", "--ref", "fashion-mnist", "--num", "200", "--chunk-size", "50",
                     "--out-dir", str(out), "--no-progress", "--device", "cpu"]) == 0
    report = json.loads((out / "report.json").read_text())
    m = report["metrics"]
    assert m["n"] == 200 and "accuracy" in capsys.readouterr().out
    if good:
        assert m["accuracy"] > 0.85
    else:
        assert m["accuracy"] < 0.3
