"""Fashion-MNIST domain metrics: the shipped classifier, accuracy, classifier-feature FID, input checks,
the training script's folder writing and the quality benchmark's .npz path."""
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from vision_ar.errors import ConfigError, MissingFileError
from vision_ar.eval.fmnist_classifier import FashionMNISTClassifier, FashionMNISTClassifierConfig
from vision_ar.eval.fmnist_metrics import DEFAULT_WEIGHTS, FashionMNISTEvaluator, load_split_images

REPO = Path(__file__).resolve().parents[1]
N_SUBSET = 2000


def _load_script(rel: str):
    spec = importlib.util.spec_from_file_location(Path(rel).stem, REPO / rel)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def test_split():
    try:
        return load_split_images("test")
    except MissingFileError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
    """One statistics cache for the benchmark tests, so the test split is embedded once, not per test."""
    return tmp_path_factory.mktemp("fmnist_cache")


@pytest.fixture(scope="module")
def evaluator(shared_cache):
    # The shipped classifier. Its cache is the one the benchmark finds through VISION_AR_CACHE, so the 10k test
    # images are embedded once for the whole file.
    return FashionMNISTEvaluator(cache_dir=shared_cache / "eval_features")


# ----------------------------------------------------------------------------------------------------
# Shipped classifier and metrics
# ----------------------------------------------------------------------------------------------------
def test_shipped_classifier_is_accurate(evaluator, test_split):
    images, labels = test_split
    assert (DEFAULT_WEIGHTS / "config.json").is_file()
    acc = evaluator.accuracy(images[:N_SUBSET], labels[:N_SUBSET])
    assert acc >= 0.90, acc


