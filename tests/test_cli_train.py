"""`vision-ar train` end to end on a few real Fashion-MNIST images: tokenizer -> cached codes -> generator ->
pipeline folder -> `vision-ar sample`. Tiny step counts: this checks the wiring, not the quality."""
import json

import pytest

from vision_ar.cli import main

COMMON = ["--data", "fashion-mnist", "--limit", "64", "--steps", "2", "--set", "batch_size=8", "--set", "progress=false",
          "--set", "log_every=1", "--set", "ckpt_every=1"]


@pytest.mark.parametrize("tokenizer, generator, gen_set", [
    ("var-vqvae-fmnist", "var-fmnist", ["depth=1", "embed_dim=64", "num_heads=1"]),
    ("vq-fmnist", "gpt-fmnist", ["n_layer=1", "dim=64", "n_head=1"]),
])
def test_train_tokenizer_then_generator_then_sample(tmp_path, capsys, tokenizer, generator, gen_set):
    tok_out, gen_out = tmp_path / "tok", tmp_path / "gen"
    assert main(["train", "tokenizer", "--model", tokenizer, "--out", str(tok_out)] + COMMON) == 0
    assert (tok_out / "final" / "config.json").is_file() and (tok_out / "latest.pt").is_file()
    lines = (tok_out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(l)["step"] for l in lines] == [1, 2]
    model_set = [x for kv in gen_set for x in ("--model-set", kv)]
    assert main(["train", "generator", "--model", generator, "--tokenizer", str(tok_out / "final"),
                 "--out", str(gen_out)] + model_set + COMMON) == 0
    assert (gen_out / "pipeline" / "pipeline.json").is_file()
    png = tmp_path / "g.png"
    assert main(["sample", "--model", str(gen_out / "pipeline"), "--classes", "0", "9", "--out", str(png)]) == 0
    assert png.stat().st_size > 0
    if generator.startswith("gpt"):  # the same pipeline through Speculative Jacobi Decoding
        capsys.readouterr()
        assert main(["sample", "--model", str(gen_out / "pipeline"), "--classes", "0", "9", "--sampler", "sjd",
                     "--sjd-window", "4", "--sjd-init", "vertical", "--out", str(tmp_path / "sjd.png")]) == 0
        summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert summary["forward_passes"] <= 64 and summary["mean_accept_length"] >= 1


def test_train_errors(tmp_path, capsys):
    assert main(["train", "generator", "--model", "var-fmnist", "--out", str(tmp_path / "x")]) == 2
    assert "--tokenizer" in capsys.readouterr().err
    assert main(["train", "tokenizer", "--model", "var-fmnist", "--out", str(tmp_path / "x")]) == 2
    assert "this command trains" in capsys.readouterr().err
    assert main(["train", "tokenizer", "--model", "var-vqvae-fmnist", "--out", str(tmp_path / "x"),
                 "--set", "no_such=1"]) == 2
    assert "unknown TrainConfig field" in capsys.readouterr().err


DECODER_KEYS = {"var-vqvae-fmnist": ("decoder.", "post_quant_conv."), "vq-fmnist": ("decoder.", "post_quant_conv."),
                "kl-fmnist": ("autoencoder.decoder.", "autoencoder.post_quant_conv.")}


@pytest.mark.parametrize("tokenizer", sorted(DECODER_KEYS))
def test_decoder_only_finetune_keeps_every_code(tmp_path, tokenizer):
    """--decoder-only on --init: the decoder changes, the encoder/quantizer/codebook do not, so the codes of every
    image (and a generator trained on them) stay valid. The GAN phase runs too."""
    import torch

    from vision_ar.data import FashionMNIST
    from vision_ar.train.recipes import load_model_folder

    base, ft = tmp_path / "base", tmp_path / "ft"
    assert main(["train", "tokenizer", "--model", tokenizer, "--out", str(base)] + COMMON) == 0
    assert main(["train", "tokenizer", "--model", tokenizer, "--init", str(base / "final"), "--decoder-only",
                 "--disc-weight", "0.1", "--disc-start", "1", "--out", str(ft), "--set", "precision=bf16"] + COMMON) == 0
    a, b = load_model_folder(base / "final"), load_model_folder(ft / "final")
    sa, sb = a.state_dict(), b.state_dict()
    changed = {k for k in sa if not torch.equal(sa[k], sb[k])}
    assert changed and all(k.startswith(DECODER_KEYS[tokenizer]) for k in changed), sorted(changed)[:5]
    x = torch.stack([FashionMNIST("test", limit=8)[i][0] for i in range(8)])
    codes_a, codes_b = a.eval().encode(x), b.eval().encode(x)
    if isinstance(codes_a, torch.Tensor):  # one grid (VQ, KL latents) or a list of per-scale grids (multi-scale)
        codes_a, codes_b = [codes_a], [codes_b]
    assert all(torch.equal(ca, cb) for ca, cb in zip(codes_a, codes_b))
    assert "g_adv" in (ft / "metrics.jsonl").read_text()


def test_decoder_only_needs_init(tmp_path, capsys):
    assert main(["train", "tokenizer", "--model", "vq-fmnist", "--decoder-only", "--out", str(tmp_path / "x")]
                + COMMON) == 2
    assert "--init" in capsys.readouterr().err


def test_generator_init_continues_a_trained_generator(tmp_path, capsys):
    """--init on a generator: the run starts from those weights (with a vanishing lr it ends on them); a
    generator of another family, or --model-set beside --init, is refused before anything is written."""
    import torch

    from vision_ar.train.recipes import load_model_folder

    tok, gen, cont = tmp_path / "tok", tmp_path / "gen", tmp_path / "cont"
    assert main(["train", "tokenizer", "--model", "vq-fmnist", "--out", str(tok)] + COMMON) == 0
    small = ["--model-set", "n_layer=1", "--model-set", "dim=64", "--model-set", "n_head=1"]
    assert main(["train", "generator", "--model", "gpt-fmnist", "--tokenizer", str(tok / "final"),
                 "--out", str(gen)] + small + COMMON) == 0
    assert main(["train", "generator", "--model", "gpt-fmnist", "--tokenizer", str(tok / "final"),
                 "--init", str(gen / "final"), "--out", str(cont)] + COMMON + ["--set", "lr=1e-12",
                                                                                 "--set", "weight_decay=0"]) == 0
    a, b = load_model_folder(gen / "final").state_dict(), load_model_folder(cont / "final").state_dict()
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], rtol=0, atol=1e-6) for k in a)
    assert (cont / "pipeline" / "pipeline.json").is_file()
    capsys.readouterr()

    assert main(["train", "generator", "--model", "gpt-fmnist", "--tokenizer", str(tok / "final"),
                 "--init", str(gen / "final"), "--model-set", "dim=32", "--out", str(tmp_path / "x")] + COMMON) == 2
    assert "drop --model-set dim" in capsys.readouterr().err
    var_tok = tmp_path / "vtok"
    assert main(["train", "tokenizer", "--model", "var-vqvae-fmnist", "--out", str(var_tok)] + COMMON) == 0
    capsys.readouterr()
    assert main(["train", "generator", "--model", "var-fmnist", "--tokenizer", str(var_tok / "final"),
                 "--init", str(gen / "final"), "--out", str(tmp_path / "y")] + COMMON) == 2
    assert "does not fit tokenizer" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
