"""LlamaGen-style GPT, VQ tokenizer and the token loop on tiny random models (no fixtures needed):
KV-cached logits == full forward, cache bookkeeping, bad inputs, save/load round trips, sampling filters."""
from __future__ import annotations

import pytest
import torch

from vision_ar.errors import ConfigError
from vision_ar.models.next_token import GPT, GPTConfig
from vision_ar.nn.rope import rope_2d_table
from vision_ar.nn.swiglu import swiglu_hidden_dim
from vision_ar.registry import create, list_presets
from vision_ar.sampling.logits import LLAMAGEN_SAMPLING, filter_logits, token_probs
from vision_ar.sampling.token_loop import generate
from vision_ar.tokenizers.vq import VQConfig, VQModel


def tiny_gpt(seed: int = 0, **overrides) -> GPT:
    torch.manual_seed(seed)
    cfg = dict(dim=32, n_layer=2, n_head=2, multiple_of=32, vocab_size=64, num_classes=10, block_size=16)
    cfg.update(overrides)
    model = GPT(GPTConfig(**cfg))
    with torch.no_grad():  # the official init zeroes the head; give the test something to compare
        for p in model.parameters():
            p.normal_(0, 0.3)
    return model.eval()


def tiny_vq(seed: int = 0) -> VQModel:
    torch.manual_seed(seed)
    return VQModel(VQConfig(codebook_size=32, codebook_embed_dim=4, encoder_ch_mult=(1, 1), decoder_ch_mult=(1, 1),
                            z_channels=32, ch=32, num_res_blocks=1)).eval()


@pytest.fixture
def model():
    return tiny_gpt()


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 64, (3, 16), generator=g), torch.tensor([1, 7, 10])  # 10 = null class


# ----------------------------------------------------------------------------------------------------
# KV cache == full forward
# ----------------------------------------------------------------------------------------------------
def test_kv_cache_matches_full_forward(model, batch):
    idx, labels = batch
    full, _ = model(idx, labels)
    model.setup_cache(3)
    assert model.cache_length == 0 and model.cache_capacity == 17
    torch.testing.assert_close(model.prefill(labels), full[:, 0], atol=1e-5, rtol=0)
    assert model.cache_length == 1
    out = [model.decode(idx[:, :1], 1)]
    out.append(model.decode(idx[:, 1:4], 2))  # a causal window of 3
    for t in range(4, 16):
        out.append(model.decode(idx[:, t:t + 1], t + 1))
    assert model.cache_length == 17
    torch.testing.assert_close(torch.cat(out, 1), full[:, 1:], atol=1e-5, rtol=0)


def test_truncate_and_refeed(model, batch):
    idx, labels = batch
    full, _ = model(idx, labels)
    model.setup_cache(3)
    model.prefill(labels)
    model.decode(idx[:, :10], 1)
    model.truncate_cache(5)  # keep class token + tokens 0..3
    assert model.cache_length == 5
    torch.testing.assert_close(model.decode(idx[:, 4:8], 5), full[:, 5:9], atol=1e-5, rtol=0)
    # start_pos below cache_length rolls back implicitly (draft re-feeding), a wrong draft is overwritten
    wrong = (idx[:, 6:9] + 1) % 64
    model.decode(wrong, 7)
    torch.testing.assert_close(model.decode(idx[:, 6:9], 7), full[:, 7:10], atol=1e-5, rtol=0)
    assert model.cache_length == 10


def test_setup_cache_reuse_and_reset(model, batch):
    idx, labels = batch
    model.setup_cache(3)
    caches = model._caches
    model.prefill(labels)
    model.setup_cache(3)  # same shape: the buffers are reused, emptied
    assert model._caches is caches and model.cache_length == 0
    model.setup_cache(3, max_seq_len=5)
    assert model._caches is not caches and model.cache_capacity == 5
    model.release_cache()
    assert model.cache_length == 0