def test_fid_real_small_noise_large(evaluator, test_split):
    images, _ = test_split
    fid_real = evaluator.fid(images[:N_SUBSET])
    noise = torch.rand(N_SUBSET, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    fid_noise = evaluator.fid(noise)
    assert 0 <= fid_real < 0.05 * fid_noise, (fid_real, fid_noise)
    # Shuffled labels: the same images keep their FID but lose their accuracy.
    assert evaluator.accuracy(images[:N_SUBSET], torch.randint(0, 10, (N_SUBSET,))) < 0.3


def test_evaluate_row(evaluator, test_split):
    images, labels = test_split
    out = evaluator.evaluate(images[:500], labels[:500])
    assert set(out) == {"accuracy", "fid", "fid_floor_train_vs_test", "n"} and out["n"] == 500
    assert out["accuracy"] >= 0.85
    # Test images vs test are at least as close as train images vs test (both at N=500) give or take noise.
    assert 0 < out["fid_floor_train_vs_test"] and out["fid"] < 2 * out["fid_floor_train_vs_test"]


def test_input_layouts_agree(evaluator, test_split):
    images = test_split[0][:16]
    f = evaluator.features(images)
    assert f.shape == (16, evaluator.model.config.feature_dim)
    torch.testing.assert_close(evaluator.features(images[:, :1]), f)  # one grey channel == repeated to 3
    adm = ((images + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()  # N,H,W,3 uint8
    torch.testing.assert_close(evaluator.features(adm), f, atol=1e-4, rtol=1e-4)


# ----------------------------------------------------------------------------------------------------
# Bad inputs
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad, message", [
    (torch.zeros(4, 3, 28, 28), "32"),                   # unpadded 28x28
    (torch.zeros(3, 32, 32), "4 dims"),                  # a single image without the batch dim
    (torch.zeros(4, 2, 32, 32), "B,3,32,32"),            # wrong channel count
    (torch.full((4, 3, 32, 32), 200.0), "[0, 255]"),     # float pixels in 0..255
    (torch.rand(16, 3, 32, 32), "[0, 1]"),               # a pipeline's output_type="pt" without x * 2 - 1
    (torch.full((4, 3, 32, 32), float("nan")), "NaN"),
    (torch.zeros(4, 3, 32, 32, dtype=torch.int32), "dtype"),
])
def test_bad_images_raise(evaluator, bad, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        evaluator.features(bad)


@pytest.mark.parametrize("labels, message", [
    ([0, 1, 2, 10], "out of range"),
    ([0, 1, -1, 3], "out of range"),
    ([0, 1, 2], "4 class ids"),
    ([0.0, 1.0, 2.0, 3.0], "integer"),
])
def test_bad_labels_raise(evaluator, labels, message):
    with pytest.raises(ConfigError, match=message):
        evaluator.evaluate(torch.zeros(4, 3, 32, 32) - 1, labels)


def test_bad_ref_and_missing_weights(evaluator, tmp_path):
    with pytest.raises(ConfigError, match="'test' or 'train'"):
        evaluator.fid(torch.zeros(4, 3, 32, 32) - 1, ref="val")
    with pytest.raises(MissingFileError, match="config.json"):
        FashionMNISTEvaluator(tmp_path / "nothing_here")


# ----------------------------------------------------------------------------------------------------
# Reference statistics cache
# ----------------------------------------------------------------------------------------------------
def test_reference_statistics_are_cached(tmp_path, test_split):
    ev = FashionMNISTEvaluator(cache_dir=tmp_path)
    mu, sigma = ev.floor_statistics(200)
    files = list(tmp_path.glob("fmnist-clf*-train200*.npz"))
    assert len(files) == 1
    again = FashionMNISTEvaluator(cache_dir=tmp_path)
    again.features = lambda images: pytest.fail("statistics recomputed instead of read from the cache")
    mu2, sigma2 = again.floor_statistics(200)
    np.testing.assert_array_equal(mu, mu2)
    np.testing.assert_array_equal(sigma, sigma2)


# ----------------------------------------------------------------------------------------------------
# Training script and benchmark
# ----------------------------------------------------------------------------------------------------
def test_random_shift_flip_keeps_pixels_and_background():
    train = _load_script("scripts/train_fmnist_classifier.py")
    x = torch.rand(64, 1, 32, 32) * 2 - 1
    x[..., :2, :] = x[..., -2:, :] = -1  # padded border, as in the data
    x[..., :, :2] = x[..., :, -2:] = -1
    y = train.random_shift_flip(x, 2, torch.Generator().manual_seed(0))
    assert y.shape == x.shape
    # A shift of <= 2 pixels moves only background out of the frame: the multiset of values is kept.
    torch.testing.assert_close(y.flatten(1).sort(1).values, x.flatten(1).sort(1).values)
    assert not torch.equal(y, x)


def test_save_folder_atomically_replaces_whole_folder(tmp_path):
    train = _load_script("scripts/train_fmnist_classifier.py")
    model = FashionMNISTClassifier(FashionMNISTClassifierConfig(widths=(4, 8), feature_dim=16)).eval()
    out = tmp_path / "clf"
    out.mkdir()
    (out / "stale.txt").write_text("from an older run")
    train.save_folder_atomically(model, out, {"_test_accuracy": 0.5})
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    assert [p.name for p in tmp_path.iterdir()] == ["clf"]  # no temporary folders left behind
    loaded = FashionMNISTClassifier.from_pretrained(out)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    torch.testing.assert_close(loaded(x), model(x))
    assert json.loads((out / "config.json").read_text())["_test_accuracy"] == 0.5


def test_benchmark_scores_an_npz(tmp_path, monkeypatch, test_split, shared_cache):
    monkeypatch.setenv("VISION_AR_CACHE", str(shared_cache))
    bench = _load_script("benchmarks/fmnist_quality.py")
    images, labels = test_split
    arr = ((images[:300] + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    np.savez(tmp_path / "samples.npz", arr_0=arr, labels=labels[:300].numpy())
    row = bench.main(["--npz", str(tmp_path / "samples.npz"), "--device", "cpu", "--out", str(tmp_path / "r.jsonl")])
    assert row["n"] == 300 and row["accuracy"] >= 0.85 and row["fid"] >= 0
    assert json.loads((tmp_path / "r.jsonl").read_text()) == row
    np.savez(tmp_path / "nolabels.npz", arr_0=arr)
    with pytest.raises(ConfigError, match="labels"):
        bench.main(["--npz", str(tmp_path / "nolabels.npz"), "--device", "cpu"])


def test_benchmark_generates_balanced_seeded_batches(tmp_path, monkeypatch, test_split, shared_cache):
    """The pipeline path: balanced labels, batching, one generator, [0, 1] output mapped to [-1, 1]."""
    import vision_ar.pipelines as pipelines

    images, labels = test_split
    by_class = {c: images[labels == c] for c in range(10)}
    calls = []

    class StandInPipeline:  # returns real test images of the asked classes, like a perfect generator
        def __call__(self, class_labels, generator, output_type, guidance_scale=None):
            calls.append((list(class_labels), guidance_scale, output_type))
            pick = torch.randint(0, 900, (len(class_labels),), generator=generator)
            x = torch.stack([by_class[c][int(i)] for c, i in zip(class_labels, pick)])
            return pipelines.PipelineOutput(images=(x + 1) / 2, labels=list(class_labels))

    monkeypatch.setattr(pipelines, "load_pipeline", lambda name, device="cpu": StandInPipeline())
    monkeypatch.setenv("VISION_AR_CACHE", str(shared_cache))
    bench = _load_script("benchmarks/fmnist_quality.py")
    row = bench.main(["--model", "stand-in", "--cfg", "2.5", "--n", "250", "--batch-size", "100", "--device", "cpu",
                      "--save-samples", str(tmp_path / "s.npz")])
    assert [len(c[0]) for c in calls] == [100, 100, 50] and all(c[1:] == (2.5, "pt") for c in calls)
    assert sum((c[0] for c in calls), []) == [i % 10 for i in range(250)]
    assert row["model"] == "stand-in" and row["cfg"] == 2.5 and row["n"] == 250 and row["accuracy"] >= 0.85
    with np.load(tmp_path / "s.npz") as z:
        assert z["arr_0"].shape == (250, 32, 32, 3) and z["arr_0"].dtype == np.uint8
        np.testing.assert_array_equal(z["labels"], np.arange(250) % 10)
    # The saved ADM file (uint8, exact for these images) scores like the in-memory samples.
    again = bench.main(["--npz", str(tmp_path / "s.npz"), "--device", "cpu"])
    assert again["accuracy"] == row["accuracy"] and abs(again["fid"] - row["fid"]) < 1e-3
