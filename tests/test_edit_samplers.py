"""The samplers' forcing input (known tokens kept, the rest sampled) on tiny random models."""
import pytest
import torch

from vision_ar.errors import ConfigError
from vision_ar.models.next_scale import VAR, VARConfig
from vision_ar.models.next_token import GPT, GPTConfig
from vision_ar.sampling.forcing import KnownTokens, ParticleResampler
from vision_ar.sampling.next_scale import sample_next_scale
from vision_ar.sampling.logits import LLAMAGEN_SAMPLING, guided_logits
from vision_ar.sampling.token_loop import generate, generate_infill, unknown_before_known
from vision_ar.tokenizers.multiscale import MultiScaleVQVAE, MultiScaleVQVAEConfig

N = 16


@pytest.fixture(scope="module")
def gpt():
    torch.manual_seed(0)
    model = GPT(GPTConfig(dim=32, n_layer=2, n_head=2, multiple_of=32, vocab_size=24, num_classes=4, block_size=N))
    with torch.no_grad():  # the official init zeroes the head: make the distributions informative
        for p in model.parameters():
            p.normal_(0, 0.3)
    return model.eval()


@pytest.fixture(scope="module")
def var_pair():
    torch.manual_seed(0)
    vae = MultiScaleVQVAE(MultiScaleVQVAEConfig(vocab_size=64, z_channels=8, ch=32, ch_mult=(1, 2), num_res_blocks=1,
                                                patch_nums=(1, 2, 4), using_sa=False, using_mid_sa=False)).eval()
    var = VAR(VARConfig(vocab_size=64, Cvae=8, num_classes=5, depth=2, embed_dim=64, num_heads=2,
                        patch_nums=(1, 2, 4))).eval()
    return var, vae


