"""Evaluation without the Inception network: Fréchet distance, IS, precision/recall, sources, bad inputs."""
import json

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import linalg

from vision_ar.cli import main as cli_main
from vision_ar.errors import ConfigError, MissingFileError
from vision_ar.eval.frechet import feature_statistics, frechet_distance
from vision_ar.eval.images import FolderSource, NpzImageSource, npz_keys, to_uint8_nchw, write_adm_npz
from vision_ar.eval.inception import Features, check_finite, resolve_inception_weights
from vision_ar.eval.metrics import compute_metrics, format_table
from vision_ar.eval.reference import Side, load_side, read_statistics, save_statistics, side_from_features
from vision_ar.eval.scores import inception_score, precision_recall


# ----------------------------------------------------------------------------------------------------
# Fréchet distance
# ----------------------------------------------------------------------------------------------------
def _scipy_fd(mu1, s1, mu2, s2):
    covmean = linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def test_frechet_matches_closed_form_well_conditioned():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((500, 16)), rng.standard_normal((400, 16)) * 1.5 + 0.3
    (m1, s1), (m2, s2) = feature_statistics(a), feature_statistics(b)
    assert frechet_distance(m1, s1, m2, s2) == pytest.approx(_scipy_fd(m1, s1, m2, s2), rel=1e-9)
    # diagonal case has a closed form: sum (mu diff)^2 + sum (sqrt(v1) - sqrt(v2))^2
    v1, v2 = rng.uniform(0.5, 2, 8), rng.uniform(0.5, 2, 8)
    exact = 0.25 * 8 + ((np.sqrt(v1) - np.sqrt(v2)) ** 2).sum()
    assert frechet_distance(np.zeros(8), np.diag(v1), np.full(8, 0.5), np.diag(v2)) == pytest.approx(exact, rel=1e-12)


