"""Parity of MultiScaleVQVAE with the official VAR VQVAE (fixtures made by the official code, random weights).

Everything (config, scales, tensors, manifests, Phi maps) is read from the fixture folder, so other fixture sets
with other seeds/configs run through the same tests.
"""
import json
import re

import pytest
import torch
from safetensors.torch import load_file

from conftest import family_fixtures
from fixture_recipe import state_dict_from_recipe
from vision_ar.io import load_state_dict_strict
from vision_ar.tokenizers.multiscale import MultiScaleVQVAE, MultiScaleVQVAEConfig, var_vqvae_f16
from vision_ar.tokenizers.quantizers import phi_index_per_scale

pytestmark = pytest.mark.parity

LATENT_TOL = dict(atol=1e-5, rtol=1e-5)   # f, f_hat, embed_to_fhat, var_input
IMAGE_TOL = dict(atol=1e-4, rtol=0.0)     # every image tensor


# ----------------------------------------------------------------------------------------------------
# Fixture loading
# ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def vq():
    folder = family_fixtures("var") / "vqvae"
    cfg_json = json.loads((folder / "config.json").read_text())
    config = MultiScaleVQVAEConfig.from_official_kwargs(cfg_json["kwargs"])
    model = MultiScaleVQVAE(config).eval()
    sd = state_dict_from_recipe(folder)
    # Same keys, same shapes, same order as the official state_dict.
    assert list(model.state_dict()) == list(sd)
    load_state_dict_strict(model, sd, what="fixture VQVAE")
    io = load_file(str(folder / "io.safetensors"))
    scales = sorted(int(m.group(1)) for k in io if (m := re.fullmatch(r"idx_Bl\.(\d+)", k)))
    assert scales == list(range(len(config.patch_nums))), "fixture scales do not match the config's patch_nums"
    return model, cfg_json, io, scales


def _close(name, got, want, tol):
    assert got.shape == want.shape, f"{name}: shape {tuple(got.shape)} vs {tuple(want.shape)}"
    assert got.dtype == want.dtype, f"{name}: dtype {got.dtype} vs {want.dtype}"
    torch.testing.assert_close(got, want, msg=lambda m: f"{name}: {m}", **tol)


# ----------------------------------------------------------------------------------------------------
# Config-level facts
# ----------------------------------------------------------------------------------------------------
def test_config_facts(vq):
    model, cfg_json, io, scales = vq
    assert model.downsample == cfg_json["downsample"]
    assert model.Cvae == cfg_json["Cvae"]
    assert model.image_size == cfg_json["image_size"] == io["images"].shape[-1]
    assert model.quantize.phi_index_per_scale == cfg_json["phi_index_per_scale"]


def test_phi_index_map_every_entry():
    data = json.loads((family_fixtures("var") / "phi_index_map.json").read_text())
    checked = 0
    for group, per_S in data.items():
        m = re.match(r"share_quant_resi=(\d+)", group)
        if not m or not isinstance(per_S, dict):
            continue  # the rule/note strings
        share = int(m.group(1))
        for s_key, entry in per_S.items():
            S = int(re.fullmatch(r"S=(\d+)", s_key).group(1))
            got = phi_index_per_scale(S, share)
            assert got == entry["phi_index"], f"{group} {s_key}: {got} != {entry['phi_index']} " \
                                              f"(ties at {entry['exact_ties_at_si']})"
            checked += 1
    assert checked > 0


# ----------------------------------------------------------------------------------------------------
# Every tensor of io.safetensors
# ----------------------------------------------------------------------------------------------------
@torch.no_grad()
def test_latent_tokens_and_fhat(vq):
    model, _, io, scales = vq
    images = io["images"]
    _close("f", model.img_to_latent(images), io["f"], LATENT_TOL)
    idx = model.img_to_idx(images)
    assert len(idx) == len(scales)
    for si in scales:
        assert idx[si].dtype == torch.int64 and torch.equal(idx[si], io[f"idx_Bl.{si}"]), f"idx_Bl.{si} differs"
    enc = model.encode(images)
    for si in scales:
        pn = model.patch_nums[si]
        assert torch.equal(enc[si], io[f"idx_Bl.{si}"].view(-1, pn, pn))
    f_hats = model.quantize.f_to_idx_or_fhat(io["f"], to_fhat=True)
    for si in scales:
        _close(f"f_hat.{si}", f_hats[si], io[f"f_hat.{si}"], LATENT_TOL)


@torch.no_grad()
def test_reconstructions(vq):
    model, _, io, scales = vq
    images = io["images"]
    recon = model.img_to_reconstructed_img(images, last_one=False)
    for si in scales:
        _close(f"recon.{si}", recon[si], io[f"recon.{si}"], IMAGE_TOL)
    _close("recon_last", model.img_to_reconstructed_img(images, last_one=True), io["recon_last"], IMAGE_TOL)
    last = scales[-1]
    _close("fhat_to_img", model.fhat_to_img(io[f"f_hat.{last}"]), io["fhat_to_img"], IMAGE_TOL)


