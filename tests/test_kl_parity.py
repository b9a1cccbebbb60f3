"""Parity of KLVAE with MAR's KL-VAE (`models/vae.py`, identical in xAR), fixtures made by the official code.

Config, seeds, shapes and every tensor come from the fixture folder (`xar/vae`, `xar/manifests`), so another
fixture set (other seed, other small config) is checked the same way.
"""
import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import family_fixtures
from vision_ar.tokenizers.kl import KLConfig, KLVAE

pytestmark = pytest.mark.parity

TOL = dict(atol=1e-4, rtol=0.0)  # fixture README: atol 1e-4 for the VAE


@pytest.fixture(scope="module")
def vae_fixture():
    folder = family_fixtures("xar") / "vae"
    cfg = json.loads((folder / "config.json").read_text())
    return folder, cfg, load_file(str(folder / "cases.safetensors")), json.loads((folder / "cases.json").read_text())


def _config_from_fixture(cfg: dict) -> KLConfig:
    ctor, body = cfg["constructor"], cfg["encoder_decoder_overrides"]
    # What diffusers' module fixes and the fixture states: check it instead of assuming it.
    assert body["groupnorm_eps"] == 1e-6 and body["double_z"] and body["resamp_with_conv"]
    assert body["decoder_attn_resolutions"] == [], "decoder level attention is not part of MAR's AutoencoderKL"
    assert ctor["use_variational"] is True
    return KLConfig.from_official_kwargs(
        embed_dim=ctor["embed_dim"], ch_mult=ctor["ch_mult"], ch=body["ch"], num_res_blocks=body["num_res_blocks"],
        attn_resolutions=body["encoder_attn_resolutions"], resolution=body["resolution"],
        in_channels=body["in_channels"], norm_groups=body["groupnorm_groups"], latent_scale=cfg["latent_scale"])


@pytest.fixture(scope="module")
def vae(vae_fixture):
    folder, cfg, _, _ = vae_fixture
    model = KLVAE(_config_from_fixture(cfg)).eval()
    sd = load_file(str(folder / "state_dict.safetensors"))
    model.load_official_state_dict(sd, what="fixture KL-VAE")  # strict: raises on any mismatch
    return model


def _close(name, got, want, tol=TOL):
    assert got.shape == want.shape, f"{name}: shape {tuple(got.shape)} vs {tuple(want.shape)}"
    torch.testing.assert_close(got, want, msg=lambda m: f"{name}: {m}", **tol)


def test_official_keys_and_shapes(vae, vae_fixture):
    _, cfg, _, _ = vae_fixture
    want = {k: tuple(v["shape"]) for k, v in cfg["state_dict_keys"].items()}
    assert vae.official_state_dict_spec() == want
    assert sum(p.numel() for p in vae.parameters()) == cfg["num_params"]


def test_official_state_dict_round_trip(vae, vae_fixture):
    folder = vae_fixture[0]
    sd = load_file(str(folder / "state_dict.safetensors"))
    back = vae.official_state_dict()
    assert set(back) == set(sd)
    for k in sd:
        assert torch.equal(back[k], sd[k]), k


@torch.no_grad()
def test_encode_posterior(vae, vae_fixture):
    _, _, t, _ = vae_fixture
    moments = vae.encode_moments(t["images"])
    _close("posterior_parameters", moments, t["posterior_parameters"])
    post = vae.posterior_from_moments(moments)
    _close("posterior_mean", post.mean, t["posterior_mean"])
    _close("posterior_logvar", post.logvar, t["posterior_logvar"])
    _close("posterior_std", post.std, t["posterior_std"])
    _close("mode", post.mode(), t["posterior_mean"])
    # encode() is the normalised posterior mean
    _close("encode", vae.encode(t["images"]), t["posterior_mean"] * vae.latent_scale)


@torch.no_grad()
def test_posterior_sample_and_normalisation(vae, vae_fixture):
    _, _, t, meta = vae_fixture
    post = vae.posterior_from_moments(t["posterior_parameters"])
    # seeded like the official call: torch.manual_seed(sample_seed); posterior.sample() draws torch.randn(mean.shape)
    torch.manual_seed(meta["seed"]["sample_seed"])
    sample = post.sample()
    _close("posterior_sample (seeded)", sample, t["posterior_sample"], dict(atol=1e-6, rtol=0.0))
    # the same from an explicit generator (the project's random-number convention)
    g = torch.Generator().manual_seed(meta["seed"]["sample_seed"])
    _close("posterior_sample (generator)", post.sample(generator=g), t["posterior_sample"], dict(atol=1e-6, rtol=0.0))
    _close("mean + std * eps", post.mean + post.std * t["sample_eps"], t["posterior_sample"], dict(atol=1e-6, rtol=0.0))
    torch.manual_seed(meta["seed"]["sample_seed"])
    latents = vae.latents_from_moments(t["posterior_parameters"], sample=True)
    _close("latent_normalized", latents, t["latent_normalized"], dict(atol=1e-6, rtol=0.0))


@torch.no_grad()
def test_decode(vae, vae_fixture):
    _, _, t, _ = vae_fixture
    _close("decode_of_mean", vae.decode_unscaled(t["posterior_mean"]), t["decode_of_mean"])
    _close("decode_of_z_rand", vae.decode_unscaled(t["z_rand"]), t["decode_of_z_rand"])
    # decode() takes normalised latents and clamps like an image
    _close("decode(normalised)", vae.decode(t["z_rand"] * vae.latent_scale), t["decode_of_z_rand"].clamp(-1, 1))


def test_diagonal_gaussian_clamp_and_kl(vae_fixture):
    _, _, t, _ = vae_fixture
    post = KLVAE.posterior_from_moments(t["dg_parameters"])
    for name in ("mean", "logvar", "std", "var"):
        _close(f"dg_{name}", getattr(post, name), t[f"dg_{name}"], dict(atol=0.0, rtol=1e-6))
    _close("dg_kl", post.kl(), t["dg_kl"], dict(atol=1e-3, rtol=1e-5))


def test_kl16_manifest():
    manifests = family_fixtures("xar") / "manifests"
    man = json.loads((manifests / "kl16_vae.json").read_text())
    with torch.device("meta"):
        from vision_ar.registry import create

        model = create("kl-16")
    want = {k: tuple(v["shape"]) for k, v in man["keys"].items()}
    got = model.official_state_dict_spec()
    assert sorted(set(got) ^ set(want)) == []
    assert {k: got[k] for k in want} == want
    assert sum(p.numel() for p in model.parameters()) == man["num_params"]
