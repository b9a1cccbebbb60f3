"""Speculative Jacobi Decoding is lossless: its sequences follow the plain loop's distribution.

Vehicles: a tiny causal transformer defined here (vocabulary 5, 4 tokens, its own KV cache, optionally with
per-row positions through `KVCache.append_rows`) and the real `vision_ar.models.next_token.GPT` at a tiny
config. With V^N = 625 possible sequences, the exact probability of every sequence under the plain loop's
settings (guidance, cfg_interval, temperature, top-k, top-p) is computed by teacher forcing, and 20,000
SJD samples are tested against it with a chi-squared goodness-of-fit test (and against 20,000 plain-loop
samples with a two-sample test). A deliberately broken acceptance rule must fail the same test.
Everything is seeded, so the p-values are fixed numbers.
"""
import itertools

import numpy as np
import pytest
import torch
from scipy import stats as sps
from torch import nn

from vision_ar.errors import ConfigError
from vision_ar.nn.attention import attend
from vision_ar.nn.kv_cache import KVCache
from vision_ar.sampling.jacobi import sjd_generate
from vision_ar.sampling.jacobi_kernels import accept_resample_torch
from vision_ar.sampling.logits import LLAMAGEN_SAMPLING, guided_logits, token_probs
from vision_ar.sampling.token_loop import generate

NUM_SEQ = 20_000
ALPHA = 0.01


# ----------------------------------------------------------------------------------------------------------
# A tiny generator with the incremental API (prefill / decode / truncate_cache / cache_length)
# ----------------------------------------------------------------------------------------------------------
class _Labels(nn.Module):
    def __init__(self, num_classes, dim):
        super().__init__()
        self.embedding_table = nn.Embedding(num_classes + 1, dim)  # row num_classes = null class (CFG)

    has_null_class = True


class TinyGPT(nn.Module):
    """One attention + MLP block with learned absolute positions. `per_row=True` lets decode take a
    LongTensor start_pos (one start per row), the extension SJD uses to keep per-row accepted lengths."""

    def __init__(self, vocab=5, num_classes=3, block_size=4, dim=16, heads=2, per_row=True, seed=0):
        super().__init__()
        self.vocab_size, self.num_classes, self.block_size = vocab, num_classes, block_size
        self.cls_token_num, self.heads, self.per_row_positions = 1, heads, per_row
        self.cls_embedding = _Labels(num_classes, dim)
        self.tok_embeddings = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(1 + block_size, dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.head = nn.Linear(dim, vocab)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():  # large random weights: peaked, position-dependent distributions
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * (0.25 if p.ndim > 1 else 0.2))
        self.cache = None

    def setup_cache(self, batch_size, max_seq_len, dtype=None):
        d = self.tok_embeddings.weight.shape[1]
        self.cache = KVCache(batch_size, self.heads, max_seq_len, d // self.heads, dtype or torch.float32)

    def reset_cache(self):
        self.cache.reset()

    @property
    def cache_length(self):
        return self.cache.length

    def truncate_cache(self, length):
        self.cache.truncate(length)

    def _step(self, h, positions, start):
        b, t, d = h.shape
        h = h + self.pos(positions)
        q, k, v = (x.view(b, t, self.heads, -1).transpose(1, 2) for x in self.qkv(h).split(d, dim=-1))
        if isinstance(start, torch.Tensor):
            k, v, mask = self.cache.append_rows(k, v, start)
        else:
            k, v = self.cache.append(k, v)
            mask = torch.arange(k.shape[2])[None] <= positions[0][:, None]
        h = h + self.proj(attend(q, k, v, attn_bias=mask).transpose(1, 2).reshape(b, t, d))
        return self.head(h + self.mlp(h))

    def prefill(self, cond_idx):
        self.cache.reset()
        h = self.cls_embedding.embedding_table(cond_idx)[:, None]
        return self._step(h, torch.zeros(len(cond_idx), 1, dtype=torch.long), 0)[:, -1]

    def decode(self, tokens, start_pos):
        t = tokens.shape[1]
        if isinstance(start_pos, torch.Tensor):  # per-row positions
            positions = start_pos[:, None] + torch.arange(t)
        else:
            if start_pos < self.cache.length:
                self.cache.truncate(start_pos)
            positions = (start_pos + torch.arange(t))[None].expand(len(tokens), -1)
        return self._step(self.tok_embeddings(tokens), positions, start_pos)


def tiny_real_gpt(seed=0):
    """The project's LlamaGen GPT at a tiny config, with large random weights (the official init zeroes the
    output head, which would make every distribution uniform)."""
    from vision_ar.models.next_token import GPT, GPTConfig

    cfg = GPTConfig(dim=16, n_layer=1, n_head=2, multiple_of=16, vocab_size=5, num_classes=3, block_size=4,
                    token_dropout_p=0.0, resid_dropout_p=0.0, ffn_dropout_p=0.0)
    model = GPT(cfg).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.7)
    return model