def _forcing(B: int, known_from: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    known = torch.zeros(B, N, dtype=torch.bool)
    known[:, known_from:] = True
    return KnownTokens(known, torch.randint(0, 24, (B, N), generator=g))


@pytest.mark.parametrize("cfg_scale", [1.0, 3.0])
def test_token_loop_keeps_known_tokens_and_the_random_stream(gpt, cfg_scale):
    cond = torch.tensor([0, 3, 1])
    forcing = _forcing(3, known_from=10)
    settings = dict(cfg_scale=cfg_scale, temperature=1.0, top_k=0, top_p=1.0)
    plain = generate(gpt, cond, N, generator=torch.Generator().manual_seed(5), **settings)
    forced = generate(gpt, cond, N, generator=torch.Generator().manual_seed(5), forcing=forcing, **settings)
    assert torch.equal(forced[:, 10:], forcing.values[:, 10:])
    assert torch.equal(forced[:, :10], plain[:, :10])  # same draws until the first known token


def test_known_logprob_is_the_teacher_forced_score(gpt):
    cond = torch.tensor([2, 1])
    known = torch.zeros(2, N, dtype=torch.bool)
    known[:, 3:7] = True
    known[1, 12:] = True
    forcing = KnownTokens(known, torch.randint(0, 24, (2, N), generator=torch.Generator().manual_seed(2)))
    tokens, logp = generate(gpt, cond, N, cfg_scale=2.5, temperature=0.8, generator=torch.Generator().manual_seed(0),
                            forcing=forcing, return_known_logprob=True)
    with torch.no_grad():
        both = torch.cat([cond, torch.full_like(cond, gpt.num_classes)])
        logits, _ = gpt(tokens[:, :-1].repeat(2, 1), both)
    guided = torch.stack([guided_logits(logits[:, i], 2.5, LLAMAGEN_SAMPLING) for i in range(N)], dim=1)  # (B, N, V)
    want = torch.log_softmax(guided / 0.8, dim=-1).gather(2, tokens[..., None])[..., 0]
    assert torch.allclose(logp, (want * known).sum(1), atol=1e-4)


def test_infill_keeps_known_and_resamples_only_when_needed(gpt):
    cond = torch.tensor([0, 1])
    settings = dict(cfg_scale=1.0, temperature=1.0, top_k=0, top_p=1.0)
    after = _forcing(2, known_from=0)
    after.known[:, 8:] = False  # known tokens all come first: one pass, exactly the forced loop
    a = generate_infill(gpt, cond, after, candidates=6, generator=torch.Generator().manual_seed(1), **settings)
    b = generate(gpt, cond, N, forcing=after, generator=torch.Generator().manual_seed(1), **settings)
    assert torch.equal(a, b)
    before = _forcing(2, known_from=8)  # unknown tokens precede known ones: importance resampling
    outs = [generate_infill(gpt, cond, before, candidates=6, generator=torch.Generator().manual_seed(s), **settings)
            for s in range(4)]
    for out in outs:
        assert torch.equal(out[:, 8:], before.values[:, 8:])
    assert len({tuple(o[:, :8].flatten().tolist()) for o in outs}) > 1  # the unknown part varies with the seed
    again = generate_infill(gpt, cond, before, candidates=6, generator=torch.Generator().manual_seed(0), **settings)
    assert torch.equal(again, outs[0])
    with pytest.raises(ConfigError, match="candidates"):
        generate_infill(gpt, cond, before, candidates=0, **settings)


@pytest.mark.parametrize("strategy", ["particles", "passes"])
def test_infill_prefers_candidates_that_agree_with_known_tokens(gpt, strategy):
    """With many candidates the chosen first tokens follow p(x_0 | known x_1..): compare with the exact posterior
    computed by enumerating x_0 (one unknown token, the rest known)."""
    cond = torch.tensor([1])
    known = torch.ones(1, N, dtype=torch.bool)
    known[0, 0] = False
    values = torch.randint(0, 24, (1, N), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        seqs = values.repeat(24, 1)
        seqs[:, 0] = torch.arange(24)
        logits, _ = gpt(seqs[:, :-1], cond.repeat(24))
        joint = torch.log_softmax(logits, -1).gather(2, seqs[..., None])[..., 0].sum(1)
    posterior = torch.softmax(joint, 0)
    prior = torch.softmax(logits[0, 0], -1)
    rows = 256  # the same edit 256 times in one batch: the empirical choice of x_0
    picks = generate_infill(gpt, cond.repeat(rows), KnownTokens(known.repeat(rows, 1), values.repeat(rows, 1)),
                            candidates=32, cfg_scale=1.0, generator=torch.Generator().manual_seed(0),
                            strategy=strategy)[:, 0]
    freq = torch.bincount(picks, minlength=24).float() / len(picks)
    # the resampled choice is much closer to the posterior than to the prior it was proposed from
    assert (freq - posterior).abs().sum() < 0.5 * (prior - posterior).abs().sum()


@pytest.mark.parametrize("cfg_scale", [1.0, 2.5])
def test_particle_resampling_moves_tokens_and_caches_together(gpt, cfg_scale):
    """Known and unknown tokens interleaved, 6 particles per image: the filter resamples many times, and each
    surviving row's tokens, KV cache and score still belong together: the score the loop returns equals the
    teacher-forced log-probability of that row's final tokens at its known positions."""
    cond = torch.tensor([2, 0])
    known = torch.zeros(2, N, dtype=torch.bool)
    known[:, 1::2] = True
    values = torch.randint(0, 24, (2, N), generator=torch.Generator().manual_seed(3))
    K = 6
    filt = ParticleResampler(2, K, "cpu", torch.Generator().manual_seed(9))
    forcing = KnownTokens(known.repeat_interleave(K, 0), values.repeat_interleave(K, 0))
    rows_cond = cond.repeat_interleave(K)
    tokens, logp = generate(gpt, rows_cond, N, cfg_scale=cfg_scale, generator=torch.Generator().manual_seed(0),
                            forcing=forcing, return_known_logprob=True, particles=filt)
    assert filt.resamplings > 0
    assert torch.equal(tokens[:, 1::2], forcing.values[:, 1::2])
    with torch.no_grad():
        labels = torch.cat([rows_cond, torch.full_like(rows_cond, gpt.num_classes)]) if cfg_scale > 1 else rows_cond
        logits, _ = gpt(tokens[:, :-1].repeat(2 if cfg_scale > 1 else 1, 1), labels)
    steps = [guided_logits(logits[:, i], cfg_scale, LLAMAGEN_SAMPLING) if cfg_scale > 1 else logits[:, i]
             for i in range(N)]
    want = torch.log_softmax(torch.stack(steps, 1), dim=-1).gather(2, tokens[..., None])[..., 0]
    assert torch.allclose(logp, (want * forcing.known).sum(1), atol=1e-4)
    assert filt.choose().tolist()[0] in range(K) and filt.choose().tolist()[1] in range(K, 2 * K)


def test_particle_resampler_resamples_only_degenerate_groups():
    filt = ParticleResampler(2, 4, "cpu", torch.Generator().manual_seed(0))
    assert filt.observe(torch.zeros(8)) is None  # equal weights: effective sample size 4
    # group 0: one particle explains the known token far better; group 1: weights stay even
    rows = filt.observe(torch.tensor([0.0, -30.0, -30.0, -30.0, -0.1, 0.0, -0.1, 0.0]))
    assert rows.tolist()[:4] == [0, 0, 0, 0] and rows.tolist()[4:] == [4, 5, 6, 7]
    assert filt.log_weights[:4].tolist() == [0.0] * 4 and filt.resamplings == 1
    with pytest.raises(ConfigError, match="particles"):
        ParticleResampler(1, 0, "cpu")
    with pytest.raises(ConfigError, match="forcing"):
        generate(GPT(GPTConfig(dim=32, n_layer=1, n_head=2, multiple_of=32, vocab_size=8, num_classes=2,
                               block_size=4)), torch.tensor([0]), 4, particles=filt)


def test_infill_strategy_errors(gpt):
    with pytest.raises(ConfigError, match="unknown infill strategy"):
        generate_infill(gpt, torch.tensor([0]), _forcing(1, known_from=8), strategy="beam")


def test_unknown_before_known():
    k = torch.tensor([[True, False, False], [False, True, True], [False, False, False], [True, True, False]])
    assert unknown_before_known(k).tolist() == [False, True, False, False]


def test_next_scale_all_known_reproduces_the_input(var_pair):
    var, vae = var_pair
    images = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    tokens_in = vae.img_to_idx(images)
    known = [torch.ones_like(t, dtype=torch.bool) for t in tokens_in]
    tokens, out = sample_next_scale(var, vae, [1, 3], torch.Generator().manual_seed(0), cfg=2.0,
                                    forcing=KnownTokens(known, tokens_in))
    assert all(torch.equal(a, b) for a, b in zip(tokens, tokens_in))
    assert torch.allclose(out, (vae.idx_to_img(tokens_in) + 1) / 2, atol=1e-5)


def test_next_scale_forcing_keeps_known_and_varies_the_rest(var_pair):
    var, vae = var_pair
    images = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    tokens_in = vae.img_to_idx(images)
    known = [torch.rand(t.shape, generator=torch.Generator().manual_seed(si)) > 0.5 for si, t in enumerate(tokens_in)]
    runs = [sample_next_scale(var, vae, [2], torch.Generator().manual_seed(s), cfg=1.0,
                              forcing=KnownTokens(known, tokens_in))[0] for s in range(3)]
    for tokens in runs:
        for si in range(3):
            assert torch.equal(tokens[si][known[si]], tokens_in[si][known[si]])
    free = torch.cat([t[~k] for t, k in zip(runs[0], known)])
    assert any(not torch.equal(free, torch.cat([t[~k] for t, k in zip(r, known)])) for r in runs[1:])


def test_bad_forcing_inputs(var_pair, gpt):
    var, vae = var_pair
    tokens_in = vae.img_to_idx(torch.zeros(1, 3, 8, 8))
    ones = [torch.ones_like(t, dtype=torch.bool) for t in tokens_in]
    with pytest.raises(ConfigError, match="one known map and one token map per scale"):
        sample_next_scale(var, vae, [0], forcing=KnownTokens(ones[:2], tokens_in[:2]))
    with pytest.raises(ConfigError, match="must be a bool"):
        sample_next_scale(var, vae, [0], forcing=KnownTokens([t.long() for t in ones], tokens_in))
    with pytest.raises(ConfigError, match="the sampler draws"):
        sample_next_scale(var, vae, [0, 1], forcing=KnownTokens(ones, tokens_in))
    with pytest.raises(ConfigError, match="not per-scale lists"):
        generate(gpt, torch.tensor([0]), N, forcing=KnownTokens(ones, tokens_in))
    with pytest.raises(ConfigError, match="`values` has shape"):
        generate(gpt, torch.tensor([0]), N, forcing=KnownTokens(torch.ones(1, N, dtype=torch.bool),
                                                                torch.zeros(1, N - 1, dtype=torch.long)))


def test_next_scale_known_logprob_scores_the_known_tokens(var_pair):
    var, vae = var_pair
    tokens_in = vae.img_to_idx(torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(2)) * 2 - 1)
    known = [torch.rand(t.shape, generator=torch.Generator().manual_seed(7 + si)) > 0.4
             for si, t in enumerate(tokens_in)]
    trace: dict = {}
    tokens, _, logp = sample_next_scale(var, vae, [0, 4], torch.Generator().manual_seed(3), cfg=2.0, temperature=0.7,
                                        forcing=KnownTokens(known, tokens_in), return_known_logprob=True, trace=trace)
    want = torch.zeros(2)
    for si in range(3):
        lp = torch.log_softmax(trace[f"logits_cfg.{si}"] / 0.7, -1).gather(2, tokens_in[si][..., None])[..., 0]
        want += (lp * known[si]).sum(1)
    assert torch.allclose(logp, want, atol=1e-5)
    again = sample_next_scale(var, vae, [0, 4], torch.Generator().manual_seed(3), cfg=2.0, temperature=0.7,
                              forcing=KnownTokens(known, tokens_in))[0]
    assert all(torch.equal(a, b) for a, b in zip(tokens, again))  # scoring draws nothing


def test_next_scale_particles_move_every_row_state_together(var_pair):
    """4 particles per image, resampled between scales: each final row's tokens, f_hat, caches and score still
    belong together. Re-scoring the final tokens teacher-forced (every token known, so the second run only
    reproduces them) gives the score the particle run returned at the originally known positions."""
    var, vae = var_pair
    K = 4
    tokens_in = vae.img_to_idx(torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(2)) * 2 - 1)
    known = [torch.rand(t.shape, generator=torch.Generator().manual_seed(7 + si)) > 0.4
             for si, t in enumerate(tokens_in)]
    known[0][:] = False  # the 1x1 scale is generated: the known finer tokens judge it
    rep = lambda xs: [x.repeat_interleave(K, 0) for x in xs]  # noqa: E731
    labels = [0] * K + [4] * K
    filt = ParticleResampler(2, K, "cpu", torch.Generator().manual_seed(5), ess_fraction=1.0)  # at every scale
    tokens, _, logp = sample_next_scale(var, vae, labels, torch.Generator().manual_seed(3), cfg=2.0,
                                        forcing=KnownTokens(rep(known), rep(tokens_in)), return_known_logprob=True,
                                        particles=filt)
    assert filt.resamplings > 0
    assert all(torch.equal(t[k], v[k]) for t, k, v in zip(tokens, rep(known), rep(tokens_in)))
    trace: dict = {}
    again = sample_next_scale(var, vae, labels, torch.Generator().manual_seed(0), cfg=2.0, trace=trace,
                              forcing=KnownTokens([torch.ones_like(k) for k in rep(known)], tokens))[0]
    assert all(torch.equal(a, b) for a, b in zip(again, tokens))
    want = sum((torch.log_softmax(trace[f"logits_cfg.{si}"], -1).gather(2, tokens[si][..., None])[..., 0]
                * rep(known)[si]).sum(1) for si in range(3))
    assert torch.allclose(logp, want, atol=1e-4)


