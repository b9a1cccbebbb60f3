"""The xar family through the contract: registration, pipeline, `vision-ar train` / `sample`, official loading
(tiny random-weight models; the wiring, not the quality)."""
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from vision_ar.cli import main
from vision_ar.errors import ConfigError
from vision_ar.family import family_of, get_family
from vision_ar.models.next_x import XAR, XARConfig
from vision_ar.pipelines import load_pipeline
from vision_ar.pipelines.xar import XARPipeline
from vision_ar.tokenizers.kl import KLConfig, KLVAE

TINY_XAR = dict(latent_channels=4, grid_size=4, num_classes=5, encoder_embed_dim=32, encoder_depth=1,
                encoder_num_heads=2, decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2,
                entity="cell", entity_size=2)


@pytest.fixture(scope="module")
def tiny_pipeline_folder(tmp_path_factory):
    torch.manual_seed(0)
    vae = KLVAE(KLConfig(latent_channels=4, ch=32, ch_mult=(1, 2), num_res_blocks=1, encoder_attn_levels=()))
    xar = XAR(XARConfig(**TINY_XAR))
    folder = tmp_path_factory.mktemp("tiny") / "pipe"
    XARPipeline(vae, xar, {"guidance_scale": 2.0, "num_steps": 2}, [f"c{i}" for i in range(5)]).save_pretrained(folder)
    return folder


def test_family_registration():
    fam = get_family("xar")
    assert fam.tokenizer_presets == "kl-tokenizer" and fam.generator_presets == "xar"
    kl = KLVAE(KLConfig(latent_channels=4, ch=32, ch_mult=(1, 2), num_res_blocks=1, encoder_attn_levels=()))
    layout = kl.token_layout(8)
    assert layout.kind == "latent" and layout.shape == (4, 4, 4) and layout.dtype == "float"
    assert fam.size_generator(kl, layout) == {"latent_channels": 4, "grid_size": 4}
    encode, cache_layout = fam.tokens_to_cache(kl, layout)
    assert cache_layout.shape == (8, 4, 4)  # the posterior's mean and logvar
    cache_layout.check(encode(torch.zeros(2, 3, 8, 8)))
    assert family_of(tokenizer=kl, generator=XAR(XARConfig(**TINY_XAR))) is fam
    with pytest.raises(ConfigError, match="latent_channels=8 but its tokenizer .* needs latent_channels=4"):
        family_of(tokenizer=kl, generator=XAR(XARConfig(**{**TINY_XAR, "latent_channels": 8})))


def test_pipeline_roundtrip_and_determinism(tiny_pipeline_folder):
    pipe = load_pipeline(str(tiny_pipeline_folder))
    assert isinstance(pipe, XARPipeline)
    a = pipe(class_labels=[0, 4], generator=torch.Generator().manual_seed(3), output_type="np")
    b = pipe(class_labels=[0, 4], generator=torch.Generator().manual_seed(3), output_type="np")
    c = pipe(class_labels=[0, 4], generator=torch.Generator().manual_seed(4), output_type="np")
    assert a.images.shape == (2, 8, 8, 3) and a.images.dtype == np.uint8
    assert np.array_equal(a.images, b.images) and not torch.equal(a.tokens, c.tokens)
    assert a.tokens.shape == (2, 4, 4, 4) and a.stats["forward_passes"] == 4 * 2
    ode = pipe(class_labels=[1], num_steps=1, method="euler", generator=torch.Generator().manual_seed(0))
    assert ode.images[0].size == (8, 8)
    with pytest.raises(ConfigError, match="num_steps"):
        pipe(class_labels=[1], num_steps=0)
    with pytest.raises(ConfigError, match="out of range"):
        pipe(class_labels=[5])
    with pytest.raises(ConfigError, match="does not apply"):
        pipe(class_labels=[1], sampler="sjd")