# ----------------------------------------------------------------------------------------------------------
# Exact sequence probabilities and the chi-squared tests
# ----------------------------------------------------------------------------------------------------------
def exact_sequence_probs(model, label, n, settings):
    """Probability of every sequence (V**n, in itertools.product order) under the plain loop's settings."""
    V = model.vocab_size
    seqs = torch.tensor(list(itertools.product(range(V), repeat=n)))
    cfg_scale, cfg_interval = settings.get("cfg_scale", 1.0), settings.get("cfg_interval", -1)
    use_cfg = cfg_scale > 1.0
    labels = torch.full((len(seqs),), label)
    if use_cfg:
        labels = torch.cat([labels, torch.full_like(labels, model.num_classes)])
    inputs = torch.cat([seqs, seqs]) if use_cfg else seqs
    with torch.no_grad():
        model.setup_cache(len(labels), 1 + n)
        first = model.prefill(labels)[:, None]
        rest = model.decode(inputs[:, : n - 1], 1) if n > 1 else first[:, :0]
        logits = torch.cat([first, rest], dim=1).float()
    if use_cfg:
        guided = guided_logits(logits, cfg_scale, LLAMAGEN_SAMPLING)
        pos = torch.arange(n)
        guide = (pos == 0) | (cfg_interval == -1) | (pos - 1 <= cfg_interval)
        logits = torch.where(guide[None, :, None], guided, logits[: len(seqs)])
    probs = token_probs(logits, LLAMAGEN_SAMPLING, temperature=settings.get("temperature", 1.0),
                        top_k=settings.get("top_k", 0), top_p=settings.get("top_p", 1.0)).double()
    return seqs, probs.gather(-1, seqs[..., None]).squeeze(-1).prod(-1).numpy()


def sequence_counts(samples, V):
    n = samples.shape[1]
    index = (samples * (V ** torch.arange(n - 1, -1, -1))).sum(-1)
    return np.bincount(index.numpy(), minlength=V ** n)


def chi2_goodness_of_fit(counts, probs):
    """p-value of counts ~ Multinomial(probs); cells with expected < 5 are pooled. Any sample in a cell of
    probability 0 (filtered away by top-k / top-p) is an outright failure (p = 0)."""
    total = counts.sum()
    if counts[probs < 1e-12].sum() > 0:
        return 0.0
    expected = probs / probs.sum() * total
    big = expected >= 5
    obs = np.append(counts[big], counts[~big].sum())
    exp = np.append(expected[big], expected[~big].sum())
    keep = exp > 0
    return float(sps.chisquare(obs[keep], exp[keep]).pvalue)


def chi2_two_sample(counts_a, counts_b):
    table = np.stack([counts_a, counts_b])
    table = table[:, table.sum(0) > 0]
    small = table.sum(0) < 10
    table = np.concatenate([table[:, ~small], table[:, small].sum(1, keepdims=True)], axis=1)
    return float(sps.chi2_contingency(table).pvalue)


def broken_accept(target, draft_probs, drafts, num_drafts, uniforms, inv_exp):
    """Accept when p(x) >= q(x), a plausible-looking but wrong rule; otherwise the correct residual step."""
    idx = drafts.long()[..., None]
    p_x, q_x = target.gather(-1, idx).squeeze(-1), draft_probs.gather(-1, idx).squeeze(-1)
    fake_uniforms = torch.where(p_x >= q_x, torch.zeros_like(uniforms), torch.ones_like(uniforms))
    return accept_resample_torch(target, draft_probs, drafts, num_drafts, fake_uniforms, inv_exp)


FULL = dict(cfg_scale=2.0, cfg_interval=1, temperature=0.8, top_k=4, top_p=0.95)
PLAIN = dict()
P_VALUES = {}


def _sjd_p_value(model, settings, seed, label=1, **sjd):
    n = model.block_size
    _, probs = exact_sequence_probs(model, label, n, settings)
    cond = torch.full((NUM_SEQ,), label)
    out, st = sjd_generate(model, cond, n, generator=torch.Generator().manual_seed(seed), return_stats=True,
                           **settings, **sjd)
    counts = sequence_counts(out, model.vocab_size)
    return chi2_goodness_of_fit(counts, probs), counts, probs, st


# ----------------------------------------------------------------------------------------------------------
# Losslessness
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("per_row,init,settings", [
    (True, "random", FULL),        # per-row positions, guidance + cfg_interval + temperature + top-k + top-p
    (False, "vertical", PLAIN),    # shared cache length (rows ahead re-feed their prefix)
    (True, "horizontal-argmax", FULL),
])
def test_sjd_matches_exact_distribution_tiny_model(per_row, init, settings):
    model = TinyGPT(per_row=per_row)
    p, _, _, st = _sjd_p_value(model, settings, seed=1, init=init, window_length=4)
    P_VALUES[f"tiny per_row={per_row} {init}"] = p
    assert p > ALPHA, f"SJD ({init}, per_row={per_row}) departs from the exact distribution: p={p:.3g}"
    # the windows really speculated: fewer forwards than tokens, and some windows committed > 1 token
    assert st.forwards_per_image < model.block_size and max(st.accepted_lengths) > 1


