"""inpaint(..., class_label="infer"): the class comes from the generator's own likelihood of the known tokens.

Checked: the teacher-forced scorer equals the KV-cached sampler's log-probability of the same known tokens (VAR,
no guidance), the labels used are the argmax of the reported scores, mixed per-image labels, the errors, and on
real Fashion-MNIST test images with half of each image hidden the shipped VAR recovers the class far above chance."""
import pytest
import torch

from vision_ar.errors import ConfigError
from vision_ar.pipelines import load_pipeline
from vision_ar.pipelines.editing import _flat
from vision_ar.sampling.forcing import KnownTokens
from vision_ar.sampling.next_scale import sample_next_scale

_PIPES: dict = {}


def pipe_of(name):
    if name not in _PIPES:
        _PIPES[name] = load_pipeline(name)
        _PIPES[name].defaults["edit_candidates"] = 2  # fewer importance-resampling passes: quicker
    return _PIPES[name]


def garments() -> torch.Tensor:
    x = torch.full((2, 3, 32, 32), -1.0)
    x[0, :, 4:28, 8:24] = 0.6
    x[1, :, 4:28, 6:14] = 0.9
    x[1, :, 4:28, 18:26] = 0.9
    return x


def test_var_scorer_equals_the_cached_samplers_log_probability():
    pipe = pipe_of("fmnist-var")
    x, known = garments(), torch.zeros(2, 32, 32, dtype=torch.bool)
    known[:, 16:] = True
    maps = pipe.map_known(known, False, "inpaint", scale_rule="official")
    forcing = pipe.forcing_for_window(maps, pipe.encode_for_edit(x))
    for c in (0, 7):
        tokens, _, logp = sample_next_scale(pipe.var, pipe.vae, [c, c], generator=torch.Generator().manual_seed(c),
                                            forcing=forcing, cfg=0.0, top_k=0, top_p=0.0, temperature=1.0,
                                            return_known_logprob=True)
        scores = pipe.class_log_likelihoods(tokens, maps)
        assert scores.shape == (2, pipe.num_classes)
        torch.testing.assert_close(scores[:, c], logp.cpu(), rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("name", ["fmnist-var", "fmnist-gpt"])
def test_infer_uses_the_best_scoring_class_and_keeps_known_pixels(name):
    pipe = pipe_of(name)
    x, mask = garments(), torch.zeros(32, 32, dtype=torch.bool)
    mask[:16] = True  # top half generated
    out = pipe.inpaint(x, mask, "infer", generator=torch.Generator().manual_seed(0), output_type="pt")
    scores = out.stats["class_log_likelihoods"]
    assert scores.shape == (2, pipe.num_classes) and torch.isfinite(scores).all()
    assert list(out.labels) == scores.argmax(1).tolist()
    assert any("class inferred" in n for n in out.stats["notes"])
    assert torch.allclose(out.images[:, :, 16:], (x[:, :, 16:] + 1) / 2, atol=1e-6)
    again = pipe.inpaint(x, mask, "infer", generator=torch.Generator().manual_seed(0), output_type="pt")
    assert torch.equal(out.images, again.images)
    mixed = pipe.inpaint(x, mask, [3, "infer"], generator=torch.Generator().manual_seed(0), output_type="pt")
    assert mixed.labels[0] == 3 and mixed.stats["class_log_likelihoods"].shape == (1, pipe.num_classes)


def test_rows_with_nothing_known_stay_unconditional():
    pipe = pipe_of("fmnist-var")
    x, mask = garments(), torch.zeros(2, 32, 32, dtype=torch.bool)
    mask[0] = True          # row 0: everything generated, no evidence
    mask[1, :16] = True     # row 1: the top half generated
    out = pipe.inpaint(x, mask, "infer", generator=torch.Generator().manual_seed(0), output_type="pt")
    assert out.labels[0] is None and out.labels[1] in range(pipe.num_classes)
    assert out.stats["class_log_likelihoods"].shape == (1, pipe.num_classes)


def test_bad_class_labels_are_refused():
    pipe = pipe_of("fmnist-gpt")
    x, mask = garments(), torch.zeros(32, 32, dtype=torch.bool)
    mask[:16] = True
    with pytest.raises(ConfigError, match="infer"):
        pipe.inpaint(x, mask, "guess")
    with pytest.raises(ConfigError, match="NEW class"):
        pipe.edit(x, mask, "infer")


def test_var_recovers_the_class_of_half_hidden_test_images():
    from vision_ar.eval.fmnist_metrics import load_split_images

    pipe = pipe_of("fmnist-var")
    images, labels = load_split_images("test")
    images, labels = images[:40], labels[:40]
    known = torch.zeros(40, 32, 32, dtype=torch.bool)
    known[:20, 16:] = True        # bottom half known
    known[20:, :, :16] = True     # left half known
    masked = torch.where(known[:, None], images, torch.full_like(images, -1.0))
    out = pipe.inpaint(masked, ~known, "infer", generator=torch.Generator().manual_seed(0), output_type="pt")
    accuracy = (torch.tensor(out.labels) == labels).float().mean().item()
    assert accuracy >= 0.45, f"class inferred for {accuracy:.0%} of half-hidden images (chance 10%, ~70% measured)"
