"""End to end through the real Inception-V3 architecture (random weights saved to a local file): `vision-ar fid`
equals `torch_fidelity.calculate_metrics` on the same images and weights.

Kept small for 2 CPU cores: 4 + 4 images of 24x24 (each is resized to 299x299, the slow part), FID and
precision/recall on the 192-d Inception layer (the 2048-d pool3 path is the same code with a bigger eigen-
decomposition; benchmarks/eval_parity_torch_fidelity.py runs it at full size), IS on the full network's logits.
"""
import json

import numpy as np
import pytest
import torch
import torch_fidelity
from PIL import Image

from vision_ar.cli import main as cli_main
from vision_ar.errors import ConfigError
from vision_ar.eval.inception import InceptionFeatures, save_random_inception_weights

pytestmark = pytest.mark.slow  # ~1 min on 2 busy cores: two Inception passes over 8 images at 299x299

N_IMAGES, SIZE, LAYER, SPLITS = 4, 24, "192", 2


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_e2e")
    weights = save_random_inception_weights(root / "inception_random.pth", seed=0)
    rng = np.random.default_rng(0)
    folders = {}
    for name, shift in (("src", 0), ("ref", 60)):
        folder = root / name
        folder.mkdir()
        fields = torch.nn.functional.interpolate(torch.from_numpy(rng.uniform(0, 195, (N_IMAGES, 3, 3, 3))),
                                                 size=SIZE, mode="bilinear", align_corners=False)
        noisy = fields.permute(0, 2, 3, 1).numpy() + rng.normal(0, 20, (N_IMAGES, SIZE, SIZE, 3)) + shift
        imgs = np.clip(np.round(noisy), 0, 255).astype(np.uint8)
        for i, im in enumerate(imgs):
            Image.fromarray(im).save(folder / f"{i:02d}.png")
        folders[name] = (folder, imgs)
    return root, weights, folders


def _ours(capsys, src, ref, weights, cache, *extra):
    args = ["fid", str(src), str(ref), "--inception-weights", str(weights), "--fid-layer", LAYER,
            "--isc-splits", str(SPLITS), "--cache-dir", str(cache), "--device", "cpu", "--no-progress", *extra]
    assert cli_main(args) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1
    return json.loads(out[0])


def test_fid_command_equals_torch_fidelity(setup, capsys):
    root, weights, folders = setup
    src, ref = folders["src"][0], folders["ref"][0]
    cache = root / "cache"
    # feature_extractor is explicit: torch-fidelity computes precision/recall on VGG16 unless told otherwise
    tf_kwargs = dict(input1=str(src), input2=str(ref), cuda=False, fid=True, isc=True, prc=True,
                     feature_extractor="inception-v3-compat", save_cpu_ram=True,
                     feature_extractor_weights_path=str(weights), feature_layer_fid=LAYER, feature_layer_prc=LAYER,
                     isc_splits=SPLITS, verbose=False, cache=True, cache_root=str(root / "tf_cache"),
                     input1_cache_name="src", input2_cache_name="ref")
    ref_metrics = torch_fidelity.calculate_metrics(samples_shuffle=False, **tf_kwargs)
    ours = _ours(capsys, src, ref, weights, cache)
    assert ours["fid"] == pytest.approx(ref_metrics["frechet_inception_distance"], rel=1e-3, abs=1e-3)
    # random Inception weights give IS close to 1, so compare IS - 1 too (else 1e-3 would be trivially met)
    assert ours["isc"] == pytest.approx(ref_metrics["inception_score_mean"], rel=1e-3, abs=1e-3)
    assert ours["isc"] - 1 == pytest.approx(ref_metrics["inception_score_mean"] - 1, rel=1e-3)
    assert ours["isc"] - 1 > 1e-5
    assert ours["isc_std"] == pytest.approx(ref_metrics["inception_score_std"], rel=1e-3, abs=1e-6)
    assert ours["precision"] == pytest.approx(ref_metrics["precision"], abs=1e-6)
    assert ours["recall"] == pytest.approx(ref_metrics["recall"], abs=1e-6)
    assert ours["isc_convention"] == "adm" and np.isfinite(ours["sfid"])
    assert ours["fid"] > 1e-3  # the two sets differ, so this is not a trivially-zero comparison

    # torch-fidelity's default shuffled split convention (features come from both caches now: cheap)
    shuffled = torch_fidelity.calculate_metrics(samples_shuffle=True, **tf_kwargs)
    ours_tf = _ours(capsys, src, ref, weights, cache, "--isc-convention", "torch-fidelity")
    assert ours_tf["isc"] - 1 == pytest.approx(shuffled["inception_score_mean"] - 1, rel=1e-3)
    assert ours_tf["fid"] == pytest.approx(ours["fid"], rel=1e-12)

    stats_path = root / "ref_stats.npz"
    from vision_ar.eval.reference import load_side, save_statistics

    save_statistics(load_side(ref, InceptionFeatures(weights, device="cpu", fid_layer=LAYER), cache_dir=cache,
                              progress=False), stats_path)
    vs_stats = _ours(capsys, src, stats_path, weights, cache)
    assert vs_stats["fid"] == pytest.approx(ours["fid"], rel=1e-9)
    assert "precision" not in vs_stats and "isc" in vs_stats
    # more samples than SRC holds: refused
    assert cli_main(["fid", str(src), str(ref), "--inception-weights", str(weights), "--num", "5",
                     "--no-progress", "--cache-dir", str(cache), "--fid-layer", LAYER]) == 2
    assert "holds 4 images but 5" in capsys.readouterr().err


def test_spatial_features_follow_adm_layout(setup):
    """sFID features: first 7 channels of Mixed_6d.branch1x1 (TF 'mixed_6/conv'), flattened H, W, C."""
    root, weights, folders = setup
    ex = InceptionFeatures(weights, device="cpu", fid_layer=LAYER)
    grabbed = {}
    ex.model.Mixed_6d.branch1x1.register_forward_hook(lambda m, i, o: grabbed.setdefault("x", o.clone()))
    x = torch.from_numpy(folders["src"][1][:1]).permute(0, 3, 1, 2).contiguous()
    out = ex(x)
    assert out["pool"].shape == (1, int(LAYER)) and out["logits"].shape == (1, 1008)
    assert out["spatial"].shape == (1, 17 * 17 * 7)
    expect = grabbed["x"][:, :7].permute(0, 2, 3, 1).reshape(1, -1)
    assert torch.equal(out["spatial"], expect)
    with pytest.raises(ConfigError, match="uint8"):
        ex(x.float())
