"""The flextok family through the CLI (tiny configs): train tokenizer + 1D GPT, sample any number of tokens with
the loop and SJD, reconstruct, official-tokenizer loading and clear errors."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from vision_ar.cli import main
from vision_ar.errors import ConfigError

TOK = ["--model-set", "enc_dim=32", "--model-set", "enc_depth=1", "--model-set", "dec_dim=32", "--model-set",
       "dec_depth=1", "--model-set", "head_dim=16", "--model-set", "n_registers=8"]
QUICK = ["--limit", "32", "--steps", "2", "--set", "batch_size=8", "--set", "progress=false"]


def cli(*args) -> int:
    return main([str(a) for a in args])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("flextok_family")
    assert cli("train", "tokenizer", "--model", "flextok-fmnist", *TOK, *QUICK, "--out", root / "tok") == 0
    assert cli("train", "generator", "--model", "gpt-flextok-fmnist", "--model-set", "dim=32", "--model-set",
               "n_layer=1", "--model-set", "n_head=1", "--tokenizer", root / "tok" / "final", *QUICK,
               "--out", root / "gen") == 0
    img = (np.random.default_rng(0).random((32, 32)) * 255).astype(np.uint8)
    Image.fromarray(img).save(root / "in.png")
    return root


def _png(path) -> np.ndarray:
    return np.asarray(Image.open(path))


def test_pipeline_is_the_flextok_family_with_a_1d_gpt(runs):
    from vision_ar.pipelines import load_pipeline

    pipe = load_pipeline(str(runs / "gen" / "pipeline"))
    assert pipe.family.name == "flextok" and type(pipe).__name__ == "FlexTokPipeline"
    assert pipe.gpt.token_layout.kind == "sequence" and pipe.gpt.config.token_shape == (8,)
    assert pipe.gpt.config.vocab_size == pipe.tokenizer.codebook_size
    g = torch.Generator().manual_seed(0)
    out = pipe(class_labels=[1, 2], num_tokens=3, decode_steps=2, generator=g, output_type="pt")
    assert out.tokens.shape == (2, 3) and out.images.shape == (2, 3, 32, 32) and out.stats["num_tokens"] == 3
    with pytest.raises(ConfigError, match=r"1\.\.8"):
        pipe(class_labels=[1], num_tokens=9)


def test_sample_any_number_of_tokens_loop_and_sjd(runs, tmp_path, capsys):
    pipe = runs / "gen" / "pipeline"
    for k in (1, 8):
        assert cli("sample", "--model", pipe, "--classes", 0, 1, "--num-tokens", k, "--decode-steps", 2,
                   "--out", tmp_path / f"k{k}.png") == 0
        assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["num_tokens"] == k
    assert cli("sample", "--model", pipe, "--classes", 0, 1, "--num-tokens", 8, "--decode-steps", 2,
               "--out", tmp_path / "again.png") == 0
    assert np.array_equal(_png(tmp_path / "k8.png"), _png(tmp_path / "again.png"))  # same seed, same images
    assert cli("sample", "--model", pipe, "--classes", 0, 1, "--num-tokens", 5, "--decode-steps", 2, "--sampler",
               "sjd", "--sjd-init", "horizontal", "--out", tmp_path / "sjd.png") == 0
    stats = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert stats["num_tokens"] == 5 and "mean_accept_length" in stats


def test_reconstruct_from_a_pipeline_or_a_tokenizer_folder(runs, tmp_path, capsys):
    for model in (runs / "gen" / "pipeline", runs / "tok" / "final"):
        assert cli("reconstruct", "--model", model, "--image", runs / "in.png", "--num-tokens", 2,
                   "--decode-steps", 2, "--decode-cfg", "1+2*t", "--decode-apg", "on", "--out",
                   tmp_path / "rec.png") == 0
        line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert line["num_tokens"] == 2 and line["size"] == [32, 32] and np.isfinite(line["psnr"])
        assert _png(tmp_path / "rec.png").shape == (32, 32, 3)


def test_clear_errors(runs, tmp_path, capsys):
    pipe = runs / "gen" / "pipeline"
    cases = [
        (("sample", "--model", pipe, "--classes", 0, "--num-tokens", 0), r"num_tokens must be an integer in 1\.\.8"),
        (("sample", "--model", pipe, "--classes", 0, "--num-tokens", 9), r"1\.\.8"),
        (("sample", "--model", pipe, "--classes", 0, "--sampler", "sjd", "--sjd-init", "vertical"),
         "1D sequence"),
        (("sample", "--model", "fmnist-gpt", "--classes", 0, "--num-tokens", 2), "applies to flextok models"),
        (("reconstruct", "--model", pipe, "--image", runs / "in.png", "--num-tokens", 0), r"1\.\.8 tokens"),
        (("reconstruct", "--model", "flextok-d18-d28", "--image", runs / "in.png"), "pass --tokenizer FOLDER"),
        (("sample", "--model", "flextok-d18-d28", "--classes", 0), "pass --tokenizer PATH and --checkpoint PATH"),
        (("train", "tokenizer", "--model", "flextok-fmnist", *TOK, *QUICK, "--loss-set", "repa_wieght=1"),
         r"unknown --loss-set option\(s\) \['repa_wieght'\]"),
        (("train", "tokenizer", "--model", "flextok-fmnist", *TOK, *QUICK, "--lpips-weight", "1"),
         "rectified-flow loss"),
        (("train", "tokenizer", "--model", "vq-fmnist", *QUICK, "--loss-set", "repa_weight=1"),
         "shared tokenizer task"),
    ]
    for args, message in cases:
        out = ("--out", tmp_path / "x.png") if args[0] != "train" else ("--out", tmp_path / "run")
        assert cli(*args, *out) == 2, args
        err = capsys.readouterr().err
        assert __import__("re").search(message, err), (args, err)


def test_official_tokenizer_of_another_release_is_named(runs, tmp_path, capsys):
    from conftest import family_fixtures

    folder = family_fixtures("flextok")  # a tiny random-weight FlexTok in the official layout (d2-d2)
    assert cli("reconstruct", "--model", "flextok-d18-d28", "--tokenizer", folder, "--image", runs / "in.png",
               "--out", tmp_path / "x.png") == 2
    assert "holds a FlexTok d2-d2, but flextok-d18-d28 is for the d18-d28 release" in capsys.readouterr().err


def test_official_pipeline_loads_a_tokenizer_and_a_gpt_trained_on_it(runs):
    """from_official: the official-layout folder + a GPT folder sized for its tokens (here the fixture's tiny one)."""
    from conftest import family_fixtures
    from vision_ar.families.flextok import OFFICIAL_TOKENIZERS
    from vision_ar.models.next_token import GPT, GPTConfig
    from vision_ar.pipelines.flextok import FlexTokPipeline
    from vision_ar.tokenizers.flextok import FlexTok

    folder = family_fixtures("flextok")
    tok = FlexTok.from_pretrained(folder)
    OFFICIAL_TOKENIZERS["flextok-test-d2"] = (tok.spec.encoder.vit.depth, tok.spec.decoder.vit.depth)
    try:
        gpt = GPT(GPTConfig(dim=32, n_layer=1, n_head=1, vocab_size=tok.codebook_size, num_classes=10,
                            block_size=tok.n_registers, token_shape=(tok.n_registers,)))
        gpt.save_pretrained(runs / "official_gpt")
        pipe = FlexTokPipeline.from_official("flextok-test-d2", str(folder), str(runs / "official_gpt"))
        out = pipe(class_labels=[3], num_tokens=2, decode_steps=1, generator=torch.Generator().manual_seed(0),
                   output_type="pt")
        assert out.images.shape == (1, 3, 64, 64)
    finally:
        OFFICIAL_TOKENIZERS.pop("flextok-test-d2")