def test_class_evidence_is_the_drawn_tokens_label_vs_null_ratio(gpt):
    cond = torch.tensor([2, 1])
    forcing = _forcing(2, known_from=9)
    tokens, ev = generate(gpt, cond, N, cfg_scale=2.0, generator=torch.Generator().manual_seed(0), forcing=forcing,
                          return_class_evidence=True)
    with torch.no_grad():
        c, _ = gpt(tokens[:, :-1], cond)
        u, _ = gpt(tokens[:, :-1], torch.full_like(cond, gpt.num_classes))
    ratio = (c.log_softmax(-1) - u.log_softmax(-1)).gather(2, tokens[..., None])[..., 0]
    assert torch.allclose(ev.float(), (ratio * ~forcing.known).sum(1), atol=1e-4)
    with pytest.raises(ConfigError, match="needs guidance"):
        generate(gpt, cond, N, cfg_scale=1.0, return_class_evidence=True)


def test_class_evidence_strategy_keeps_the_most_typical_pass(gpt):
    cond, K = torch.tensor([0, 3]), 5
    forcing = _forcing(2, known_from=0)
    forcing.known[:, 4:12] = False
    rep = KnownTokens(forcing.known.repeat_interleave(K, 0), forcing.values.repeat_interleave(K, 0))
    tokens, ev = generate(gpt, cond.repeat_interleave(K), N, cfg_scale=2.0, forcing=rep,
                          generator=torch.Generator().manual_seed(4), return_class_evidence=True)
    best = tokens[torch.arange(2) * K + ev.view(2, K).argmax(1)]
    got = generate_infill(gpt, cond, forcing, candidates=K, strategy="class_evidence", cfg_scale=2.0,
                          generator=torch.Generator().manual_seed(4))
    assert torch.equal(got, best)
