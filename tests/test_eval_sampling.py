"""The distributed sample writer: determinism across world sizes, atomic shards, resume, exact-once export."""
import json

import numpy as np
import pytest
import torch

from vision_ar.cli import main as cli_main
from vision_ar.errors import ConfigError
from vision_ar.eval.sample_writer import (SampleSpec, check_complete, chunk_seed, export_adm_npz, generate_samples,
                                          shard_path)
from vision_ar.pipelines.base import PipelineOutput


class FakePipeline:
    """Follows the pipeline interface; images depend on labels and on the generator's draws, batched like a
    real sampler (one draw for the whole batch)."""

    def __init__(self, num_classes=10, size=8, fail_after=None, value_range=(0.0, 1.0)):
        self.num_classes, self.size, self.calls, self.fail_after = num_classes, size, 0, fail_after
        self.value_range = value_range
        self.seen_kwargs = []

    def __call__(self, class_labels, guidance_scale=4.0, generator=None, output_type="pil", **kw):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt("simulated kill")
        self.calls += 1
        self.seen_kwargs.append(dict(guidance_scale=guidance_scale, **kw))
        labels = torch.tensor(class_labels, dtype=torch.float32)
        noise = torch.rand(len(class_labels), 3, self.size, self.size, generator=generator)
        img = 0.5 * noise + 0.5 * (labels / self.num_classes)[:, None, None, None]
        lo, hi = self.value_range
        return PipelineOutput(images=img * (hi - lo) + lo, labels=list(class_labels))


def _run(tmp, spec, world, **kw):
    pipe = FakePipeline(num_classes=spec.num_classes)
    for rank in range(world):  # the ranks of a torchrun job, one after another
        generate_samples(pipe, tmp, spec, rank=rank, world_size=world, progress=False, **kw)
    return export_adm_npz(tmp, spec, tmp / "samples.npz", progress=False)


