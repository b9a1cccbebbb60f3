"""Token layouts: the declaration caching, the GPT's positions and SJD read instead of assuming a square grid."""
import pytest
import torch
from torch import nn

from vision_ar.data import CachedTokens, cache_tokenizer_outputs
from vision_ar.errors import ConfigError
from vision_ar.models.next_token import GPT, GPTConfig
from vision_ar.nn.rope import rope_1d_table, rope_2d_table
from vision_ar.pipelines.gpt import sjd_row_width
from vision_ar.sampling.jacobi import sjd_generate
from vision_ar.sampling.token_loop import generate
from vision_ar.tokens import TokenLayout
from vision_ar.train.recipes import FlatTokens


@pytest.mark.parametrize("layout, native", [
    (TokenLayout.grid(2, 3, vocab_size=9), torch.arange(12).view(2, 2, 3)),
    (TokenLayout.sequence(5, vocab_size=9), torch.arange(10).view(2, 5)),
    (TokenLayout.pyramid([1, 2, (2, 3)], vocab_size=9),
     [torch.arange(2).view(2, 1, 1), torch.arange(8).view(2, 2, 2), torch.arange(12).view(2, 2, 3)]),
    (TokenLayout.latent(4, 2, 3), torch.randn(2, 4, 2, 3)),
])
def test_flatten_unflatten_round_trip(layout, native):
    flat = layout.flatten(native)
    assert flat.shape == (2, layout.flat_size)
    back = layout.unflatten(flat)
    if isinstance(native, list):
        assert all(torch.equal(a, b) for a, b in zip(back, native))
    else:
        assert torch.equal(back, native)
    assert TokenLayout.from_json(layout.to_json()) == layout


def test_sizes_and_bad_layouts():
    assert TokenLayout.pyramid([1, 2, 3]).num_tokens == 14
    assert TokenLayout.latent(16, 4, 5).num_tokens == 20 and TokenLayout.latent(16, 4, 5).flat_size == 320
    assert TokenLayout.grid(4, 6).grid_width == 6
    with pytest.raises(ConfigError, match="no image rows"):
        TokenLayout.sequence(8).grid_width
    with pytest.raises(ConfigError, match=r"needs shape \(h, w\)"):
        TokenLayout("grid", (4,))
    with pytest.raises(ConfigError, match="unknown"):
        TokenLayout("cube", (2, 2, 2))
    with pytest.raises(ConfigError, match="does not match the declared"):
        TokenLayout.grid(2, 2).check(torch.zeros(1, 4, dtype=torch.long), "my tokenizer")
    with pytest.raises(ConfigError, match="declares float"):
        TokenLayout.latent(1, 2, 2).check(torch.zeros(1, 1, 2, 2, dtype=torch.long))


