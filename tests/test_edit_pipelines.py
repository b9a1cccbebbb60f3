"""pipe.inpaint / pipe.outpaint / pipe.edit on every shipped family: known tokens are the encoded input exactly,
known pixels are kept, unknown regions change with the seed and known ones never do, bad input is refused."""
import dataclasses
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from vision_ar.errors import ConfigError, DataError, EditNotice
from vision_ar.family import list_families
from vision_ar.pipelines import SHIPPED, load_pipeline
from vision_ar.pipelines.base import PipelineOutput

# shipped models of the families that declare editing (FlexTok's 1D tokens have no place in the image: refused)
FAMILIES = sorted(m for fam in list_families() if fam.edit_methods for m in fam.shipped if m in SHIPPED)
_PIPES: dict = {}


def pipe_of(name):
    if name not in _PIPES:
        _PIPES[name] = load_pipeline(name)
        if "edit_candidates" in _PIPES[name].defaults:  # the GPT's importance resampling: fewer passes, quicker
            _PIPES[name].defaults["edit_candidates"] = 2
    return _PIPES[name]


def make_images(n=2) -> torch.Tensor:
    """Two Fashion-MNIST-like 32x32 images in [-1, 1] without the dataset: a bright garment shape on black."""
    x = torch.full((2, 3, 32, 32), -1.0)
    x[0, :, 4:28, 8:24] = 0.6           # a block (bag-like)
    x[1, :, 4:28, 6:14] = 0.9           # two legs (trouser-like)
    x[1, :, 4:28, 18:26] = 0.9
    return x[:n]


def g(seed=0):
    return torch.Generator().manual_seed(seed)


def flat_tokens(tokens):
    return torch.cat([t.reshape(t.shape[0], -1) for t in tokens], 1) if isinstance(tokens, list) else \
        tokens.reshape(tokens.shape[0], -1)


def per_position(tokens, known):
    """(B, N) discrete tokens, or (B, N, C) for continuous latents (B, C, h, w): C numbers per known position."""
    flat = flat_tokens(tokens)
    if flat.shape[1] != known.shape[1]:
        flat = flat.view(flat.shape[0], -1, known.shape[1]).transpose(1, 2)
    return flat


@pytest.mark.parametrize("name", FAMILIES)
def test_known_tokens_are_the_encoded_input(name):
    pipe = pipe_of(name)
    x = make_images()
    mask = torch.zeros(32, 32, dtype=torch.bool)
    mask[8:24, 4:20] = True
    out = pipe.inpaint(x, mask, None, generator=g(), output_type="pt")
    assert isinstance(out, PipelineOutput) and out.images.shape == (2, 3, 32, 32)
    known = flat_tokens(out.known_tokens)
    encoded = per_position(pipe.encode_for_edit(x), known)
    assert known.dtype == torch.bool and 0 < known.float().mean() < 1
    got = per_position(out.tokens, known)
    assert torch.equal(got[known], encoded[known])


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("method", ["inpaint", "edit"])
def test_seed_changes_the_unknown_region_only(name, method):
    pipe = pipe_of(name)
    x = make_images()
    mask = torch.zeros(32, 32, dtype=torch.bool)
    mask[:16] = True  # top half generated
    call = (lambda s: pipe.inpaint(x, mask, None, generator=g(s), output_type="pt")) if method == "inpaint" else \
        (lambda s: pipe.edit(x, mask, [3, 8], generator=g(s), output_type="pt"))
    a, b, a2 = call(0), call(1), call(0)
    assert torch.equal(a.images, a2.images)  # same seed, same edit
    keep = (x[:, :, 16:] + 1) / 2
    for out in (a, b):
        assert torch.allclose(out.images[:, :, 16:], keep, atol=1e-6)  # known pixels kept
    assert not torch.equal(a.images[:, :, :16], b.images[:, :, :16])  # unknown pixels vary with the seed
    ka, kb = flat_tokens(a.known_tokens), flat_tokens(b.known_tokens)
    assert torch.equal(ka, kb) and torch.equal(per_position(a.tokens, ka)[ka], per_position(b.tokens, kb)[kb])


@pytest.mark.parametrize("name", FAMILIES)
def test_pil_input_keeps_known_pixels_exactly(name, tmp_path):
    pipe = pipe_of(name)
    u8 = ((make_images(1)[0].permute(1, 2, 0) + 1) * 127.5).round().to(torch.uint8).numpy()
    u8[10, 10] = [12, 200, 77]  # a colour: kept as is, not through the tokenizer
    Image.fromarray(u8).save(tmp_path / "in.png")
    m = np.zeros((32, 32), np.uint8)
    m[20:, :] = 255
    out = pipe.inpaint(tmp_path / "in.png", Image.fromarray(m), None, generator=g()).images[0]
    got = np.asarray(out)
    assert out.size == (32, 32) and np.array_equal(got[:20], u8[:20])
    blended = np.asarray(pipe.inpaint(tmp_path / "in.png", Image.fromarray(m), None, generator=g(), blend=3).images[0])
    assert np.array_equal(blended[:17], u8[:17])  # farther than 3 pixels from the generated rows: exact