def test_samples_do_not_depend_on_world_size(tmp_path):
    spec = SampleSpec(num=23, num_classes=5, chunk_size=4, base_seed=7, pipeline_kwargs={"guidance_scale": 2.0})
    outs = []
    for world in (1, 3):
        with np.load(_run(tmp_path / f"w{world}", spec, world)) as z:
            outs.append((z["arr_0"], z["arr_1"]))
    (a, la), (b, lb) = outs
    assert a.shape == (23, 8, 8, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and np.array_equal(la, lb)
    assert la.tolist() == [i % 5 for i in range(23)]
    # another base seed changes the images, the same one reproduces them
    other = SampleSpec(num=23, num_classes=5, chunk_size=4, base_seed=8, pipeline_kwargs={"guidance_scale": 2.0})
    with np.load(_run(tmp_path / "s8", other, 1)) as z:
        assert not np.array_equal(z["arr_0"], a)
    assert chunk_seed(7, 4) == chunk_seed(7, 4) != chunk_seed(7, 8)


def test_killed_run_resumes_and_exports_each_image_once(tmp_path):
    spec = SampleSpec(num=20, num_classes=4, chunk_size=3, base_seed=0)
    pipe = FakePipeline(num_classes=4, fail_after=3)
    with pytest.raises(KeyboardInterrupt):
        generate_samples(pipe, tmp_path, spec, progress=False)
    assert len(list(tmp_path.glob("shard_*.npz"))) == 3
    (tmp_path / ".shard_00000009-00000012.npz.abc.tmp").write_bytes(b"partial")  # a rename that never happened
    with pytest.raises(ConfigError, match=r"missing 11 \(9-19\)"):
        check_complete(tmp_path, spec)
    resumed = FakePipeline(num_classes=4)
    stats = generate_samples(resumed, tmp_path, spec, progress=False)
    assert stats == {"written": 4, "skipped": 3} and resumed.calls == 4
    out = export_adm_npz(tmp_path, spec, tmp_path / "samples.npz")
    with np.load(out) as z:
        resumed_images = z["arr_0"]
    with np.load(_run(tmp_path / "clean", spec, 1)) as z:
        assert np.array_equal(resumed_images, z["arr_0"])
    # a duplicate shard (e.g. copied in from another run with other chunking) is refused at export
    np.savez(tmp_path / "shard_00000002-00000004.npz", images=np.zeros((2, 8, 8, 3), np.uint8),
             labels=np.zeros(2, np.int64), indices=np.arange(2, 4))
    with pytest.raises(ConfigError, match=r"duplicated 2 \(2-3\)"):
        export_adm_npz(tmp_path, spec, tmp_path / "samples2.npz")


def test_resume_with_other_settings_is_refused(tmp_path):
    spec = SampleSpec(num=6, num_classes=4, chunk_size=3)
    generate_samples(FakePipeline(num_classes=4), tmp_path, spec, progress=False)
    with pytest.raises(ConfigError, match="chunk_size: 3 on disk vs 2 now"):
        generate_samples(FakePipeline(num_classes=4), tmp_path, SampleSpec(num=6, num_classes=4, chunk_size=2),
                         progress=False)


def test_resume_with_other_weights_is_refused(tmp_path):
    """The manifest holds the sha256 of every component's weights: changed weights cannot join a run."""
    from vision_ar.models.next_scale import VAR, VARConfig
    from vision_ar.pipelines.var import VARPipeline
    from vision_ar.tokenizers.multiscale import MultiScaleVQVAE, MultiScaleVQVAEConfig

    torch.manual_seed(0)
    vae = MultiScaleVQVAE(MultiScaleVQVAEConfig(vocab_size=16, z_channels=4, ch=32, ch_mult=(1, 2), num_res_blocks=1,
                                                patch_nums=(1, 2, 4), using_sa=False, using_mid_sa=False))
    var = VAR(VARConfig(vocab_size=16, Cvae=4, num_classes=2, depth=1, embed_dim=32, num_heads=1, patch_nums=(1, 2, 4)))
    pipe = VARPipeline(vae, var)
    spec = SampleSpec(num=4, num_classes=2, chunk_size=2)
    generate_samples(pipe, tmp_path, spec, progress=False)
    weights = json.loads((tmp_path / "manifest.json").read_text())["weights"]
    assert set(weights) == {"tokenizer", "generator"} and all(len(h) == 64 for h in weights.values())
    shard_path(tmp_path, 2, 4).unlink()
    with torch.no_grad():
        var.head.weight.add_(1e-3)  # the "same" pipeline folder with retrained weights
    with pytest.raises(ConfigError, match=r"other weights \(component\(s\) generator differ"):
        generate_samples(pipe, tmp_path, spec, progress=False)
    assert not shard_path(tmp_path, 2, 4).exists()


def test_settings_the_pipeline_rejects_leave_nothing(tmp_path):
    class Strict(FakePipeline):
        def __call__(self, class_labels, guidance_scale=4.0, **kw):
            if not np.isfinite(guidance_scale) or guidance_scale > 10:
                raise ConfigError("guidance_scale out of range")
            return super().__call__(class_labels, guidance_scale, **kw)

    spec = SampleSpec(num=4, num_classes=4, chunk_size=2, pipeline_kwargs={"guidance_scale": 50.0})
    with pytest.raises(ConfigError, match="out of range"):
        generate_samples(Strict(num_classes=4), tmp_path / "run", spec, progress=False)
    nan = SampleSpec(num=4, num_classes=4, chunk_size=2, pipeline_kwargs={"guidance_scale": float("nan")})
    with pytest.raises(ConfigError, match="non-finite"):
        generate_samples(Strict(num_classes=4), tmp_path / "run", nan, progress=False)
    assert not (tmp_path / "run").exists()  # no manifest that would refuse the next, valid run
    ok = SampleSpec(num=4, num_classes=4, chunk_size=2, pipeline_kwargs={"guidance_scale": 2.0})
    assert generate_samples(Strict(num_classes=4), tmp_path / "run", ok, progress=False)["written"] == 2


def test_bad_pipeline_output_and_settings(tmp_path):
    spec = SampleSpec(num=4, num_classes=4, chunk_size=2)
    with pytest.raises(ConfigError, match=r"\[-1, 1\]"):
        generate_samples(FakePipeline(num_classes=4, value_range=(-1, 1)), tmp_path / "a", spec, progress=False)
    assert not list((tmp_path / "a").glob("shard_*"))
    with pytest.raises(ConfigError, match="expected"):
        generate_samples(FakePipeline(num_classes=4), tmp_path / "b", spec, image_size=256, progress=False)
    with pytest.raises(ConfigError, match="10 classes"):
        generate_samples(FakePipeline(num_classes=10), tmp_path / "c", spec, progress=False)
    with pytest.raises(ConfigError, match=">= 1"):
        SampleSpec(num=0)


def test_eval_command_end_to_end_with_fake_pipeline(tmp_path, monkeypatch, capsys):
    """`vision-ar eval` with a fake pipeline and a statistics reference; Inception is faked by monkeypatching its
    features (the real network is covered in test_eval_inception.py)."""
    import vision_ar.eval.inception as inception
    import vision_ar.pipelines as pipelines

    pipe = FakePipeline(num_classes=10, size=8)
    monkeypatch.setattr(pipelines, "load_pipeline", lambda name, device="cpu", **kw: pipe)

    class TinyFeatures:  # stands in for the Inception network: pixel statistics as "features"
        def __init__(self, weights=None, device=None, fid_layer="2048", batch_size=64, **kw):
            self.weights_path = inception.resolve_inception_weights(weights)
            self.weights_sha256 = "0" * 64
            self.tag = "tiny"

        def extract(self, source, limit=None, progress=True):
            x = torch.cat(list(source.batches(16, limit=limit))).float()
            pool = x.mean(dim=(2, 3)).repeat(1, 2).numpy()  # 6-d
            return inception.Features(pool=pool, logits=pool[:, :4] / 50, spatial=pool[:, :3])

    monkeypatch.setattr(inception, "InceptionFeatures", TinyFeatures)
    weights = tmp_path / "fake_inception.pth"
    weights.write_bytes(b"x")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "ref.npz", mu=rng.uniform(50, 150, 6), sigma=np.eye(6) * 100, mu_s=rng.uniform(50, 150, 3),
             sigma_s=np.eye(3) * 100)
    args = ["eval", "--pipeline", "fake", "--ref", str(tmp_path / "ref.npz"), "--num", "30", "--cfg", "3.0",
            "--chunk-size", "8", "--out-dir", str(tmp_path / "run"), "--inception-weights", str(weights),
            "--no-progress", "--device", "cpu"]
    assert cli_main(args) == 0
    printed = capsys.readouterr().out
    assert "FID" in printed and "IS splits" in printed
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert set(report) >= {"metrics", "settings", "versions", "checkpoint", "inception"}
    assert report["settings"]["isc_convention"] == "adm" and "no shuffle" in report["settings"]["isc_convention_text"]
    assert report["settings"]["pipeline_kwargs"] == {"guidance_scale": 3.0} and report["metrics"]["num_src"] == 30
    assert np.isfinite(report["metrics"]["fid"]) and np.isfinite(report["metrics"]["sfid"])
    assert all(k["guidance_scale"] == 3.0 for k in pipe.seen_kwargs)
    with np.load(tmp_path / "run" / "samples.npz") as z:
        assert z["arr_0"].shape == (30, 8, 8, 3) and z["arr_0"].dtype == np.uint8
    # rerun: every shard is on disk, nothing is sampled again
    calls = pipe.calls
    assert cli_main(args) == 0 and pipe.calls == calls
    # missing Inception weights: refused before any sampling
    monkeypatch.delenv("VISION_AR_INCEPTION_WEIGHTS", raising=False)
    bad = [a for a in args if a not in ("--inception-weights", str(weights))]
    bad[bad.index(str(tmp_path / "run"))] = str(tmp_path / "run2")
    assert cli_main(bad) == 2
    assert "weights-inception-2015-12-05" in capsys.readouterr().err and not (tmp_path / "run2").exists()
