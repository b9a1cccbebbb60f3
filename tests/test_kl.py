"""KLVAE without fixtures: key conversion, bad checkpoints, training interface, save/load (tiny configs)."""
import pytest
import torch

from vision_ar.errors import CheckpointError, ConfigError
from vision_ar.tokenizers.kl import KLConfig, KLVAE, diffusers_to_official_key, official_to_diffusers_key


def tiny(**overrides) -> KLVAE:
    torch.manual_seed(0)
    cfg = KLConfig(latent_channels=4, ch=32, ch_mult=(1, 2), num_res_blocks=1, encoder_attn_levels=(1,),
                   latent_scale=0.5)
    return KLVAE(cfg.replace(**overrides)).eval()


def test_key_conversion_round_trip():
    model = tiny()
    for key in model.autoencoder.state_dict():
        official = diffusers_to_official_key(key, 2)
        assert official_to_diffusers_key(official, 2) == key
    names = set(model.official_state_dict())
    assert "decoder.up.1.block.0.conv1.weight" in names and "encoder.down.1.attn.0.q.weight" in names
    assert "encoder.mid.attn_1.proj_out.weight" in names and "decoder.norm_out.weight" in names


def test_official_state_dict_loads_back():
    a, b = tiny(), tiny()
    with torch.no_grad():
        for p in b.parameters():
            p.add_(1.0)
    b.load_official_state_dict(a.official_state_dict())
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    torch.testing.assert_close(a.encode(x), b.encode(x))


def test_checkpoint_of_another_architecture_lists_the_keys():
    sd = tiny().official_state_dict()
    other = tiny(ch_mult=(1, 2, 2))  # one more level: keys missing, shapes differ
    with pytest.raises(CheckpointError) as err:
        other.load_official_state_dict({"model": sd}, what="my.ckpt")
    msg = str(err.value)
    assert "my.ckpt does not fit" in msg and "missing keys" in msg and "encoder.down.2.block.0.conv1.weight" in msg
    with pytest.raises(CheckpointError, match=r"(?s)wrong shapes .*quant_conv.weight: checkpoint \(8, 8, 1, 1\) vs model "
                                              r"\(16, 16, 1, 1\)"):
        tiny(latent_channels=8).load_official_state_dict(sd)
    sd2 = dict(sd)
    sd2["loss.discriminator.weight"] = torch.zeros(1)
    del sd2["quant_conv.bias"]
    with pytest.raises(CheckpointError, match=r"(?s)missing keys \(1\): \['quant_conv.bias'\].*unexpected keys \(1\): "
                                              r"\['loss.discriminator.weight'\]"):
        tiny().load_official_state_dict(sd2)


def test_bad_inputs():
    model = tiny()
    with pytest.raises(ConfigError, match="not a multiple of the downsampling factor 2"):
        model.encode(torch.zeros(1, 3, 15, 16))
    with pytest.raises(ConfigError, match=r"\(B, 4, h, w\) \(4 latent channels\)"):
        model.decode(torch.zeros(1, 16, 8, 8))
    with pytest.raises(ConfigError, match="multiple of norm_groups"):
        KLConfig(ch=48)


def test_training_interface_and_latent_scale():
    model = tiny().train()
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    rec, kl, stats = model.training_forward(x)
    assert rec.shape == x.shape and kl.ndim == 0 and kl >= 0 and "kl_per_image" in stats
    (rec.pow(2).mean() + kl).backward()
    assert all(p.grad is not None for p in model.parameters())
    model.eval()
    moments = model.encode_moments(x)
    assert moments.shape == (2, 8, 8, 8)
    torch.testing.assert_close(model.encode(x), moments[:, :4] * 0.5)
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    assert torch.equal(model.latents_from_moments(moments, generator=g1), model.latents_from_moments(moments, generator=g2))


def test_save_load_round_trip(tmp_path):
    model = tiny()
    model.save_pretrained(tmp_path / "kl")
    back = KLVAE.from_pretrained(tmp_path / "kl")
    z = torch.randn(1, 4, 4, 4)
    torch.testing.assert_close(model.decode(z), back.decode(z))
    assert back.config == model.config
