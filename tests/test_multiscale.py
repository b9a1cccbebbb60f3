"""MultiScaleVQVAE without fixtures: input checks, folder round trip, shapes, training gradients, quantizer pieces."""

import pytest
import torch

from vision_ar.errors import CheckpointError, ConfigError
from vision_ar.registry import create, get_preset
from vision_ar.tokenizers.multiscale import MultiScaleVQVAE, MultiScaleVQVAEConfig, var_vqvae_f16
from vision_ar.tokenizers.quantizers import MultiScaleResidualQuantizer, nearest_code, phi_index_per_scale

# A Fashion-MNIST-sized tokenizer: 32x32 images, downsample 4, latent 8x8, 4 scales.
TINY = dict(vocab_size=64, z_channels=8, ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, patch_nums=(1, 2, 4, 8),
            test_mode=False)


def tiny(**kw) -> MultiScaleVQVAE:
    torch.manual_seed(0)
    return MultiScaleVQVAE(MultiScaleVQVAEConfig(**{**TINY, **kw})).eval()


def images(B=2, size=32, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(B, 3, size, size, generator=g) * 2 - 1


# ----------------------------------------------------------------------------------------------------
# Shapes and the tokenizer interface
# ----------------------------------------------------------------------------------------------------
def test_encode_decode_shapes_and_token_layouts():
    m = tiny()
    assert m.downsample == 4 and m.image_size == 32
    x = images()
    tokens = m.encode(x)
    assert [tuple(t.shape) for t in tokens] == [(2, pn, pn) for pn in m.patch_nums]
    assert all(t.dtype == torch.int64 and 0 <= int(t.min()) and int(t.max()) < 64 for t in tokens)
    flat = m.img_to_idx(x)
    assert all(torch.equal(a.flatten(1), b) for a, b in zip(tokens, flat))
    img = m.decode(tokens)
    assert img.shape == x.shape and float(img.abs().max()) <= 1.0
    torch.testing.assert_close(m.decode(flat), img, rtol=0, atol=0)  # (B,pn*pn) accepted too
    # Decoding the tokens = decoding the f_hat the quantizer accumulated while encoding.
    f_hat = m.quantize.f_to_idx_or_fhat(m.img_to_latent(x), to_fhat=True)[-1]
    torch.testing.assert_close(m.fhat_to_img(f_hat), img, atol=1e-5, rtol=0)
    per_scale = m.idx_to_img(tokens, same_shape=True, last_one=False)
    assert len(per_scale) == 4 and all(p.shape == x.shape for p in per_scale)
    assert m.quantize.idx_to_var_input(flat).shape == (2, sum(p * p for p in m.patch_nums) - 1, 8)


def test_bad_images_raise_config_error_with_the_fix():
    m = tiny()
    with pytest.raises(ConfigError, match="32x32"):
        m.encode(images(size=64))
    with pytest.raises(ConfigError, match=r"\(B,3,H,W\)"):
        m.encode(images()[:, :1])
    with pytest.raises(ConfigError, match="batch dimension"):
        m.encode(images()[0])
    with pytest.raises(ConfigError, match="float"):
        m.encode((images() * 127).to(torch.uint8))
    with pytest.raises(ConfigError, match="32x32"):
        m(images(size=16))  # training path checks too


def test_bad_tokens_raise_config_error():
    m = tiny()
    tokens = m.encode(images())
    with pytest.raises(ConfigError, match="4 per-scale"):
        m.decode(tokens[:-1])
    bad = [t.clone() for t in tokens]
    bad[2][0, 0, 0] = 64
    with pytest.raises(ConfigError, match=r"vocabulary \[0, 63\]"):
        m.decode(bad)
    bad[2][0, 0, 0] = -1
    with pytest.raises(ConfigError, match="vocabulary"):
        m.decode(bad)
    with pytest.raises(ConfigError, match="scale 1"):
        m.decode([tokens[0], tokens[1][:, :1], *tokens[2:]])
    with pytest.raises(ConfigError, match="integer"):
        m.decode([t.float() for t in tokens])


def test_bad_configs():
    with pytest.raises(ConfigError, match="increasing"):
        MultiScaleVQVAEConfig(**{**TINY, "patch_nums": (1, 4, 2, 8)})
    with pytest.raises(ConfigError, match="at least 2|>= 2"):
        MultiScaleVQVAEConfig(**{**TINY, "patch_nums": (8,)})
    with pytest.raises(ConfigError, match="multiple of 32"):
        MultiScaleVQVAE(MultiScaleVQVAEConfig(**{**TINY, "ch": 48}))
    with pytest.raises(ConfigError, match="unknown VQVAE arguments"):
        MultiScaleVQVAEConfig.from_official_kwargs({"v_patch_nums": [1, 2], "bogus": 1})


# ----------------------------------------------------------------------------------------------------
# Saving and loading
# ----------------------------------------------------------------------------------------------------
def test_save_pretrained_round_trip(tmp_path):
    m = tiny()
    with torch.no_grad():
        m.quantize.ema_vocab_hit_SV.add_(torch.arange(64.0))  # buffers travel too
    m.save_pretrained(tmp_path / "vq")
    m2 = MultiScaleVQVAE.from_pretrained(tmp_path / "vq")
    assert m2.config == m.config
    for (k, a), (k2, b) in zip(m.state_dict().items(), m2.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    x = images()
    assert all(torch.equal(a, b) for a, b in zip(m.encode(x), m2.encode(x)))


def test_official_checkpoint_loader(tmp_path):
    small = dict(ch=32, ch_mult=(1, 2), num_res_blocks=1, vocab_size=16, z_channels=4, patch_nums=(1, 2, 3))
    src = var_vqvae_f16(**small)
    sd = src.state_dict()
    sd["quantize.ema_vocab_hit_SV"] = torch.zeros(10, 16)  # made for another scale schedule: replaced, as officially
    path = tmp_path / "vae.pth"
    torch.save(sd, path)
    m = MultiScaleVQVAE.from_official(path, **small)
    assert not m.training
    assert torch.equal(m.quantize.embedding.weight, src.quantize.embedding.weight)
    del sd["quant_conv.bias"]
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match="quant_conv.bias"):
        MultiScaleVQVAE.from_official(path, **small)


def test_preset_registered():
    assert get_preset("var-vqvae-f16").family == "var-tokenizer"
    with torch.device("meta"):
        m = create("var-vqvae-f16")
    assert m.config.ch == 160 and m.image_size == 256 and m.quantize.phi_index_per_scale == \
        [0, 0, 1, 1, 1, 2, 2, 3, 3, 3]


# ----------------------------------------------------------------------------------------------------
# Training path
# ----------------------------------------------------------------------------------------------------
def test_training_forward_gradients_and_usage():
    m = tiny().train()
    x = images()
    rec, usages, vq_loss = m(x, ret_usages=True)
    assert rec.shape == x.shape and torch.isfinite(vq_loss) and vq_loss.item() > 0
    assert len(usages) == 4 and all(0.0 <= u <= 100.0 for u in usages)
    assert m.quantize.ema_vocab_hit_SV.sum(dim=1).tolist() == [2 * pn * pn for pn in m.patch_nums]

    # The reconstruction loss alone reaches the encoder only through the straight-through estimator.
    m.zero_grad()
    rec.square().mean().backward(retain_graph=True)
    enc_grad = m.encoder.conv_in.weight.grad
    assert enc_grad is not None and torch.isfinite(enc_grad).all() and enc_grad.abs().sum() > 0
    assert m.quantize.embedding.weight.grad is None  # ST: no codebook gradient from the decoder side

    # The VQ loss: commitment -> encoder, codebook -> embedding and Phi convs.
    m.zero_grad()
    vq_loss.backward()
    for p in (m.encoder.conv_in.weight, m.quantize.embedding.weight, m.quantize.quant_resi.qresi_ls[0].weight):
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


def test_training_forward_matches_inference_values():
    m = tiny()
    x = images()
    with torch.no_grad():
        rec, usages, _ = m(x)
        f_hat = m.quantize.f_to_idx_or_fhat(m.img_to_latent(x), to_fhat=True)[-1]
        ref = m.decoder(m.post_quant_conv(f_hat))
    assert usages is None
    torch.testing.assert_close(rec, ref, atol=1e-5, rtol=0)


def test_test_mode_freezes():
    m = MultiScaleVQVAE(MultiScaleVQVAEConfig(**{**TINY, "test_mode": True}))
    assert not m.training and not any(p.requires_grad for p in m.parameters())


# ----------------------------------------------------------------------------------------------------
# Quantizer pieces
# ----------------------------------------------------------------------------------------------------
def test_nearest_code_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    z, cb = torch.randn(50, 6, generator=g), torch.randn(20, 6, generator=g)
    assert torch.equal(nearest_code(z, cb), torch.cdist(z, cb).argmin(dim=1))
    cos = torch.nn.functional.normalize(z, dim=1) @ torch.nn.functional.normalize(cb, dim=1).T
    assert torch.equal(nearest_code(z, cb, cosine=True), cos.argmax(dim=1))


def test_phi_sharing_modes_and_key_names():
    def keys(**kw):
        q = MultiScaleResidualQuantizer(vocab_size=8, Cvae=4, patch_nums=(1, 2, 3, 4, 5), **kw)
        return [k for k in q.state_dict() if k.startswith("quant_resi")], q

    k, q = keys(share_quant_resi=1)
    assert k == ["quant_resi.qresi.weight", "quant_resi.qresi.bias"] and q.phi_index_per_scale == [0] * 5
    k, q = keys(share_quant_resi=0)
    assert k[0] == "quant_resi.0.weight" and len(k) == 10 and q.phi_index_per_scale == [0, 1, 2, 3, 4]
    k, q = keys(share_quant_resi=0, default_qresi_counts=3)
    assert len(k) == 6 and q.phi_index_per_scale == phi_index_per_scale(5, 0, 3) == [0, 0, 1, 2, 2]
    k, q = keys(share_quant_resi=4, quant_resi=0.0)  # ratio 0: Phi is the identity, no weights
    assert k == [] and torch.equal(q.phi(2)(torch.ones(1, 4, 2, 2)), torch.ones(1, 4, 2, 2))


def test_conv_body_is_general():
    from vision_ar.nn.conv_blocks import Decoder, Encoder

    enc = Encoder(ch=32, ch_mult=(1, 2), num_res_blocks=1, in_channels=1, z_channels=4, double_z=True,
                  attn_levels=(0,), using_mid_sa=False)
    dec = Decoder(ch=32, ch_mult=(1, 2), num_res_blocks=1, out_channels=1, z_channels=4, attn_levels=(0,))
    keys = list(enc.state_dict()) + list(dec.state_dict())
    assert "down.0.attn.0.qkv.weight" in keys and not any(k.startswith("down.1.attn") for k in keys)
    assert not any(k.startswith("mid.attn_1") for k in enc.state_dict())
    assert "up.0.attn.1.proj_out.weight" in keys and "up.1.block.0.nin_shortcut.weight" not in keys
    z = enc(torch.randn(1, 1, 8, 8))
    assert z.shape == (1, 8, 4, 4) and dec(z[:, :4]).shape == (1, 1, 8, 8)
    with pytest.raises(ConfigError, match="attn_levels"):
        Encoder(ch=32, ch_mult=(1, 2), attn_levels=(2,))


def test_dead_code_restart_revives_unused_codes_and_keeps_official_keys():
    from vision_ar.tokenizers.multiscale import MultiScaleVQVAE, MultiScaleVQVAEConfig

    base = dict(vocab_size=64, z_channels=8, ch=32, ch_mult=(1, 2), num_res_blocks=1, patch_nums=(1, 2, 4),
                using_sa=False, using_mid_sa=False, test_mode=False)
    official = MultiScaleVQVAE(MultiScaleVQVAEConfig(**base))
    assert not any("restart" in k for k in official.state_dict())
    torch.manual_seed(0)
    m = MultiScaleVQVAE(MultiScaleVQVAEConfig(**base, dead_code_restart=2)).train()
    q = m.quantize
    with torch.no_grad():  # a collapsed codebook: every code far away from the latents but one
        q.embedding.weight.fill_(50.0)
        q.embedding.weight[0].zero_()
    x = torch.rand(4, 3, 8, 8) * 2 - 1
    m(x)
    assert int((q.embedding.weight == 50.0).all(1).sum()) == 63  # step 1: no restart yet
    m(x)
    revived = int((q.embedding.weight != 50.0).any(1).sum())
    assert revived == 64 and "quantize.restart_hits_V" in m.state_dict()
    used = set()
    for idx in m.img_to_idx(x):
        used |= set(idx.flatten().tolist())
    assert len(used) > 1  # the revived codes are now picked
