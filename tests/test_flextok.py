"""FlexTok on tiny configs: files, prefixes, training draws, bad input (clear errors before any work)."""
import json

import pytest
import torch

from vision_ar.errors import CheckpointError, ConfigError, MissingFileError
from vision_ar.tokenizers.flextok import FlexTok, flextok_fmnist, sample_keep_k
from vision_ar.tokenizers.fsq import FSQ

TINY = dict(enc_dim=32, enc_depth=1, dec_dim=32, dec_depth=2, head_dim=16, n_registers=8)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    tok = flextok_fmnist(**TINY).eval()
    with torch.no_grad():  # the official heads start at zero; give them weights so outputs depend on the inputs
        for p in tok.parameters():
            if p.requires_grad and p.abs().sum() == 0 and p.ndim > 1:
                p.normal_(0, 0.02)
    return tok


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(1)
    return torch.rand(3, 3, 32, 32, generator=g) * 2 - 1


def test_fsq_roundtrip_over_the_whole_codebook():
    for levels in ([8, 5, 5, 5], [7, 5, 3], [2, 2, 4]):
        fsq = FSQ(levels)
        ids = torch.arange(fsq.codebook_size)
        codes = fsq.indices_to_codes(ids)
        assert codes.abs().max() <= 1
        assert torch.equal(fsq.codes_to_indices(codes), ids)
        q, t = fsq(codes * 3)  # quantize is idempotent on the grid up to bound's squash
        assert torch.equal(fsq.codes_to_indices(q), t)


def test_fsq_straight_through_gradient():
    fsq = FSQ([8, 5]).train()
    z = torch.randn(4, 2, requires_grad=True)
    q, _ = fsq(z)
    q.sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0


def test_encode_shapes_and_token_range(tiny, images):
    tokens = tiny.encode(images)
    assert tokens.shape == (3, tiny.n_registers) and tokens.dtype == torch.int64
    assert 0 <= int(tokens.min()) and int(tokens.max()) < tiny.codebook_size


def test_registers_are_causal_a_prefix_does_not_see_later_registers(tiny, images):
    lat = tiny.encode_latents(images)["latents"]
    full = tiny.encoder(lat, torch.full((3,), tiny.n_registers))
    short = tiny.encoder(lat, torch.full((3,), 3))
    torch.testing.assert_close(short, full[:, :3], atol=1e-5, rtol=0)


def test_decode_prefix_forms_agree_and_keep_noise_per_image(tiny, images):
    tokens = tiny.encode(images)
    a = tiny.decode(tokens[:, :4], steps=2, guidance_scale=2.0, generator=torch.Generator().manual_seed(3))
    b = tiny.decode([t[:4] for t in tokens], steps=2, guidance_scale=2.0, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b)
    assert a.shape == (3, 3, 32, 32)
    mixed = tiny.decode([tokens[0, :1], tokens[1, :8], tokens[2, :4]], steps=2,
                        generator=torch.Generator().manual_seed(3), guidance_scale=1.0)
    alone = tiny.decode([tokens[0, :1]], steps=2, generator=torch.Generator().manual_seed(3), guidance_scale=1.0)
    torch.testing.assert_close(mixed[:1], alone, atol=1e-5, rtol=0)
    assert not torch.allclose(mixed[0], mixed[1])


def test_guidance_schedule_and_apg_change_the_output(tiny, images):
    tokens = tiny.encode(images)[:, :2]
    outs = [tiny.decode(tokens, steps=3, generator=torch.Generator().manual_seed(0), **kw) for kw in
            (dict(guidance_scale=1.0), dict(guidance_scale=3.0), dict(guidance_scale=3.0, apg=True),
             dict(guidance_scale=lambda t: 1 + 2 * t, apg=True))]
    for i in range(len(outs)):
        for j in range(i):
            assert not torch.allclose(outs[i], outs[j]), (i, j)


def test_save_and_load_roundtrip(tiny, images, tmp_path):
    tiny.save_pretrained(tmp_path / "tok")
    cfg = json.loads((tmp_path / "tok" / "config.json").read_text())
    assert cfg["_class"] == "FlexTok" and cfg["_decode_defaults"] == tiny.decode_defaults
    again = FlexTok.from_pretrained(tmp_path / "tok")
    assert torch.equal(again.encode(images), tiny.encode(images))
    g = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    torch.testing.assert_close(again.decode(tiny.encode(images)[:, :2], steps=2, generator=g()),
                               tiny.decode(tiny.encode(images)[:, :2], steps=2, generator=g()))
    from safetensors import safe_open

    with safe_open(str(tmp_path / "tok" / "model.safetensors"), "pt") as f:  # the official layout
        assert {"vae", "encoder", "regularizer", "decoder", "pipeline"} <= set(f.metadata())


def test_nested_dropout_lengths():
    g = torch.Generator().manual_seed(0)
    assert {sample_keep_k(32, "pow2", g) for _ in range(300)} == {1, 2, 4, 8, 16, 32}
    assert {sample_keep_k(6, "uniform", g) for _ in range(300)} == set(range(1, 7))
    assert {sample_keep_k(6, "uniform_pow2", g) for _ in range(300)} == {1, 2, 4, 8}
    with pytest.raises(ConfigError, match="power-of-two"):
        sample_keep_k(12, "pow2")


def test_training_draws_follow_the_config(tiny):
    torch.manual_seed(0)
    d = tiny.sample_train_draws(torch.zeros(400, 1, 32, 32))
    assert set(d.keep_k.tolist()) == {1, 2, 4, 8}
    assert 0.02 < d.null.float().mean() < 0.2  # dropout_prob 0.1 of the preset
    assert 0 < float(d.t.min()) and float(d.t.max()) < 1 and abs(float(d.t.median()) - 0.5) < 0.1
    assert (d.register_sizes == tiny.n_registers).all()


