"""VAR transformer, logits processors and next-scale sampler: behaviour that needs no official fixtures.

Tiny random models only (a few hundred k parameters): the whole file runs in seconds on CPU.
"""
import pytest
import torch
import torch.nn.functional as F

from vision_ar.errors import CheckpointError, ConfigError
from vision_ar.io import atomic_torch_save
from vision_ar.models.next_scale import VAR, VARConfig
from vision_ar.registry import create, list_presets
from vision_ar.sampling.logits import (VAR_SAMPLING, gumbel_softmax, sample_tokens, top_k_mask_, top_p_mask_,
                                       var_cfg)
from vision_ar.sampling.next_scale import sample_next_scale
from vision_ar.tokenizers.multiscale import MultiScaleVQVAE, MultiScaleVQVAEConfig

PATCH_NUMS = (1, 2, 3)
V, CVAE = 64, 8


def tiny_config(**overrides) -> VARConfig:
    base = dict(vocab_size=V, Cvae=CVAE, num_classes=10, depth=2, embed_dim=32, num_heads=2,
                drop_path_rate=0.0, attn_l2_norm=True, patch_nums=PATCH_NUMS, cond_drop_rate=0.1)
    return VARConfig(**{**base, **overrides})


def randomize_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial weights (the official init leaves AdaLN gates ~0, which would hide most bugs)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.5 if "scale_mul" not in name else 1.0)
                    + (1.5 if "scale_mul" in name else 0.0))
    return model.eval()


@pytest.fixture(scope="module")
def vae():
    cfg = MultiScaleVQVAEConfig(vocab_size=V, z_channels=CVAE, ch=32, ch_mult=(1, 1, 2), num_res_blocks=1,
                                patch_nums=PATCH_NUMS, share_quant_resi=2)
    torch.manual_seed(0)
    return MultiScaleVQVAE(cfg).eval()


@pytest.fixture(scope="module", params=[False, True], ids=["adaln", "shared_adaln"])
def var(request):
    torch.manual_seed(1)
    return randomize_(VAR(tiny_config(shared_aln=request.param)), seed=2)


# ----------------------------------------------------------------------------------------------------
# KV-cached next-scale inference == teacher forcing
# ----------------------------------------------------------------------------------------------------
def test_cached_sampling_logits_equal_teacher_forcing(var, vae):
    cfg_scale, trace = 2.5, {}
    labels = [3, 7, -1]
    tokens, images = sample_next_scale(var, vae, labels, torch.Generator().manual_seed(0), cfg=cfg_scale,
                                       top_k=20, top_p=0.9, trace=trace)
    B, S = len(labels), len(PATCH_NUMS)
    assert images.shape == (B, 3, vae.image_size, vae.image_size)
    assert float(images.min()) >= 0.0 and float(images.max()) <= 1.0
    assert [t.shape for t in tokens] == [(B, pn * pn) for pn in PATCH_NUMS]
    assert trace["label_B"].tolist() == [3, 7, var.num_classes]  # -1 = null class
    # teacher-forced pass on the sampled tokens, conditional and unconditional halves, same CFG ramp
    x = vae.quantize.idx_to_var_input(tokens)
    both = torch.cat((trace["label_B"], torch.full((B,), var.num_classes)))
    with torch.no_grad():
        logits = var(both, x.repeat(2, 1, 1))
    for si, (b, e) in enumerate(var.begin_ends):
        want = var_cfg(logits[:, b:e], cfg_scale, si, S)
        torch.testing.assert_close(trace[f"logits_cfg.{si}"], want, atol=1e-4, rtol=1e-4)
    # f_hat after the last scale decodes to the returned images
    torch.testing.assert_close(vae.fhat_to_img(trace[f"f_hat.{S - 1}"]).add(1).mul(0.5), images)


def test_incremental_api_by_hand(var):
    """The model's own step API (no sampler): scale by scale == one masked pass over the whole sequence."""
    B = 2
    g = torch.Generator().manual_seed(3)
    x_full = torch.randn(B, var.L - var.first_l, CVAE, generator=g)
    labels = torch.tensor([1, var.num_classes])
    with torch.no_grad():
        want = var(labels, x_full)
        got = []
        with var.inference(B):
            cond = var.class_condition(labels)
            h = var.first_scale_input(cond)
            for si in range(len(PATCH_NUMS)):
                got.append(var.forward_scale(h, cond))
                if si + 1 < len(PATCH_NUMS):
                    b, e = var.begin_ends[si + 1]
                    h = var.scale_input(si + 1, x_full[:, b - var.first_l:e - var.first_l])
    torch.testing.assert_close(torch.cat(got, dim=1), want, atol=1e-5, rtol=1e-5)
    assert not var.blocks[0].attn.caching, "the context manager must switch the caches off"