class _LatentTok(nn.Module):
    """A stand-in continuous tokenizer: float latents B,2,4,4 (pooled pixels)."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(0.5))

    def encode(self, x):
        return nn.functional.adaptive_avg_pool2d(x[:, :2], 4) * self.scale


class _Images(torch.utils.data.Dataset):
    def __init__(self, n=6):
        g = torch.Generator().manual_seed(0)
        self.x, self.y = torch.rand(n, 3, 16, 16, generator=g) * 2 - 1, torch.arange(n) % 3

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], int(self.y[i])


def test_cache_keeps_float_latents_and_the_declared_layout(tmp_path):
    tok, data = _LatentTok(), _Images()
    layout = TokenLayout.latent(2, 4, 4)
    path = cache_tokenizer_outputs(tok.encode, data, tmp_path / "c.safetensors", batch_size=4, token_layout=layout)
    cached = CachedTokens(path)
    assert cached.token_layout == layout
    latent, _ = cached[3]
    assert latent.dtype == torch.float32 and torch.equal(latent, tok.encode(data[3][0][None])[0].detach())
    flat, label = FlatTokens(cached)[3]  # what a generator task gets: flat, still float
    assert flat.dtype == torch.float32 and torch.equal(layout.unflatten(flat[None])[0], latent)
    with pytest.raises(ConfigError, match="does not match the declared"):
        cache_tokenizer_outputs(tok.encode, data, tmp_path / "d.safetensors", token_layout=TokenLayout.latent(2, 8, 8))


def tiny_gpt(**kw):
    torch.manual_seed(0)
    cfg = dict(dim=32, n_layer=2, n_head=2, vocab_size=16, num_classes=3, block_size=12, token_dropout_p=0.0,
               resid_dropout_p=0.0, ffn_dropout_p=0.0)
    cfg.update(kw)
    model = GPT(GPTConfig(**cfg)).eval()
    nn.init.normal_(model.output.weight, std=0.5)  # the official zero head would make every draw uniform
    return model


def test_rope_tables():
    # a square grid given as (s, s) is the official table, bit for bit
    assert torch.equal(rope_2d_table((4, 4), 16), rope_2d_table(4, 16))
    t = rope_2d_table((2, 3), 16)
    assert t.shape == (1 + 6, 8, 2)
    # token (r, c) = (1, 2): rows encode r in the first half, c in the second
    assert torch.equal(t[1 + 1 * 3 + 2, :4], rope_2d_table(3, 16)[1 + 1 * 3 + 1, :4])
    assert torch.equal(t[1 + 1 * 3 + 2, 4:], rope_2d_table(3, 16)[1 + 0 * 3 + 2, 4:])
    one = rope_1d_table(5, 16)
    assert one.shape == (1 + 5, 8, 2) and torch.all(one[0] == 0) and torch.allclose(one[1, :, 0], torch.ones(8))


@pytest.mark.parametrize("shape, kind", [((3, 4), "grid"), ((12,), "sequence")])
def test_gpt_on_any_layout(shape, kind):
    model = tiny_gpt(token_shape=shape)
    layout = model.token_layout
    assert layout.kind == kind and layout.num_tokens == 12
    tokens = torch.randint(0, 16, (2, 12), generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 2])
    logits, _ = model(tokens[:, :-1], labels)
    # the KV-cached path gives the teacher-forced logits on this layout too
    model.setup_cache(2)
    cached = torch.cat([model.prefill(labels)[:, None], model.decode(tokens[:, :-1], 1)], dim=1)
    assert torch.allclose(cached, logits, atol=1e-5)
    # same seed: SJD commits exactly the plain loop's greedy tokens (temperature ~ 0), any init valid here
    greedy = dict(temperature=1e-4, generator=torch.Generator().manual_seed(0))
    loop = generate(model, labels, **greedy)
    init = "vertical" if kind == "grid" else "horizontal"
    sjd = sjd_generate(model, labels, window_length=4, init=init, grid_width=sjd_row_width(layout, init),
                       temperature=1e-4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(loop, sjd)


def test_gpt_layout_errors():
    with pytest.raises(ConfigError, match="block_size=12"):
        GPTConfig(dim=32, n_layer=1, n_head=2, block_size=12, token_shape=(3, 3))
    with pytest.raises(ConfigError, match="square"):
        GPTConfig(dim=32, n_layer=1, n_head=2, block_size=12)
    GPTConfig(dim=12, n_layer=1, n_head=2, block_size=12, token_shape=(12,))  # 1D RoPE needs head_dim even only
    with pytest.raises(ConfigError, match="divisible by 4 for 2D RoPE"):
        GPTConfig(dim=12, n_layer=1, n_head=2, block_size=12, token_shape=(3, 4))


def test_sjd_vertical_init_on_a_1d_sequence_says_so():
    with pytest.raises(ConfigError, match="1D sequence.*--sjd-init random, horizontal or horizontal-argmax"):
        sjd_row_width(TokenLayout.sequence(12), "vertical")
    assert sjd_row_width(TokenLayout.sequence(12), "random") == 12
    assert sjd_row_width(TokenLayout.grid(3, 4), "vertical") == 4
