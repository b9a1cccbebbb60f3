"""FlexTok parity with the official apple/ml-flextok outputs stored in ../shared/fixtures/flextok/.

Everything is read from the fixture folder: the model builds itself from model.safetensors' own metadata, the
detokenize cases come from meta.json, the full-size manifests are every *.json in full_size_manifests/, and
sizes/seeds from config.json's generator_settings. Tolerances: the README's (atol 1e-4 on floats, exact tokens).
"""
import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import family_fixtures

pytestmark = pytest.mark.parity
ATOL = 1e-4


@pytest.fixture(scope="module")
def folder():
    return family_fixtures("flextok")


@pytest.fixture(scope="module")
def meta(folder):
    return json.loads((folder / "meta.json").read_text())


@pytest.fixture(scope="module")
def settings(folder):
    return json.loads((folder / "config.json").read_text()).get("generator_settings", {})


@pytest.fixture(scope="module")
def model(folder):
    from vision_ar.tokenizers.flextok import FlexTok

    return FlexTok.from_pretrained(folder).eval()


def _close(name, got, want, atol=ATOL):
    assert got.shape == want.shape, f"{name}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    err = (got.float() - want.float()).abs().max().item() if got.numel() else 0.0
    assert err <= atol, f"{name}: max abs error {err:.3g} > {atol}"


def _guidance(value):
    from vision_ar.sampling.rectified_flow import parse_guidance

    return parse_guidance(value)


# ----------------------------------------------------------------------------------------------------
def test_fsq(folder):
    from vision_ar.tokenizers.fsq import FSQ

    d = load_file(str(folder / "fsq.safetensors"))
    fsq = FSQ(d["levels"].tolist())
    assert torch.equal(fsq.basis, d["basis"].long())
    _close("bounded", fsq.bound(d["z"]), d["bounded"], atol=1e-5)  # tanh differs by ~1e-7 across CPUs
    quant, tokens = fsq(d["z"])
    assert torch.equal(quant, d["quant"])
    assert torch.equal(tokens, d["tokens"].long())
    assert torch.equal(fsq.indices_to_codes(d["indices"]), d["indices_to_embedding"])
    assert torch.equal(fsq.codes_to_indices(fsq.indices_to_codes(d["indices"])), d["indices"].long())


def test_tokenize(model, folder):
    d = load_file(str(folder / "tokenize.safetensors"))
    out = model.encode_with_intermediates(d["images"], sample_posterior=False)
    _close("posterior mean", out["mean"], d["vae_posterior_mean"])
    _close("posterior logvar", out["logvar"], d["vae_posterior_logvar"])
    _close("latents", out["latents"], d["vae_latents"])
    _close("encoder registers", out["registers"], d["enc_registers_pre_fsq"])
    _close("bounded", model.regularizer.bound(out["registers"]), d["enc_registers_bounded"])
    assert torch.equal(out["quants"], d["quants"])
    assert torch.equal(out["tokens"], d["tokens"].long())
    assert torch.equal(model.tokenize(d["images"], sample_posterior=False), d["tokens"].long())


def test_tokenize_posterior_sample(model, folder, settings):
    d = load_file(str(folder / "tokenize.safetensors"))
    torch.manual_seed(int(settings["posterior_seed"]))
    out = model.encode_with_intermediates(d["images"], sample_posterior=True)  # one global randn, as official
    _close("sampled latents", out["latents"], d["vae_latents_sampled"])
    assert torch.equal(out["tokens"], d["tokens_sampled"].long())
    injected = model.encode_with_intermediates(d["images"], sample_posterior=True, eps=d["posterior_eps"])
    _close("latents from the captured eps", injected["latents"], d["vae_latents_sampled"])


def test_decoder_call_with_and_without_null_condition(model, folder):
    d = load_file(str(folder / "decoder_forward.safetensors"))
    args = (d["x_t"], d["timesteps"], d["quants"], d["keep_k"].long())
    _close("v_cond", model.velocity(*args, uncond=False), d["v_cond"])
    _close("v_uncond", model.velocity(*args, uncond=True), d["v_uncond"])