def test_sampling_is_reproducible_and_random_labels_come_from_the_generator(var, vae):
    def run(seed):
        trace = {}
        toks, img = sample_next_scale(var, vae, None, torch.Generator().manual_seed(seed), batch_size=4, cfg=1.5,
                                      top_k=10, trace=trace)
        return trace["label_B"], toks, img

    l1, t1, i1 = run(5)
    l2, t2, i2 = run(5)
    assert torch.equal(l1, l2) and all(torch.equal(a, b) for a, b in zip(t1, t2)) and torch.equal(i1, i2)
    g = torch.Generator().manual_seed(5)  # the first draw is the labels, exactly as the official code
    assert torch.equal(l1, torch.multinomial(torch.full((1, var.num_classes), 1 / var.num_classes), 4, True,
                                             generator=g).reshape(4))
    l3, t3, _ = run(6)
    assert not all(torch.equal(a, b) for a, b in zip(t1, t3))


def test_more_smooth_and_temperature_run(var, vae):
    toks, img = sample_next_scale(var, vae, [1, 2], torch.Generator().manual_seed(0), cfg=4.0, top_k=30,
                                  top_p=0.95, more_smooth=True, temperature=0.7)
    assert img.shape[0] == 2 and torch.isfinite(img).all()


# ----------------------------------------------------------------------------------------------------
# Errors for people
# ----------------------------------------------------------------------------------------------------
def test_sampler_rejects_bad_arguments(var, vae):
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ConfigError, match="out of range"):
        sample_next_scale(var, vae, [1, var.num_classes], g)
    with pytest.raises(ConfigError, match="out of range"):
        sample_next_scale(var, vae, [-2], g)
    with pytest.raises(ConfigError, match="cfg"):
        sample_next_scale(var, vae, [1], g, cfg=-1.0)
    with pytest.raises(ConfigError, match="top_p"):
        sample_next_scale(var, vae, [1], g, top_p=1.5)
    with pytest.raises(ConfigError, match="top_k"):
        sample_next_scale(var, vae, [1], g, top_k=-3)
    with pytest.raises(ConfigError, match="batch_size"):
        sample_next_scale(var, vae, None, g)
    with pytest.raises(ConfigError, match="batch_size"):
        sample_next_scale(var, vae, [1, 2], g, batch_size=3)
    other = VAR(tiny_config(vocab_size=V * 2))
    with pytest.raises(ConfigError, match="codebook"):
        sample_next_scale(other, vae, [1], g)
    assert not var.blocks[0].attn.caching


def test_model_rejects_bad_inputs(var):
    x = torch.zeros(2, var.L - var.first_l, CVAE)
    with pytest.raises(ConfigError, match="out of range"):
        var(torch.tensor([0, var.num_classes + 1]), x)
    with pytest.raises(ConfigError, match="x_BLCv_wo_first_l"):
        var(torch.tensor([0, 1]), x[:, :-1])
    with pytest.raises(ConfigError, match="one label per image"):
        var(torch.tensor([0, 1, 2]), x)
    with pytest.raises(ConfigError, match="1-D integer"):
        var(torch.tensor([0.0, 1.0]), x)
    with pytest.raises(ConfigError, match="start_inference"):
        var.forward_scale(torch.zeros(2, 1, var.C), torch.zeros(2, var.C))
    with pytest.raises(ConfigError, match="scale index"):
        var.scale_input(0, torch.zeros(2, 1, CVAE))


def test_config_validation():
    with pytest.raises(ConfigError, match="divisible"):
        tiny_config(embed_dim=30, num_heads=4)
    with pytest.raises(ConfigError, match="increase"):
        tiny_config(patch_nums=(1, 3, 2))
    with pytest.raises(ConfigError, match="cond_drop_rate"):
        tiny_config(cond_drop_rate=1.5)
    with pytest.raises(ConfigError, match="unknown VARConfig"):
        tiny_config().replace(width=3)


# ----------------------------------------------------------------------------------------------------
# Training-time behaviour
# ----------------------------------------------------------------------------------------------------
def test_class_dropout_only_in_training_and_from_the_generator():
    torch.manual_seed(0)
    model = randomize_(VAR(tiny_config(cond_drop_rate=0.5)), seed=4)
    B = 8
    labels = torch.arange(B) % 10
    x = torch.randn(B, model.L - model.first_l, CVAE)
    with torch.no_grad():
        ref = model(labels, x)
        assert torch.equal(model(labels, x), ref), "eval mode must not drop labels"
        model.train()  # drop_path 0 and dropout 0: only class dropout is random here
        got = model(labels, x, generator=torch.Generator().manual_seed(9))
        dropped = torch.rand(B, generator=torch.Generator().manual_seed(9)) < 0.5
        model.eval()
        want = model(torch.where(dropped, model.num_classes, labels), x)
    assert 0 < int(dropped.sum()) < B
    torch.testing.assert_close(got, want)


def test_training_step_backpropagates():
    torch.manual_seed(0)
    model = VAR(tiny_config(drop_path_rate=0.1, drop_rate=0.1, attn_drop_rate=0.1)).train()
    x = torch.randn(2, model.L - model.first_l, CVAE)
    loss = F.cross_entropy(model(torch.tensor([1, 2]), x).flatten(0, 1), torch.randint(0, V, (2 * model.L,)))
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_autocast_bf16_forward_runs(var):
    x = torch.randn(2, var.L - var.first_l, CVAE)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = var(torch.tensor([1, 2]), x)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