def test_broken_acceptance_is_detected():
    model = TinyGPT(per_row=True)
    p, *_ = _sjd_p_value(model, FULL, seed=1, init="random", window_length=4, accept_step=broken_accept)
    P_VALUES["tiny broken acceptance"] = p
    assert p < ALPHA, f"the chi-squared test failed to catch a wrong acceptance rule: p={p:.3g}"


def test_sjd_matches_plain_loop_on_real_gpt():
    """SJD on vision_ar's LlamaGen GPT (shared-length KV cache) vs the real plain loop and the exact law."""
    model = tiny_real_gpt()
    settings = dict(cfg_scale=3.0, temperature=1.2, top_k=4)
    label, n = 2, model.block_size
    cond = torch.full((NUM_SEQ,), label)
    plain = generate(model, cond, n, generator=torch.Generator().manual_seed(5), **settings)
    p_fit, counts_sjd, probs, st = _sjd_p_value(model, settings, seed=6, label=label, init="horizontal",
                                                window_length=3)
    p_plain_fit = chi2_goodness_of_fit(sequence_counts(plain, model.vocab_size), probs)
    p_two = chi2_two_sample(counts_sjd, sequence_counts(plain, model.vocab_size))
    P_VALUES.update({"gpt sjd vs exact": p_fit, "gpt plain vs exact": p_plain_fit, "gpt sjd vs plain": p_two})
    assert p_plain_fit > ALPHA, "the exact-probability computation disagrees with the plain loop"
    assert p_fit > ALPHA and p_two > ALPHA, (p_fit, p_two)
    assert st.forwards_per_image < n

    p_broken, *_ = _sjd_p_value(model, settings, seed=6, label=label, init="horizontal", window_length=3,
                                accept_step=broken_accept)
    P_VALUES["gpt broken acceptance"] = p_broken
    assert p_broken < ALPHA


def test_report_p_values(capsys):
    with capsys.disabled():
        print("\nSJD chi-squared p-values:", {k: f"{v:.3g}" for k, v in P_VALUES.items()})


# ----------------------------------------------------------------------------------------------------------
# Mechanics: reproducibility, per-row positions, window 1, bad input
# ----------------------------------------------------------------------------------------------------------
def test_same_seed_same_tokens_and_window_one_is_one_token_per_forward():
    model = TinyGPT()
    cond = torch.tensor([0, 1, 2, 1])
    a = sjd_generate(model, cond, 4, cfg_scale=2.0, generator=torch.Generator().manual_seed(3), window_length=3)
    b = sjd_generate(model, cond, 4, cfg_scale=2.0, generator=torch.Generator().manual_seed(3), window_length=3)
    assert torch.equal(a, b)
    _, st = sjd_generate(model, cond, 4, generator=torch.Generator().manual_seed(3), window_length=1,
                         return_stats=True)
    assert st.forwards == 4 and set(st.accepted_lengths) == {1}


def test_append_rows_matches_one_row_at_a_time():
    """Per-row decode (KVCache.append_rows) gives each row the logits it gets alone at its own position."""
    model = TinyGPT(per_row=True)
    g = torch.Generator().manual_seed(0)
    prefix = torch.randint(0, 5, (3, 3), generator=g)
    window = torch.randint(0, 5, (3, 2), generator=g)
    starts = torch.tensor([1, 2, 3])  # each row has cached its first (start - 1) image tokens
    model.setup_cache(3, 5)
    model.prefill(torch.tensor([0, 1, 2]))
    model.decode(prefix, torch.ones(3, dtype=torch.long))
    batched = model.decode(window, starts)
    for b in range(3):
        model.setup_cache(1, 5)
        model.prefill(torch.tensor([b]))
        k = int(starts[b]) - 1
        if k:
            model.decode(prefix[b:b + 1, :k], 1)
        alone = model.decode(window[b:b + 1], int(starts[b]))
        torch.testing.assert_close(batched[b:b + 1], alone, atol=1e-5, rtol=1e-5)


def test_bad_input_is_reported():
    model = TinyGPT()
    cond = torch.tensor([0, 1])
    with pytest.raises(ConfigError, match="window_length"):
        sjd_generate(model, cond, 4, window_length=0)
    with pytest.raises(ConfigError, match="beyond the KV cache"):
        sjd_generate(model, cond, 4, window_length=5)
    with pytest.raises(ConfigError, match="draft initialisation"):
        sjd_generate(model, cond, 4, init="diagonal")
    with pytest.raises(ConfigError, match="grid_width"):
        sjd_generate(model, cond, 3, init="vertical")  # 3 tokens: not a square grid
    with pytest.raises(ConfigError, match="incremental decoding"):
        sjd_generate(nn.Linear(2, 2), cond, 4)