def test_detokenize_every_case(model, folder, meta):
    tok = load_file(str(folder / "tokenize.safetensors"))["tokens"]
    d = load_file(str(folder / "detokenize.safetensors"))
    cases = meta["detokenize_cases"]
    assert cases and all(f"{c['name']}.latents" in d for c in cases)
    calls = []
    hook = model.decoder.register_forward_hook(lambda *a: calls.append(1))
    try:
        for case in cases:
            name = case["name"]
            seqs = [tok[b:b + 1, :k] for b, k in enumerate(case["keep_k"])]
            kwargs = dict(steps=int(case["timesteps"]), guidance_scale=_guidance(case["guidance_scale"]),
                          apg=bool(case["perform_norm_guidance"]), latent_size=tuple(case["vae_image_sizes"]))
            gen = torch.Generator().manual_seed(int(case["generator_seed"]))
            trace, calls[:] = {}, []
            latents = model.detokenize_latents(seqs, generator=gen, trace=trace, **kwargs)
            assert len(calls) == case["n_decoder_calls"], f"{name}: {len(calls)} decoder calls"
            _close(f"{name}.noise", trace["x"][0], d[f"{name}.noise"], atol=0)
            _close(f"{name}.traj_t", trace["t"].float(), d[f"{name}.traj_t"], atol=1e-7)
            _close(f"{name}.traj_x", trace["x"], d[f"{name}.traj_x"])
            _close(f"{name}.traj_v_cond", trace["v_cond"], d[f"{name}.traj_v_cond"])
            assert ("v_uncond" in trace) == bool(case["uncond_pass"]) == (f"{name}.traj_v_uncond" in d), name
            if case["uncond_pass"]:
                _close(f"{name}.traj_v_uncond", trace["v_uncond"], d[f"{name}.traj_v_uncond"])
            _close(f"{name}.latents", latents, d[f"{name}.latents"])
            _close(f"{name}.images", model.decode_latents(latents), d[f"{name}.images"])
            # the only draws are one (1,C,h,w) randn per image, in image order
            fresh = torch.Generator().manual_seed(int(case["generator_seed"]))
            for _ in seqs:
                torch.randn((1, *d[f"{name}.noise"].shape[1:]), generator=fresh)
            assert torch.equal(gen.get_state(), fresh.get_state()), f"{name}: other random draws were made"
            if case.get("generator_none_after_manual_seed_equal"):
                torch.manual_seed(int(case["generator_seed"]))
                images = model.detokenize(seqs, generator=None, **kwargs)
                _close(f"{name}.images (generator=None)", images, d[f"{name}.images"])
    finally:
        hook.remove()


def test_training_forward_with_captured_draws(model, folder, meta):
    from vision_ar.tokenizers.flextok import TrainDraws

    tf = load_file(str(folder / "train_forward.safetensors"))
    images = load_file(str(folder / "tokenize.safetensors"))["images"]
    info = meta["train_forward"]
    draws = TrainDraws(register_sizes=torch.tensor(info["register_sizes"]), noise=tf["flow_noise"],
                       t=tf["sigmas"], keep_k=tf["train_keep_k"].long(), null=tf["nullcond_dropped"].bool())
    assert draws.keep_k.tolist() == info["keep_k"] and draws.null.tolist() == info["nullcond_dropped"]
    model.train()
    try:
        out = model.training_forward(images, draws)
    finally:
        model.eval()
    _close("vae_latents", out["latents"], tf["vae_latents"])
    _close("noised", out["noised"], tf["noised"])
    assert torch.equal(out["quants"], tf["quants"]) and torch.equal(out["tokens"], tf["tokens"].long())
    _close("v_pred", out["v_pred"], tf["v_pred"])
    _close("target (noise - x0)", out["target"], tf["rf_target_noise_minus_x0"])
    _close("mse", ((out["v_pred"] - out["target"]) ** 2).mean().reshape(1), tf["mse"])