@torch.no_grad()
def test_tokens_to_images_both_paths(vq):
    model, _, io, scales = vq
    idx = [io[f"idx_Bl.{si}"] for si in scales]
    for same_shape, tag in ((True, "same_shape"), (False, "not_same_shape")):
        per_scale = model.idx_to_img(idx, same_shape=same_shape, last_one=False)
        for si in scales:
            _close(f"idxBl_to_img.{tag}.{si}", per_scale[si], io[f"idxBl_to_img.{tag}.{si}"], IMAGE_TOL)
        # decode() is the same_shape/last_one path: check it there instead of decoding twice (CPU time).
        last = model.decode(idx) if same_shape else model.idx_to_img(idx, same_shape=False, last_one=True)
        _close(f"idxBl_to_img.{tag}.last", last, io[f"idxBl_to_img.{tag}.last"], IMAGE_TOL)


@torch.no_grad()
def test_embed_to_fhat_and_var_input(vq):
    model, _, io, scales = vq
    idx = [io[f"idx_Bl.{si}"] for si in scales]
    ms_h = model.embed_tokens(idx)
    for all_max, tag in ((True, "all_to_max_scale"), (False, "not_all_to_max_scale")):
        f_hats = model.quantize.embed_to_fhat(ms_h, all_to_max_scale=all_max, last_one=False)
        for si in scales:
            _close(f"embed_to_fhat.{tag}.{si}", f_hats[si], io[f"embed_to_fhat.{tag}.{si}"], LATENT_TOL)
        last = model.quantize.embed_to_fhat(ms_h, all_to_max_scale=all_max, last_one=True)
        _close(f"embed_to_fhat.{tag} last_one", last, io[f"embed_to_fhat.{tag}.{scales[-1]}"], LATENT_TOL)
    _close("var_input", model.quantize.idx_to_var_input(idx), io["var_input"], LATENT_TOL)


@torch.no_grad()
def test_next_ar_input_replays_fhat(vq):
    """The sampler's step-by-step accumulation reproduces the teacher-forcing input and the final f_hat."""
    model, _, io, scales = vq
    q = model.quantize
    ms_h = model.embed_tokens([io[f"idx_Bl.{si}"] for si in scales])
    B, last = ms_h[0].shape[0], model.patch_nums[-1]
    f_hat = torch.zeros(B, model.Cvae, last, last)
    next_maps = []
    for si in scales:
        f_hat, nxt = q.next_ar_input(si, f_hat, ms_h[si])
        next_maps.append(nxt)
    flat = torch.cat([m.flatten(2).transpose(1, 2) for m in next_maps[:-1]], dim=1)
    _close("next_ar_input maps vs var_input", flat, io["var_input"], LATENT_TOL)
    _close("next_ar_input f_hat", f_hat, io[f"embed_to_fhat.all_to_max_scale.{scales[-1]}"], LATENT_TOL)


@torch.no_grad()
def test_training_forward(vq):
    model, _, io, _ = vq
    rec, usages, loss = model(io["images"])
    assert usages is None
    _close("forward_rec", rec, io["forward_rec"], IMAGE_TOL)
    _close("forward_vq_loss", loss.reshape(1), io["forward_vq_loss"], dict(atol=0.0, rtol=1e-5))


# ----------------------------------------------------------------------------------------------------
# Full-size manifests: the preset has the official keys and shapes
# ----------------------------------------------------------------------------------------------------
def test_manifest_matches_preset():
    paths = sorted((family_fixtures("var") / "manifests").glob("manifest_vqvae_*.json"))
    assert paths, "no manifest_vqvae_*.json in the fixtures"
    for path in paths:
        man = json.loads(path.read_text())
        b = man["build"]
        with torch.device("meta"):  # shapes only: no 100M-parameter allocation
            model = var_vqvae_f16(vocab_size=b["V"], z_channels=b["Cvae"], ch=b["ch"],
                                  share_quant_resi=b["share_quant_resi"], patch_nums=tuple(b["patch_nums"]))
        sd = model.state_dict()
        assert list(sd) == list(man["keys"]), f"{path.name}: key list/order differs"
        for k, spec in man["keys"].items():
            assert list(sd[k].shape) == spec["shape"], f"{path.name}: {k} {tuple(sd[k].shape)} vs {spec['shape']}"
            assert str(sd[k].dtype).removeprefix("torch.") == spec["dtype"], f"{path.name}: {k} dtype"
            kind = "buffer" if k in dict(model.named_buffers()) else "param"
            assert kind == spec["kind"], f"{path.name}: {k} is a {kind}, manifest says {spec['kind']}"
        assert sum(p.numel() for p in model.parameters()) == man["num_params"]