@pytest.mark.parametrize("name", FAMILIES)
def test_outpaint(name):
    pipe = pipe_of(name)
    x = make_images()
    wide = pipe.outpaint(x, "left", 8, amount=16, generator=g(), output_type="pt")
    assert wide.images.shape == (2, 3, 32, 48) and wide.stats["canvas"] == {"height": 32, "width": 48, "top": 0,
                                                                             "left": 16}
    assert torch.allclose(wide.images[:, :, :, 16:], (x + 1) / 2, atol=1e-6)
    assert wide.stats["windows"] == 1
    small = x[:, :, 4:28, 4:28]  # a 24x24 crop onto the model's 32x32 canvas
    full = pipe.outpaint(small, (32, 32), None, generator=g(), output_type="pt")
    assert full.images.shape == (2, 3, 32, 32)
    assert torch.allclose(full.images[:, :, 4:28, 4:28], (small + 1) / 2, atol=1e-6)
    big = pipe.outpaint(x, "left+right", None, amount=24, generator=g(), output_type="pt")  # 32x80: sliding windows
    assert big.images.shape == (2, 3, 32, 80) and big.stats["windows"] >= 2
    assert torch.allclose(big.images[:, :, :, 24:56], (x + 1) / 2, atol=1e-6)


@pytest.mark.parametrize("name", FAMILIES)
def test_all_known_and_all_unknown_masks_say_so(name):
    pipe = pipe_of(name)
    x = make_images()
    with pytest.warns(EditNotice, match="nothing to generate"):
        same = pipe.inpaint(x, torch.zeros(32, 32, dtype=torch.bool), 3, generator=g(), output_type="pt")
    assert torch.allclose(same.images, (x + 1) / 2, atol=1e-6) and same.stats["notes"]
    with pytest.warns(EditNotice, match="plain generation"):
        fresh = pipe.edit(x, torch.ones(32, 32, dtype=torch.bool), [2, 5], generator=g(), output_type="pt")
    plain = pipe(class_labels=[2, 5], generator=g(), output_type="pt")
    assert torch.allclose(fresh.images, plain.images, atol=1e-6)  # exactly what plain sampling draws


def test_batch_with_one_image_fully_known():
    pipe = pipe_of(FAMILIES[0])
    x = make_images()
    mask = torch.zeros(2, 32, 32, dtype=torch.bool)
    mask[1, :16] = True
    with warnings.catch_warnings():
        warnings.simplefilter("error", EditNotice)  # not all-known as a whole: no notice
        out = pipe.inpaint(x, mask, None, generator=g(), output_type="pt")
    assert torch.allclose(out.images[0], (x[0] + 1) / 2, atol=1e-6)
    assert any("image 0" in n for n in out.stats["notes"])