# ----------------------------------------------------------------------------------------------------
# Saving / loading
# ----------------------------------------------------------------------------------------------------
def test_save_load_round_trip(var, tmp_path):
    var.save_pretrained(tmp_path / "var")
    loaded = VAR.from_pretrained(tmp_path / "var")
    assert loaded.config == var.config
    x = torch.randn(1, var.L - var.first_l, CVAE)
    with torch.no_grad():
        assert torch.equal(loaded(torch.tensor([4]), x), var(torch.tensor([4]), x))


def test_official_checkpoint_loader(var, tmp_path):
    path = tmp_path / "var_tiny.pth"
    atomic_torch_save(var.state_dict(), path)
    sizes = {k: getattr(var.config, k) for k in ("vocab_size", "Cvae", "num_classes", "depth", "embed_dim",
                                                   "num_heads", "patch_nums", "shared_aln")}
    loaded = VAR.from_official(path, "var-d16", **sizes)
    x = torch.randn(1, var.L - var.first_l, CVAE)
    with torch.no_grad():
        torch.testing.assert_close(loaded(torch.tensor([4]), x), var(torch.tensor([4]), x))
    with pytest.raises(CheckpointError, match="missing keys"):
        VAR.from_official(path, "var-d16", **{**sizes, "depth": 3})


def test_presets_registered():
    assert {"var-d16", "var-d20", "var-d24", "var-d30", "var-d36"} <= set(list_presets("var"))
    with torch.device("meta"):
        d36 = create("var-d36")
    assert d36.config.shared_aln and d36.patch_nums[-1] == 32 and d36.L == 2240


# ----------------------------------------------------------------------------------------------------
# Logits processors
# ----------------------------------------------------------------------------------------------------
def test_top_k_keeps_ties_and_top_p_keeps_the_best():
    logits = torch.tensor([[1.0, 3.0, 3.0, 2.0, 3.0]])
    kept = top_k_mask_(logits.clone(), 2)
    assert (kept != float("-inf")).sum().item() == 3  # the three tied 3.0s all survive top-2
    assert torch.equal(top_k_mask_(logits.clone(), 99), logits)  # k > V keeps everything
    peaked = torch.tensor([[0.0, 10.0, 0.0]])
    assert (top_p_mask_(peaked.clone(), 0.01, VAR_SAMPLING) != float("-inf")).tolist() == [[False, True, False]]
    flat = torch.zeros(1, 4)  # uniform: cumsum 0.25, 0.5, 0.75, 1 <= 1 - 0.6 removes exactly one
    assert (top_p_mask_(flat.clone(), 0.6, VAR_SAMPLING) != float("-inf")).sum().item() == 3


def test_sample_tokens_consumes_the_generator_like_multinomial():
    g0 = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 50, generator=g0)
    res = sample_tokens(logits, VAR_SAMPLING, torch.Generator().manual_seed(1), top_k=10, top_p=0.9)
    assert res.tokens.shape == (3, 5) and res.kept_count.shape == (3, 5)
    assert (res.kept_count <= 10).all() and (res.kept_count >= 1).all()
    # the drawn token always survived the filters
    assert (res.filtered_logits.gather(-1, res.tokens[..., None]) > float("-inf")).all()
    # same draw, same generator state afterwards: multinomial == argmax(P / Exp(1)), one draw per element
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    res = sample_tokens(logits, VAR_SAMPLING, g1, top_k=10, top_p=0.9)
    probs = res.filtered_logits.softmax(-1).view(-1, 50)
    race = (probs / torch.empty_like(probs).exponential_(1, generator=g2)).argmax(-1).view(3, 5)
    assert torch.equal(res.tokens, race)
    assert torch.equal(g1.get_state(), g2.get_state())
    assert torch.equal(logits, torch.randn(3, 5, 50, generator=torch.Generator().manual_seed(0))), "input modified"


def test_gumbel_softmax_matches_torch_under_the_same_seed():
    logits = torch.randn(4, 16)
    torch.manual_seed(3)
    want = F.gumbel_softmax(logits, tau=0.3, hard=False)
    torch.manual_seed(3)
    got_global = gumbel_softmax(logits, tau=0.3)
    got_gen = gumbel_softmax(logits, tau=0.3, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(got_global, want)
    torch.testing.assert_close(got_gen, want)
    hard = gumbel_softmax(logits, tau=0.3, hard=True, generator=torch.Generator().manual_seed(3))
    assert torch.equal(hard.argmax(-1), want.argmax(-1)) and torch.equal(hard.sum(-1), torch.ones(4))


def test_cfg_ramp():
    cond, uncond = torch.ones(1, 1, 3), torch.zeros(1, 1, 3)
    both = torch.cat((cond, uncond))
    assert torch.equal(var_cfg(both, 4.0, 0, 5), cond)  # first scale: no guidance
    assert torch.equal(var_cfg(both, 4.0, 4, 5), 5 * cond)  # last scale: (1 + cfg) * cond - cfg * uncond