def test_training_forward_and_gradients(tiny, images):
    import copy

    tok = copy.deepcopy(tiny).train()  # non-zero heads: at the official zero init no gradient reaches the encoder
    out = tok(images)
    loss = ((out["v_pred"] - out["target"]) ** 2).mean()
    loss.backward()
    enc = {n: p.grad for n, p in tok.named_parameters() if n.startswith("encoder.") and p.requires_grad}
    assert all(g is not None for g in enc.values())
    head = tok.spec.encoder.head.name  # straight-through FSQ lets the decoder's loss reach the encoder
    assert enc[f"encoder.module_dict.{head}.proj.weight"].abs().sum() > 0


# ---- bad input: clear errors, before any work -----------------------------------------------------------
def test_token_count_zero_or_above_n(tiny):
    calls = []
    hook = tiny.decoder.register_forward_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(ConfigError, match=r"0 tokens.*1\.\.8"):
            tiny.decode([torch.zeros(0, dtype=torch.long)])
        with pytest.raises(ConfigError, match=r"9 tokens.*1\.\.8"):
            tiny.decode(torch.zeros(1, 9, dtype=torch.long))
        with pytest.raises(ConfigError, match="integer tensor"):
            tiny.decode(torch.zeros(1, 3))
    finally:
        hook.remove()
    assert not calls


def test_out_of_range_codes(tiny):
    with pytest.raises(ConfigError, match=r"\[0, 999\].*max 1000"):
        tiny.decode(torch.tensor([[1, 1000]]))
    with pytest.raises(ConfigError, match="min -1"):
        tiny.decode(torch.tensor([[-1]]))
    with pytest.raises(ConfigError, match="levels"):
        FSQ([8, 1])


def test_checkpoint_without_configuration_metadata(tiny, tmp_path):
    from safetensors.torch import save_file

    (tmp_path / "bare").mkdir()
    save_file({k: v.contiguous() for k, v in tiny.state_dict().items()}, str(tmp_path / "bare" / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"missing \['vae', 'encoder', 'regularizer', 'decoder'"):
        FlexTok.from_pretrained(tmp_path / "bare")
    with pytest.raises(MissingFileError, match="model.safetensors"):
        FlexTok.from_pretrained(tmp_path / "nothing-here")


def test_unsupported_options_are_named(tiny):
    cfg = json.loads(json.dumps(tiny.config))
    cfg["encoder"]["module_dict"]["enc_transformer"]["rope_forward_read_key"] = "rope"
    with pytest.raises(ConfigError, match="enc_transformer.*rope_forward_read_key"):
        FlexTok(cfg)
    cfg = json.loads(json.dumps(tiny.config))
    cfg["decoder"]["module_dict"]["dec_to_patches"]["some_new_option"] = 1
    with pytest.raises(ConfigError, match=r"dec_to_patches.*\['some_new_option'\]"):
        FlexTok(cfg)


def test_vae_folder_with_other_latent_channels(tmp_path):
    pytest.importorskip("diffusers")
    from vision_ar.tokenizers.flextok_config import flextok_config

    vae_cfg = {"_class_name": "AutoencoderKL", "block_out_channels": [8, 8], "down_block_types":
               ["DownEncoderBlock2D"] * 2, "up_block_types": ["UpDecoderBlock2D"] * 2, "latent_channels": 4,
               "layers_per_block": 1, "norm_num_groups": 4, "scaling_factor": 1.0}
    (tmp_path / "vae").mkdir()
    (tmp_path / "vae" / "config.json").write_text(json.dumps(vae_cfg))
    cfg = flextok_config(latent_channels=16, levels=[8, 5], n_registers=4, latent_size=8, patch_size=2,
                         enc_dim=32, enc_depth=1, dec_dim=32, dec_depth=1, vae="diffusers", vae_path="vae")
    tok = FlexTok(cfg, {**vae_cfg, "latent_channels": 16})
    tok.save_pretrained(tmp_path / "tok")
    with pytest.raises(ConfigError, match=r"latent_channels=4.*16-channel"):
        FlexTok.from_pretrained(tmp_path / "tok", vae_folder=tmp_path / "vae")
    with pytest.raises(ConfigError, match=r"latent_channels=4.*16-channel"):
        FlexTok(cfg, vae_cfg)
    import shutil

    shutil.rmtree(tmp_path / "tok" / "vae")
    with pytest.raises(MissingFileError, match="'vae'.*nothing is downloaded.*vae_folder"):
        FlexTok.from_pretrained(tmp_path / "tok")


def test_guidance_and_steps_errors(tiny):
    from vision_ar.sampling.rectified_flow import parse_guidance

    tokens = torch.zeros(1, 2, dtype=torch.long)
    with pytest.raises(ConfigError, match="steps must be an integer >= 1"):
        tiny.decode(tokens, steps=0)
    with pytest.raises(ConfigError, match="guidance_scale"):
        tiny.decode(tokens, guidance_scale="strong")
    with pytest.raises(ConfigError, match="only numbers, t"):
        parse_guidance("open('x')")
    assert parse_guidance("1+6.5*t")(0.5) == 1 + 6.5 * 0.5


def test_image_checks(tiny):
    with pytest.raises(ConfigError, match="multiple of 4"):
        tiny.encode(torch.zeros(1, 3, 30, 30))
    with pytest.raises(ConfigError, match=r"\(B, 3, H, W\)"):
        tiny.encode(torch.zeros(1, 1, 32, 32))