@pytest.mark.parametrize("name", FAMILIES)
def test_bad_edit_inputs(name, tmp_path):
    pipe = pipe_of(name)
    x = make_images()
    box = (8, 8, 24, 24)
    with pytest.raises(ConfigError, match="the mask is 28x28 but the image is 32x32"):
        pipe.inpaint(x, torch.zeros(28, 28, dtype=torch.bool), None)
    with pytest.raises(ConfigError, match="smaller than the 32x32 image"):
        pipe.outpaint(x, (32, 24))
    with pytest.raises(ConfigError, match="smaller than the 32x32 images this model makes"):
        pipe.inpaint(x[:, :, :24, :24], (0, 0, 8, 8))
    with pytest.raises(ConfigError, match="smaller than the 32x32 images"):
        pipe.outpaint(x[:, :, :16, :16], (24, 24))
    with pytest.raises(ConfigError, match="out of range"):
        pipe.edit(x, box, 10)
    with pytest.raises(ConfigError, match="needs new_class_label"):
        pipe.edit(x, box, None)
    # labels and guidance: the pipeline's one check (check_request), with the family's "no guidance" value
    off = f"{pipe.family.sampling.no_guidance:g} means no guidance"
    with pytest.raises(ConfigError, match=rf"guidance_scale \(CFG\) must be a finite number >= 0.*{off}"):
        pipe.inpaint(x, box, None, guidance_scale=-1.0)
    with pytest.raises(ConfigError, match=r"class labels \[12\] are out of range.*None for unconditional"):
        pipe.inpaint(x, box, [None, 12])
    with pytest.raises(ConfigError, match="3 class labels for 2 images"):
        pipe.inpaint(x, box, [1, 2, 3])
    with pytest.raises(ConfigError, match="unknown setting"):
        pipe.inpaint(x, box, None, sjd_window=4)
    with pytest.raises(ConfigError, match="blend"):
        pipe.inpaint(x, box, None, blend=-1)
    (tmp_path / "x.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(DataError, match="not an image"):
        pipe.inpaint(tmp_path / "x.png", box, None)


def test_unsupported_family_method_pair():
    """The family record says which editing methods a pipeline has; any other is refused, naming the family."""
    src = pipe_of(FAMILIES[0])

    def with_methods(methods):
        pipe = type(src)(src.tokenizer, src.generator)
        pipe.family = dataclasses.replace(src.family, edit_methods=methods)
        return pipe

    only, none = with_methods(("inpaint",)), with_methods(())
    with pytest.raises(ConfigError, match=rf"family '{src.family.name}'.*does not support outpaint\(\): it supports "
                                          rf"inpaint"):
        only.outpaint(make_images(), "right")
    with pytest.raises(ConfigError, match="does not support edit.*declares no editing methods"):
        none.edit(make_images(), (0, 0, 8, 8), 1)
    assert only.inpaint(make_images(1), (0, 0, 8, 8), None, generator=g()).images
    with pytest.raises(ConfigError, match=r"unknown edit_methods \['paint'\]"):
        dataclasses.replace(src.family, edit_methods=("inpaint", "paint"))


def test_var_scale_rule_per_method():
    """VAR keeps its coarse scales when in-painting (the official rule) and re-draws the ones an edit touches."""
    if "fmnist-var" not in FAMILIES:
        pytest.skip("fmnist-var is not shipped")
    pipe = pipe_of("fmnist-var")
    x, box = make_images(), (8, 8, 24, 24)
    inpainted = pipe.inpaint(x, box, None, generator=g(), output_type="pt")
    edited = pipe.edit(x, box, 3, generator=g(), output_type="pt")
    official = pipe.edit(x, box, 3, generator=g(), output_type="pt", scale_rule="official")
    assert inpainted.known_tokens[0].all() and official.known_tokens[0].all()  # the 1x1 scale: the input's
    assert not edited.known_tokens[0].any()
    assert torch.equal(inpainted.known_tokens[-1], edited.known_tokens[-1])  # the finest scale: THE RULE in both
    with pytest.raises(ConfigError, match="scale_rule"):
        pipe.edit(x, box, 3, scale_rule="bilinear")


@pytest.mark.parametrize("strategy", ["passes", "particles", "class_evidence", "fresh"])
def test_gpt_edit_strategies_keep_known_tokens(strategy):
    pipe = pipe_of("fmnist-gpt")
    x = make_images()
    mask = torch.zeros(32, 32, dtype=torch.bool)
    mask[4:28, 4:28] = True  # the centre: unknown tokens before and after known ones in raster order
    call = lambda s: pipe.edit(x, mask, [3, 8], generator=g(s), output_type="pt", edit_candidates=3,  # noqa: E731
                               edit_strategy=strategy, guidance_scale=2.0)
    a, b, a2 = call(0), call(1), call(0)
    known = flat_tokens(a.known_tokens)
    encoded = per_position(pipe.encode_for_edit(x), known)
    assert torch.equal(per_position(a.tokens, known)[known], encoded[known])
    assert torch.equal(a.images, a2.images) and not torch.equal(a.tokens, b.tokens)
    with pytest.raises(ConfigError, match="edit_strategy 'fresh' is not available for VAR|not available for VAR"):
        pipe_of("fmnist-var").edit(x, mask, [3, 8], generator=g(), edit_strategy="fresh")


def test_gpt_fresh_edit_renders_the_sample_not_the_token_composite():
    """A 'fresh' class edit with one candidate is the plain sample of the new class (same generator): its generated
    pixels are that sample's decode exactly (the kept ring's old codes must not leak in through the decoder), its
    known pixels the input's, and its returned tokens the input's at the known positions."""
    pipe = pipe_of("fmnist-gpt")
    x = make_images()
    mask = torch.zeros(32, 32, dtype=torch.bool)
    mask[4:28, 4:28] = True
    out = pipe.edit(x, mask, [3, 8], generator=g(5), output_type="pt", edit_candidates=1, edit_strategy="fresh",
                    guidance_scale=2.0)
    plain = pipe([3, 8], generator=g(5), output_type="pt", guidance_scale=2.0)
    assert torch.allclose(out.images[:, :, mask], plain.images[:, :, mask], atol=1e-6)
    assert torch.allclose(out.images[:, :, ~mask], ((x + 1) / 2)[:, :, ~mask], atol=1 / 255)
    known = flat_tokens(out.known_tokens)
    assert torch.equal(per_position(out.tokens, known)[known],
                       per_position(pipe.encode_for_edit(x), known)[known])
    assert not torch.equal(per_position(out.tokens, known)[known], per_position(plain.tokens, known)[known])