def test_grouped_query_attention_cache(batch):
    model = tiny_gpt(n_head=4, n_kv_head=2, dim=64)
    idx, labels = batch
    full, _ = model(idx, labels)
    model.setup_cache(3)
    model.prefill(labels)
    assert model._caches[0].k.shape[1] == 2
    torch.testing.assert_close(model.decode(idx, 1), full[:, 1:], atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------------------------------
# Bad inputs
# ----------------------------------------------------------------------------------------------------
def test_cache_misuse_raises(model, batch):
    idx, labels = batch
    with pytest.raises(ConfigError, match="setup_cache"):
        model.prefill(labels)
    model.setup_cache(3, max_seq_len=8)
    with pytest.raises(ConfigError, match="start_pos"):
        model.decode(idx[:, :1], 1)  # before prefill
    model.prefill(labels)
    with pytest.raises(ConfigError, match="do not fit the KV cache"):
        model.decode(idx[:, :8], 1)  # 1 + 8 > 8 positions
    with pytest.raises(ConfigError, match="gaps"):
        model.decode(idx[:, :1], 3)
    with pytest.raises(ConfigError, match="batch"):
        model.decode(idx[:2, :1], 1)
    with pytest.raises(ConfigError, match="token ids"):
        model.decode(torch.full((3, 1), 64), 1)
    with pytest.raises(ConfigError, match="truncate"):
        model.truncate_cache(5)
    with pytest.raises(ConfigError, match="max_seq_len"):
        model.setup_cache(3, max_seq_len=18)


def test_forward_bad_inputs(model, batch):
    idx, labels = batch
    with pytest.raises(ConfigError, match="class labels"):
        model(idx, torch.tensor([1, 2, 11]))
    with pytest.raises(ConfigError, match="token ids"):
        model(idx.clamp_max(0) - 1, labels)
    with pytest.raises(ConfigError, match="block_size"):
        model(torch.zeros(3, 17, dtype=torch.long), labels)
    with pytest.raises(ConfigError, match="batch"):
        model(idx[:2], labels)
    with pytest.raises(ConfigError, match="integer"):
        model(idx.float(), labels)
    with pytest.raises(ConfigError, match="targets"):
        model(idx[:, :-1], labels, targets=idx[:, :-1])


@pytest.mark.parametrize("bad, match", [(dict(block_size=15), "square"), (dict(cls_token_num=2), "cls_token_num"),
                                        (dict(dim=20, n_head=2), "divisible by 4"), (dict(n_head=3), "divisible"),
                                        (dict(token_dropout_p=1.0), "token_dropout_p")])
def test_bad_config(bad, match):
    cfg = dict(dim=32, n_layer=1, n_head=2, vocab_size=8, num_classes=2, block_size=16)
    cfg.update(bad)
    with pytest.raises(ConfigError, match=match):
        GPTConfig(**cfg)
    with pytest.raises(ConfigError, match="t2i"):
        GPTConfig.from_official_args(dict(model_type="t2i"))


def test_generate_bad_args(model):
    labels = torch.tensor([1, 2])
    for kwargs, match in [(dict(max_new_tokens=17), "max_new_tokens"), (dict(top_p=0.0), "top_p"),
                          (dict(temperature=-1.0), "temperature"), (dict(top_k=-1), "top_k"),
                          (dict(cfg_interval=-2), "cfg_interval")]:
        with pytest.raises(ConfigError, match=match):
            generate(model, labels, **kwargs)
    with pytest.raises(ConfigError, match="class labels"):
        generate(model, torch.tensor([10]))  # the null class is not a user label
    no_null = tiny_gpt(class_dropout_prob=0.0)
    assert no_null.cls_embedding.embedding_table.num_embeddings == 10
    with pytest.raises(ConfigError, match="null class"):
        generate(no_null, labels, cfg_scale=2.0)


# ----------------------------------------------------------------------------------------------------
# generate(): randomness and greedy consistency
# ----------------------------------------------------------------------------------------------------
def test_generate_is_seeded_and_restores_mode(model):
    labels = torch.tensor([3, 4])
    model.train()
    a = generate(model, labels, cfg_scale=3.0, generator=torch.Generator().manual_seed(5))
    assert model.training
    b = generate(model, labels, cfg_scale=3.0, generator=torch.Generator().manual_seed(5))
    c = generate(model, labels, cfg_scale=3.0, generator=torch.Generator().manual_seed(6))
    assert a.shape == (2, 16) and a.dtype == torch.int64
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_greedy_generate_is_argmax_of_teacher_forcing(model):
    labels = torch.tensor([3, 4])
    tokens = generate(model, labels, sample=False)
    logits, _ = model(tokens, labels)
    assert torch.equal(logits[:, :-1].argmax(-1), tokens)


def test_generate_prefix_length(model):
    tokens, probs = generate(model, torch.tensor([0]), 5, generator=torch.Generator().manual_seed(0),
                             return_probs=True)
    assert tokens.shape == (1, 5) and probs.shape == (1, 5, 64)
    torch.testing.assert_close(probs.sum(-1), torch.ones(1, 5))


# ----------------------------------------------------------------------------------------------------
# Training-time behaviour
# ----------------------------------------------------------------------------------------------------
def test_class_dropout_uses_generator_and_force_drop(model, batch):
    idx, _ = batch
    labels = torch.tensor([1, 2, 3])
    model.train()
    emb = model.cls_embedding
    emb.dropout_prob = 0.5
    a = emb(labels.repeat(20), train=True, generator=torch.Generator().manual_seed(0))
    b = emb(labels.repeat(20), train=True, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
    null = emb.embedding_table.weight[10]
    dropped = (a[:, 0] == null).all(-1)
    assert 0 < dropped.sum() < 60
    forced = emb(labels, train=False, force_drop_ids=torch.tensor([1, 0, 1]))
    assert torch.equal(forced[0, 0], null) and torch.equal(forced[2, 0], null)
    assert torch.equal(emb(labels, train=False), emb(labels, train=False))


def test_training_loss_and_valid_weights(model, batch):
    idx, labels = batch
    model.train()
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    model.cls_embedding.dropout_prob = 0.0
    logits, loss = model(idx[:, :-1], labels, targets=idx)
    assert logits.shape == (3, 16, 64)
    ref = torch.nn.functional.cross_entropy(logits.reshape(-1, 64), idx.reshape(-1))
    torch.testing.assert_close(loss, ref)
    _, masked = model(idx[:, :-1], labels, targets=idx, valid=torch.tensor([1.0, 0.0, 0.0]))
    only_first = torch.nn.functional.cross_entropy(logits[0], idx[0])
    torch.testing.assert_close(masked, only_first)
    loss.backward()
    assert model.output.weight.grad is not None


# ----------------------------------------------------------------------------------------------------
# Save / load
# ----------------------------------------------------------------------------------------------------
def test_gpt_save_load_round_trip(model, batch, tmp_path):
    idx, labels = batch
    model.save_pretrained(tmp_path / "gpt")
    loaded = GPT.from_pretrained(tmp_path / "gpt")
    assert loaded.config == model.config
    torch.testing.assert_close(loaded(idx, labels)[0], model(idx, labels)[0], atol=0, rtol=0)
    # an official-style checkpoint dict (weights under "model", legacy freqs_cis) loads too
    sd = {"model": {**model.state_dict(), "freqs_cis": torch.zeros(1)}}
    torch.save(sd, tmp_path / "c2i.pt")
    official = GPT.from_official(tmp_path / "c2i.pt", model.config)
    torch.testing.assert_close(official(idx, labels)[0], model(idx, labels)[0], atol=0, rtol=0)


def test_vq_save_load_round_trip_and_shapes(tmp_path):
    vq = tiny_vq()
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    ids = vq.encode(images)
    assert ids.shape == (2, 8, 8) and ids.dtype == torch.int64
    rec = vq.decode(ids)
    assert rec.shape == images.shape
    torch.testing.assert_close(vq.decode_code(ids.flatten(1)), rec)
    vq.save_pretrained(tmp_path / "vq")
    loaded = VQModel.from_pretrained(tmp_path / "vq")
    assert loaded.config == vq.config
    assert torch.equal(loaded.encode(images), ids)
    torch.save({"model": vq.state_dict()}, tmp_path / "vq.pt")
    assert torch.equal(VQModel.from_official(tmp_path / "vq.pt", vq.config).encode(images), ids)


def test_vq_bad_inputs():
    vq = tiny_vq()
    with pytest.raises(ConfigError, match="code ids"):
        vq.decode(torch.full((1, 2, 2), 32))
    with pytest.raises(ConfigError, match="code ids"):
        vq.decode(torch.full((1, 2, 2), -1))
    with pytest.raises(ConfigError, match="divisible"):
        vq.encode(torch.zeros(1, 3, 15, 16))
    with pytest.raises(ConfigError, match="float tensor"):
        vq.encode(torch.zeros(1, 1, 16, 16))
    with pytest.raises(ConfigError, match="grid"):
        vq.decode_code(torch.zeros(1, 6, dtype=torch.long))
    with pytest.raises(ConfigError, match="shape"):
        vq.decode_code(torch.zeros(1, 4, dtype=torch.long), [1, 3, 2, 2])
    with pytest.raises(ConfigError, match="multiple of 32"):
        VQModel(VQConfig(ch=16, encoder_ch_mult=(1,), decoder_ch_mult=(1,)))


def test_vq_training_pass_losses_and_usage():
    vq = tiny_vq().train()
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    rec, (vq_loss, commit, ent), usage = vq(images)
    assert rec.shape == images.shape
    torch.testing.assert_close(commit, 0.25 * vq_loss.detach())
    assert ent.item() == 0.0  # entropy_loss_ratio 0 by default
    assert 0 < usage <= 1
    assert vq.quantize.codebook_used[-128:].ne(0).any()
    (rec.square().mean() + vq_loss + commit).backward()
    assert vq.encoder.conv_in.weight.grad is not None  # straight-through estimator reaches the encoder
    vq.eval()
    _, losses, usage = vq(images)
    assert losses == (None, None, None) and usage == 0.0


# ----------------------------------------------------------------------------------------------------
# Building blocks and presets
# ----------------------------------------------------------------------------------------------------
def test_swiglu_hidden_dims_of_official_sizes():
    assert [swiglu_hidden_dim(d) for d in (768, 1024, 1280, 1536, 3200)] == [2048, 2816, 3584, 4096, 8704]
    assert swiglu_hidden_dim(32, multiple_of=32) == 96
    assert swiglu_hidden_dim(768, ffn_dim_multiplier=1.5) == 3072


def test_rope_table_layout():
    table = rope_2d_table(grid_size=4, head_dim=16, cls_token_num=2)
    assert table.shape == (2 + 16, 8, 2)
    assert table[:2].abs().sum() == 0  # class positions: zero rows
    # token (r, c): first 4 frequency pairs follow the row, last 4 the column
    r1c0, r0c1 = table[2 + 4], table[2 + 1]
    torch.testing.assert_close(r1c0[4:], table[2][4:])
    torch.testing.assert_close(r0c1[:4], table[2][:4])
    with pytest.raises(ConfigError, match="divisible by 4"):
        rope_2d_table(4, 18)


def test_presets_registered():
    names = list_presets("next-token")
    for size in ("b", "l", "xl", "xxl", "3b"):
        assert f"gpt-{size}" in names and f"gpt-{size}-384" in names
    assert {"vq-16", "vq-8"} <= set(list_presets("vq-tokenizer"))
    with torch.device("meta"):
        assert create("gpt-b-384").config.block_size == 576
        assert create("vq-8").downsample == 8


def test_top_k_top_p_filter_semantics():
    logits = torch.tensor([[3.0, 2.0, 2.0, 1.0, 0.0]])
    kept = filter_logits(logits, LLAMAGEN_SAMPLING, top_k=2).isfinite()
    assert kept.tolist() == [[True, True, True, False, False]]  # ties with the k-th are kept
    probs = logits.softmax(-1)[0]  # ~[0.61, 0.22, 0.22, 0.08, 0.03]
    kept = filter_logits(logits, LLAMAGEN_SAMPLING, top_p=0.5).isfinite()
    assert kept.tolist() == [[True, False, False, False, False]]  # first token alone crosses 0.5
    kept = filter_logits(logits, LLAMAGEN_SAMPLING, top_p=float(probs[0]) + 0.01).isfinite()
    assert kept[0].sum() == 2  # the token crossing the threshold stays
    p = token_probs(logits, LLAMAGEN_SAMPLING, temperature=0.5, top_k=2)
    assert p[0, 3:].sum() == 0 and torch.isclose(p.sum(), torch.tensor(1.0))


def test_bfloat16_model_keeps_float32_rope_and_caches_in_model_dtype(batch):
    model = tiny_gpt().to(torch.bfloat16)
    idx, labels = batch
    assert model.rope_rows(0, 17, torch.device("cpu")).dtype == torch.float32
    full, _ = model(idx, labels)
    model.setup_cache(3)
    assert model._caches[0].k.dtype == torch.bfloat16
    model.prefill(labels)
    cached = model.decode(idx, 1)
    assert cached.dtype == torch.float32
    assert (cached - full[:, 1:]).abs().max() < 0.1 * full.abs().max()
    assert generate(model, torch.tensor([1]), 4, generator=torch.Generator().manual_seed(0)).shape == (1, 4)


def test_decode_with_per_row_start_positions_matches_each_row_alone():
    """decode(tokens, LongTensor starts): row b sits at its own positions, sees only its own prefix (stale cache
    entries of a longer past are masked), exactly as if that row were decoded alone."""
    from vision_ar.registry import create

    torch.manual_seed(0)
    gpt = create("gpt-fmnist", n_layer=2, dim=64, n_head=2, block_size=16).eval()
    seq = torch.randint(0, gpt.config.vocab_size, (2, 12))
    cond = torch.tensor([3, 7])
    gpt.setup_cache(2)
    gpt.prefill(cond)
    gpt.decode(seq[:, :10], 1)                       # both rows hold positions 0..10
    starts = torch.tensor([4, 7])                    # row 0 rolls back to 4, row 1 to 7
    window = torch.stack([seq[0, 3:6], seq[1, 6:9]])
    got = gpt.decode(window, starts)
    for b in range(2):
        s = int(starts[b])
        gpt.setup_cache(1)
        gpt.prefill(cond[b:b + 1])
        gpt.decode(seq[b:b + 1, : s - 1], 1)
        ref = gpt.decode(window[b:b + 1], s)
        assert torch.allclose(got[b], ref[0], atol=1e-5), b
    assert gpt.per_row_positions