def test_frechet_finite_and_correct_on_singular_covariances():
    rng = np.random.default_rng(1)
    # 6 samples in 64 dims: rank-5 covariances; plus a dead feature (all zeros) on both sides.
    a, b = rng.standard_normal((6, 64)) * 3, rng.standard_normal((6, 64))
    a[:, 0] = b[:, 0] = 0.0
    (m1, s1), (m2, s2) = feature_statistics(a), feature_statistics(b)
    fd = frechet_distance(m1, s1, m2, s2)
    assert np.isfinite(fd)
    # reference in the sample space (exact for low rank): tr sqrt(S1 S2) = nuclear norm of A1 A2^T / sqrt(n1-1)(n2-1)
    a1, a2 = a - a.mean(0), b - b.mean(0)
    tr = np.linalg.svd(a1 @ a2.T, compute_uv=False).sum() / np.sqrt(5 * 5)
    exact = ((m1 - m2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr
    assert fd == pytest.approx(exact, rel=1e-9)
    assert abs(frechet_distance(m1, s1, m1, s1)) < 1e-9 * np.trace(s1)
    # exactly singular, and a tiny negative eigenvalue from round-off
    s_bad = s1 - 1e-12 * np.eye(64)
    assert np.isfinite(frechet_distance(m1, s_bad, m2, s2))


def test_frechet_rejects_bad_inputs():
    mu, sigma = np.zeros(4), np.eye(4)
    with pytest.raises(ConfigError, match="mean vectors differ"):
        frechet_distance(mu, sigma, np.zeros(5), np.eye(5))
    with pytest.raises(ConfigError, match="non-finite"):
        frechet_distance(mu, sigma * np.nan, mu, sigma)
    with pytest.raises(ConfigError, match="at least 2"):
        feature_statistics(np.zeros((1, 4)))


# ----------------------------------------------------------------------------------------------------
# IS and precision / recall
# ----------------------------------------------------------------------------------------------------
def test_inception_score_conventions_and_bounds():
    rng = np.random.default_rng(2)
    logits = rng.standard_normal((40, 7)) * 3
    adm, tf = inception_score(logits, 10, "adm"), inception_score(logits, 10, "torch-fidelity")
    assert 1.0 <= adm["mean"] <= 7.0 and adm["convention"] == "adm"
    assert adm["mean"] != tf["mean"]  # the shuffle changes the groups
    # ADM's own loop on float64: consecutive groups of N // splits
    p = torch.tensor(logits).softmax(1).numpy()
    scores = []
    for i in range(0, 40, 4):
        part = p[i:i + 4]
        scores.append(np.exp(np.mean(np.sum(part * (np.log(part) - np.log(part.mean(0, keepdims=True))), 1))))
    assert adm["mean"] == pytest.approx(np.mean(scores), rel=1e-12)
    # one-hot confident predictions over k equally used classes -> IS = k
    sharp = np.eye(5)[np.arange(50) % 5] * 50.0
    assert inception_score(sharp, 5, "adm")["mean"] == pytest.approx(5.0, rel=1e-6)
    with pytest.raises(ConfigError, match="convention"):
        inception_score(logits, 10, "random")
    with pytest.raises(ConfigError, match="at least 10"):
        inception_score(logits[:5], 10)
    with pytest.raises(ConfigError, match="NaN"):
        inception_score(np.full((20, 3), np.nan))


def test_precision_recall_brute_force():
    rng = np.random.default_rng(3)
    gen, real = rng.standard_normal((30, 5)) + 0.7, rng.standard_normal((25, 5))

    def brute(x, y, k=3):  # share of x inside y's k-NN balls
        dyy = np.linalg.norm(y[:, None] - y[None], axis=-1)
        radii = np.sort(dyy, axis=1)[:, k]
        dxy = np.linalg.norm(x[:, None] - y[None], axis=-1)
        return float((dxy <= radii[None]).any(1).mean())

    pr = precision_recall(gen, real, k=3, device="cpu", rows=7)  # small row blocks exercise the chunking
    assert pr["precision"] == brute(gen, real) and pr["recall"] == brute(real, gen)
    same = precision_recall(real, real, device="cpu")
    assert same["precision"] == 1.0 and same["recall"] == 1.0
    with pytest.raises(ConfigError, match="more than 3"):
        precision_recall(gen[:3], real)


# ----------------------------------------------------------------------------------------------------
# Images and sources
# ----------------------------------------------------------------------------------------------------
def test_image_checks_say_what_was_expected():
    ok = to_uint8_nchw(np.zeros((2, 8, 8, 3), np.uint8))
    assert ok.shape == (2, 3, 8, 8) and ok.dtype == torch.uint8
    f = to_uint8_nchw(torch.full((1, 3, 4, 4), 0.5))
    assert int(f[0, 0, 0, 0]) == 128
    with pytest.raises(ConfigError, match=r"\[0, 1\].*\[-1, 1\]"):
        to_uint8_nchw(torch.full((1, 3, 4, 4), -0.5))
    with pytest.raises(ConfigError, match=r"\[0, 1\].*uint8"):
        to_uint8_nchw(np.full((1, 4, 4, 3), 200.0))
    with pytest.raises(ConfigError, match="dtype"):
        to_uint8_nchw(np.zeros((1, 4, 4, 3), np.int32))
    with pytest.raises(ConfigError, match="3 RGB channels"):
        to_uint8_nchw(np.zeros((1, 4, 4, 1), np.uint8))
    with pytest.raises(ConfigError, match="does not resize"):
        to_uint8_nchw(np.zeros((1, 32, 32, 3), np.uint8), expected_size=256)
    with pytest.raises(ConfigError, match="NaN"):
        to_uint8_nchw(torch.full((1, 3, 4, 4), float("nan")))


def _images(n, size=16, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_folder_and_adm_npz_sources_agree(tmp_path):
    imgs = _images(7)
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, im in enumerate(imgs):
        Image.fromarray(im).save(folder / f"{i:03d}.png")
    path = write_adm_npz(tmp_path / "s.npz", [imgs[:3], imgs[3:]], 7, 16, 16, labels=np.arange(7))
    assert npz_keys(path) == ["arr_0", "arr_1"]
    with np.load(path) as z:
        assert np.array_equal(z["arr_0"], imgs) and np.array_equal(z["arr_1"], np.arange(7))
    a = torch.cat(list(FolderSource(folder).batches(3)))
    b = torch.cat(list(NpzImageSource(path).batches(4)))
    assert torch.equal(a, b) and torch.equal(a, torch.from_numpy(imgs).permute(0, 3, 1, 2))
    assert len(torch.cat(list(NpzImageSource(path).batches(4, limit=5)))) == 5
    with pytest.raises(ConfigError, match="6 images were written but 7"):
        write_adm_npz(tmp_path / "bad.npz", [imgs[:6]], 7, 16, 16)
    assert not (tmp_path / "bad.npz").exists()  # nothing half-written


def test_bad_npz_and_folder_inputs(tmp_path):
    np.savez(tmp_path / "f.npz", arr_0=_images(2).astype(np.float32))
    with pytest.raises(ConfigError, match="dtype float32.*uint8"):
        NpzImageSource(tmp_path / "f.npz")
    np.savez(tmp_path / "nchw.npz", arr_0=_images(2).transpose(0, 3, 1, 2).copy())
    with pytest.raises(ConfigError, match="N x 3 x H x W"):
        NpzImageSource(tmp_path / "nchw.npz")
    np.savez(tmp_path / "mu_only.npz", mu=np.zeros(4))
    with pytest.raises(ConfigError, match=r"missing \['sigma'\]"):
        read_statistics(tmp_path / "mu_only.npz")
    np.savez(tmp_path / "other.npz", foo=np.zeros(3))
    with pytest.raises(ConfigError, match="expected 'arr_0'.*'mu' \\+ 'sigma'"):
        load_side(tmp_path / "other.npz", None)
    np.savez(tmp_path / "half_s.npz", mu=np.zeros(4), sigma=np.eye(4), mu_s=np.zeros(3))
    with pytest.raises(ConfigError, match="sigma_s"):
        read_statistics(tmp_path / "half_s.npz")
    folder = tmp_path / "mixed"
    folder.mkdir()
    Image.fromarray(_images(1, 16)[0]).save(folder / "a.png")
    Image.fromarray(_images(1, 8)[0]).save(folder / "b.png")
    with pytest.raises(ConfigError, match="one size"):
        list(FolderSource(folder).batches(4))
    (folder / "b.png").write_bytes(b"not a png")
    with pytest.raises(ConfigError, match="cannot read image"):
        list(FolderSource(folder).batches(4))
    with pytest.raises(MissingFileError):
        load_side(tmp_path / "absent.npz", None)


def test_nan_features_and_missing_weights_are_clear_errors(monkeypatch):
    with pytest.raises(ConfigError, match="1 images gave NaN"):
        check_finite(np.array([[0.0, 1.0], [np.nan, 2.0]]), "pool features")
    monkeypatch.delenv("VISION_AR_INCEPTION_WEIGHTS", raising=False)
    with pytest.raises(MissingFileError, match="weights-inception-2015-12-05.*--inception-weights"):
        resolve_inception_weights(None)
    monkeypatch.setenv("VISION_AR_INCEPTION_WEIGHTS", "/nonexistent/inception.pth")
    with pytest.raises(MissingFileError, match="VISION_AR_INCEPTION_WEIGHTS"):
        resolve_inception_weights(None)


# ----------------------------------------------------------------------------------------------------
# Metrics assembly and the fid command on statistics files (no Inception needed)
# ----------------------------------------------------------------------------------------------------
def test_compute_metrics_and_statistics_roundtrip(tmp_path, capsys):
    rng = np.random.default_rng(4)
    src = side_from_features(Features(pool=rng.standard_normal((40, 6)), logits=rng.standard_normal((40, 9)),
                                      spatial=rng.standard_normal((40, 3))), "src")
    ref = side_from_features(Features(pool=rng.standard_normal((50, 6)) + 1, spatial=rng.standard_normal((50, 3))),
                             "ref")
    m = compute_metrics(src, ref, isc_splits=10, device="cpu")
    assert set(m) >= {"fid", "sfid", "isc", "isc_std", "precision", "recall"} and "notes" not in m
    assert m["isc_convention"] == "adm"
    assert "IS splits" in format_table(m) and "(adm)" in format_table(m)
    stats = save_statistics(ref, tmp_path / "ref_stats.npz")
    only_stats = compute_metrics(src, load_side(stats, None), device="cpu")
    assert only_stats["fid"] == pytest.approx(m["fid"], rel=1e-12) and "precision" not in only_stats
    assert any("precision/recall" in n for n in only_stats["notes"])
    with pytest.raises(ConfigError, match="same Inception layer"):
        compute_metrics(src, Side("x", np.zeros(4), np.eye(4)))
    # CLI on two statistics files: no Inception weights needed, one JSON line with fid
    save_statistics(src, tmp_path / "src_stats.npz")
    assert cli_main(["fid", str(tmp_path / "src_stats.npz"), str(stats), "--no-progress"]) == 0
    line = capsys.readouterr().out.strip().splitlines()
    assert len(line) == 1
    out = json.loads(line[0])
    assert out["fid"] == pytest.approx(m["fid"], rel=1e-12) and out["sfid"] == pytest.approx(m["sfid"], rel=1e-12)
    # a bad reference fails with exit code 2 and a message, no traceback
    np.savez(tmp_path / "bad.npz", mu=np.zeros(6))
    assert cli_main(["fid", str(tmp_path / "src_stats.npz"), str(tmp_path / "bad.npz")]) == 2
    assert "sigma" in capsys.readouterr().err
