"""Editing masks: reading what users give, THE footprint rule, layouts read from tokenizers, out-paint canvases."""
import numpy as np
import pytest
import torch
from PIL import Image

from vision_ar.errors import ConfigError, DataError
from vision_ar.pipelines.editing import blend_weights, image_batch
from vision_ar.pipelines.masks import (Canvas, footprint_known, generate_region, known_tokens, outpaint_canvas,
                                       pyramid_from_finest)
from vision_ar.tokens import TokenLayout


def brute_force_known(known: torch.Tensor, rows: int, cols: int, any_part: bool) -> torch.Tensor:
    """Token (i, j) covers the real rectangle [i*H/rows, (i+1)*H/rows) x [...]; a pixel belongs to it when their
    open intervals overlap."""
    B, H, W = known.shape
    out = torch.zeros(B, rows, cols, dtype=torch.bool)
    for i in range(rows):
        for j in range(cols):
            ys = [y for y in range(H) if y < (i + 1) * H / rows and y + 1 > i * H / rows]
            xs = [x for x in range(W) if x < (j + 1) * W / cols and x + 1 > j * W / cols]
            block = known[:, ys][:, :, xs].flatten(1)
            out[:, i, j] = block.any(1) if any_part else block.all(1)
    return out


@pytest.mark.parametrize("H,W,rows,cols", [(8, 8, 2, 2), (10, 7, 3, 2), (32, 32, 8, 8), (9, 12, 4, 5)])
@pytest.mark.parametrize("any_part", [False, True])
def test_footprint_rule_matches_its_definition(H, W, rows, cols, any_part):
    g = torch.Generator().manual_seed(H * 100 + W)
    known = torch.rand(3, H, W, generator=g) > 0.3
    known[0] = True
    known[1, : H // 2] = False
    got = footprint_known(known, (rows, cols), any_part)
    assert torch.equal(got, brute_force_known(known, rows, cols, any_part))
    assert bool(got[0].all())


def test_footprint_rule_example():
    known = torch.ones(1, 8, 8, dtype=torch.bool)
    known[0, 3, 3] = False  # one unknown pixel in token (0, 0) of a 2x2 grid over 8x8
    assert footprint_known(known, (2, 2)).tolist() == [[[False, True], [True, True]]]
    assert footprint_known(known, (2, 2), any_part=True).all()
    assert not footprint_known(~known, (2, 2), any_part=False).any()
    assert footprint_known(~known, (2, 2), any_part=True).tolist() == [[[True, False], [False, False]]]


def test_every_layout_kind_maps_by_the_footprint_rule():
    """Grids (any shape), a latent map's positions and each scale of a pyramid all follow THE RULE; a 1-D sequence
    has no footprint."""
    g = torch.Generator().manual_seed(5)
    known = torch.rand(2, 32, 48, generator=g) > 0.2
    assert torch.equal(known_tokens(known, TokenLayout.grid(8, 12)), brute_force_known(known, 8, 12, False))
    latent = known_tokens(known, TokenLayout.latent(16, 4, 6), any_part=True)  # channels share a position's fate
    assert torch.equal(latent, brute_force_known(known, 4, 6, True))
    pyramid = known_tokens(known, TokenLayout.pyramid([(1, 1), (2, 3), (4, 6)]), scale_rule="footprint")
    for m, (r, c) in zip(pyramid, [(1, 1), (2, 3), (4, 6)]):
        assert torch.equal(m, brute_force_known(known, r, c, False))
    with pytest.raises(ConfigError, match="no spatial footprint"):
        known_tokens(known, TokenLayout.sequence(16))
    with pytest.raises(ConfigError, match="TokenLayout"):
        known_tokens(known, (8, 12))


def test_pyramid_rules():
    pyramid = TokenLayout.pyramid((1, 2, 4))
    known = torch.ones(1, 16, 16, dtype=torch.bool)
    known[0, 4:12, 4:12] = False  # the centre quarter is generated
    official = known_tokens(known, pyramid, scale_rule="official")
    footprint = known_tokens(known, pyramid, scale_rule="footprint")
    assert official[0].all()  # VAR's notebook: the 1x1 scale is always the input's
    assert official[1].all()  # 12 of 16 finest tokens per quadrant known: bilinear value 3/4 > 1/2
    assert not footprint[0].any() and not footprint[1].any()  # every coarse footprint touches the centre
    assert torch.equal(official[2], footprint[2])  # the finest scale is THE RULE in both
    assert official[2][0, 1:3, 1:3].logical_not().all() and official[2].sum() == 12
    # an all-known finest map keeps every scale; the map is resized in float32 as in the notebook
    assert all(m.all() for m in pyramid_from_finest(torch.ones(2, 4, 4), pyramid.shape))
    with pytest.raises(ConfigError, match="scale_rule"):
        known_tokens(known, pyramid, scale_rule="nearest")


def test_masks_in_every_form(tmp_path):
    H, W = 8, 6
    want = torch.zeros(1, H, W, dtype=torch.bool)
    want[0, 2:6, 1:4] = True
    as_u8 = want[0].numpy().astype(np.uint8) * 255
    Image.fromarray(as_u8).save(tmp_path / "m.png")
    forms = [want[0], want, want[:, None], want[0].numpy(), want[0].float(), want[0].long(),
             Image.fromarray(as_u8), Image.fromarray(as_u8).convert("RGB"), tmp_path / "m.png", str(tmp_path / "m.png"),
             (2, 1, 6, 4), (0.25, 1 / 6, 0.75, 4 / 6)]
    for form in forms:
        got = generate_region(form, (H, W), batch_size=2)
        assert got.shape == (2, H, W) and torch.equal(got, want.expand(2, H, W)), type(form)


@pytest.mark.parametrize("mask,match", [
    (torch.zeros(7, 6, dtype=torch.bool), "the mask is 7x6 but the image is 8x6"),
    (torch.full((8, 6), 0.5), "only 0 and 1"),
    ((0, 0, 9, 6), "leaves the 8x6 image"),
    ((4, 1, 4, 3), "is empty"),
    ((0.0, 0.0, 1.5, 1.0), "fractions"),
    ((0, 0, 2), None),
    ("corrupt", "not an image"),
    ("missing", "not found"),
    (None, "no mask given"),
    ({"top": 0}, "cannot use a dict"),
    (torch.zeros(3, 8, 6, dtype=torch.bool), "3 masks for 2 images"),
])
def test_bad_masks(tmp_path, mask, match):
    if mask == "corrupt":
        (tmp_path / "bad.png").write_text("not a png")
        mask = tmp_path / "bad.png"
    elif mask == "missing":
        mask = tmp_path / "nothing.png"
    err = DataError if isinstance(mask, type(tmp_path)) else ConfigError
    with pytest.raises(err, match=match):
        generate_region(mask, (8, 6), batch_size=2)


def test_outpaint_canvases():
    assert outpaint_canvas((32, 32), "right", 16) == Canvas(32, 48, 0, 0)
    assert outpaint_canvas((32, 32), "left+top", 0.25) == Canvas(40, 40, 8, 8)
    assert outpaint_canvas((32, 32), "down", 4) == Canvas(36, 32, 0, 0)
    assert outpaint_canvas((20, 24), (32, 32)) == Canvas(32, 32, 6, 4)  # centred
    assert outpaint_canvas((20, 24), (32, 32, 0, 8)) == Canvas(32, 32, 0, 8)
    assert outpaint_canvas((20, 24), Canvas(32, 32, 12, 8)) == Canvas(32, 32, 12, 8)
    with pytest.raises(ConfigError, match="smaller than the 32x32 image"):
        outpaint_canvas((32, 32), (32, 24))
    with pytest.raises(ConfigError, match="does not fit"):
        outpaint_canvas((20, 24), (32, 32, 13, 0))
    with pytest.raises(ConfigError, match="unknown out-painting direction"):
        outpaint_canvas((32, 32), "sideways")
    with pytest.raises(ConfigError, match="amount"):
        outpaint_canvas((32, 32), "right", 0)
    with pytest.raises(ConfigError, match="direction"):
        outpaint_canvas((32, 32), 3.5)


def test_images_in_every_form(tmp_path):
    u8 = (np.arange(4 * 5 * 3) * 5 % 256).astype(np.uint8).reshape(4, 5, 3)
    Image.fromarray(u8).save(tmp_path / "x.png")
    want = torch.from_numpy(u8).permute(2, 0, 1).float()[None] / 127.5 - 1
    for form in (u8, u8[None], Image.fromarray(u8), [Image.fromarray(u8)], tmp_path / "x.png", want, want[0]):
        assert torch.allclose(image_batch(form), want), type(form)
    grey = image_batch(Image.fromarray(u8[..., 0]))
    assert grey.shape == (1, 3, 4, 5) and torch.equal(grey[:, 0], grey[:, 2])
    with pytest.raises(ConfigError, match=r"\[-1, 1\]"):
        image_batch(want + 1.5)
    with pytest.raises(ConfigError, match="uint8"):
        image_batch(u8.astype(np.float32))
    with pytest.raises(ConfigError, match="different sizes"):
        image_batch([Image.fromarray(u8), Image.fromarray(u8[:3])])
    (tmp_path / "t.png").write_text("text")
    with pytest.raises(DataError, match="not an image"):
        image_batch(tmp_path / "t.png")


def test_blend_weights_keep_known_pixels_away_from_the_border():
    known = torch.ones(1, 10, 10, dtype=torch.bool)
    known[0, :, 5:] = False
    assert torch.equal(blend_weights(known, 0), known.float())
    w = blend_weights(known, 2)
    assert torch.all(w[0, :, 5:] == 0) and torch.all(w[0, :, :3] == 1)
    assert torch.allclose(w[0, 0, 3:5], torch.tensor([2 / 3, 1 / 3]))