def test_cli_sample_with_flow_flags(tiny_pipeline_folder, tmp_path, capsys):
    npz = tmp_path / "s.npz"
    assert main(["sample", "--model", str(tiny_pipeline_folder), "--classes", "0", "3", "--seed", "1",
                 "--flow-steps", "3", "--flow-method", "euler", "--out", str(npz)]) == 0
    data = np.load(npz)
    assert data["arr_0"].shape == (2, 8, 8, 3)
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["n"] == 2
    assert main(["sample", "--model", str(tiny_pipeline_folder), "--classes", "0", "--flow-steps", "0",
                 "--out", str(tmp_path / "x.png")]) == 2
    assert "num_steps" in capsys.readouterr().err
    assert main(["sample", "--model", "xar-b", "--classes", "0", "--out", str(tmp_path / "y.png")]) == 2
    err = capsys.readouterr().err
    assert "--vae PATH" in err and "--checkpoint PATH" in err and "kl16.ckpt" in err


def test_official_checkpoints_load_from_pth_files(tmp_path):
    """The official file formats (torch.save'd dicts read with weights_only=True): kl16.ckpt = {'model': sd},
    xAR-*.pth = a plain state_dict with buffers; fixture-sized models through the preset loaders."""
    from conftest import family_fixtures

    root = family_fixtures("xar")
    vae_cfg = json.loads((root / "vae" / "config.json").read_text())
    xar_cfg = json.loads((root / "xar" / "config.json").read_text())
    torch.save({"model": load_file(str(root / "vae" / "state_dict.safetensors"))}, tmp_path / "kl.ckpt")
    torch.save(load_file(str(root / "xar" / "state_dict.safetensors")), tmp_path / "xar.pth")
    body = vae_cfg["encoder_decoder_overrides"]
    vae = KLVAE.from_official_checkpoint(tmp_path / "kl.ckpt", ch=body["ch"], ch_mult=tuple(vae_cfg["constructor"]["ch_mult"]))
    ctor = xar_cfg["constructor"]
    sizes = {k: ctor[k] for k in ("encoder_embed_dim", "encoder_depth", "encoder_num_heads", "decoder_embed_dim",
                                  "decoder_depth", "decoder_num_heads")}
    xar = XAR.from_official_checkpoint(tmp_path / "xar.pth", preset="xar-b", **sizes)
    assert not any(p.is_meta for p in xar.parameters())
    pipe = XARPipeline(vae, xar)
    out = pipe(class_labels=[207], num_steps=2, guidance_scale=2.7, generator=torch.Generator().manual_seed(0),
               output_type="pt")
    assert out.images.shape == (1, 3, 256, 256)
    with pytest.raises(Exception, match="trained with entity cell \\(entity_size=8\\)"):
        XAR.from_official_checkpoint(tmp_path / "xar.pth", preset="xar-b", entity="token", **sizes)


COMMON = ["--data", "fashion-mnist", "--limit", "32", "--steps", "2", "--set", "batch_size=8", "--set", "progress=false",
          "--set", "log_every=1", "--set", "ckpt_every=1"]


def test_train_tokenizer_then_generator_then_sample(tmp_path):
    tok_out, gen_out = tmp_path / "tok", tmp_path / "gen"
    assert main(["train", "tokenizer", "--model", "kl-fmnist", "--out", str(tok_out)] + COMMON) == 0
    assert json.loads((tok_out / "final" / "config.json").read_text())["_class"] == "KLVAE"
    small = ["encoder_depth=1", "decoder_depth=1", "encoder_embed_dim=32", "decoder_embed_dim=32",
             "encoder_num_heads=2", "decoder_num_heads=2", "entity=\"subsample\"", "entity_size=4"]
    model_set = [x for kv in small for x in ("--model-set", kv)]
    assert main(["train", "generator", "--model", "xar-fmnist", "--tokenizer", str(tok_out / "final"),
                 "--out", str(gen_out)] + model_set + COMMON) == 0
    from vision_ar.data import CachedTokens

    cache = CachedTokens(gen_out / "tokens.safetensors")
    assert cache.tokens.dtype == torch.float32 and cache.token_layout.shape == (32, 8, 8)  # moments stay float
    metrics = [json.loads(l) for l in (gen_out / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["step"] == 2 and "mse_last_entity" in metrics[-1]
    png = tmp_path / "g.png"
    assert main(["sample", "--model", str(gen_out / "pipeline"), "--classes", "0", "9", "--flow-steps", "2",
                 "--out", str(png)]) == 0
    assert png.stat().st_size > 0