def test_the_checkpoint_metadata_decides_module_names(model, folder, tmp_path):
    """A checkpoint whose modules carry other names (and a zero null condition) loads by its own metadata."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from vision_ar.tokenizers.flextok import FlexTok
    from vision_ar.tokenizers.flextok_config import config_from_metadata

    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        cfg = config_from_metadata(f.metadata(), "fixture")
    sd = load_file(str(folder / "model.safetensors"))
    md = cfg["decoder"]["module_dict"]
    renamed = {("renamed_head" if k == "dec_to_patches" else k): v for k, v in md.items()}
    null_name = next(k for k, v in md.items() if v["_target_"].endswith("NullCond"))
    renamed[null_name] = {"_target_": "flextok.model.preprocessors.nullcond.ZeroNullCond",
                          "read_write_key": md[null_name]["read_write_key"],
                          "eval_drop_flag_read_key": "eval_dropout_mask", "dropout_prob": 0.1}
    cfg["decoder"]["module_dict"] = renamed
    sd = {k.replace(".dec_to_patches.", ".renamed_head."): v for k, v in sd.items()
          if f".{null_name}.nullcond" not in k}
    out = tmp_path / "ckpt"
    out.mkdir()
    save_file(sd, str(out / "model.safetensors"), metadata={k: repr(v) if not isinstance(v, str) else v
                                                             for k, v in cfg.items()})
    other = FlexTok.from_pretrained(out, vae_folder=folder / "vae")
    assert any(".renamed_head." in k for k in other.state_dict())
    d = load_file(str(folder / "decoder_forward.safetensors"))
    args = (d["x_t"], d["timesteps"], d["quants"], d["keep_k"].long())
    _close("v_cond under renamed modules", other.velocity(*args), d["v_cond"])
    assert not torch.allclose(other.velocity(*args, uncond=True), d["v_uncond"], atol=1e-3)  # zeros, not learned


def _config_from_manifest(man: dict):
    """Sizes read off a key -> shape manifest (widths, depths, registers, patch, adaLN expansion, null cond)."""
    from vision_ar.tokenizers.flextok_config import flextok_config

    keys = man["keys"]

    def shape(suffix):
        hits = [k for k in keys if k.endswith(suffix)]
        assert len(hits) == 1, (suffix, hits)
        return keys[hits[0]]["shape"]

    def depth(module):
        return len({k.split(".blocks.")[1].split(".")[0] for k in keys if f".{module}.blocks." in k})

    latent = shape("vae.vae.encoder.conv_out.weight")[0] // 2  # mean and logvar
    enc_dim, patch_in = shape("enc_patch_emb.patch_proj.weight")
    dec_dim = shape("dec_noise_patch_emb.patch_proj.weight")[0]
    patch = round((patch_in / latent) ** 0.5)
    grid = shape("enc_posemb_module.posembs")[-1]
    codes = shape("enc_to_latents.proj.weight")[0]
    hidden = shape("dec_transformer.blocks.0.mlp.fc1.weight")[0]
    ratio = next(r for r in (4.0, 3.0, 2.0, 8.0) if int(2 * int(dec_dim * r) / 3) == hidden)
    cfg = flextok_config(
        latent_channels=latent, levels=[8] * codes, n_registers=shape("enc_register_module.registers")[0],
        latent_size=grid * patch, patch_size=patch, enc_dim=enc_dim, enc_depth=depth("enc_transformer"),
        dec_dim=dec_dim, dec_depth=depth("dec_transformer"), head_dim=64, vae="diffusers", vae_path=None,
        nullcond="learned" if any(k.endswith(".nullcond") for k in keys) else "zero", mlp_ratio=ratio,
        adaLN_expansion=shape("dec_transformer.blocks.0.adaLN_modulation.1.weight")[0] // (6 * dec_dim))
    return cfg, {**man["vae_base_cfg"], "latent_channels": latent}


def test_full_size_manifests(folder):
    from vision_ar.tokenizers.flextok import FlexTok

    manifests = sorted((folder / "full_size_manifests").glob("*.json"))
    assert manifests
    for path in manifests:
        man = json.loads(path.read_text())
        cfg, vae_cfg = _config_from_manifest(man)
        with torch.device("meta"):
            m = FlexTok(cfg, vae_cfg)
        got = {k: list(v.shape) for k, v in m.state_dict().items()}
        want = {k: v["shape"] for k, v in man["keys"].items()}
        assert got.keys() == want.keys(), f"{path.name}: {sorted(set(got) ^ set(want))[:10]}"
        assert got == want, f"{path.name}: {[k for k in got if got[k] != want[k]][:10]}"
        assert sum(v.numel() for v in m.state_dict().values()) == man["n_params_total"], path.name
        assert sum(v.numel() for k, v in m.state_dict().items() if k.startswith("vae.")) == man["n_params_vae"]
