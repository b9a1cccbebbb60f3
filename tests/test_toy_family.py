"""The family contract's proof: a new family defined entirely in this file (a toy tokenizer, generator, training
task and pipeline) registers itself and then trains, samples and evaluates through the `vision-ar` command,
without touching a file of the package. Plus the contract's bad-input errors.

The toy: the tokenizer averages 8x8 gray patches of a 32x32 image into a 1D sequence of 16 values and
quantizes each to one of 8 learned levels; the generator is a class-conditional table of independent
per-position logits (with a null class for guidance).
"""
import dataclasses
import json
from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vision_ar.cli import main
from vision_ar.errors import ConfigError
from vision_ar.family import (Family, Flag, SamplingConvention, family_of, family_of_preset, get_family,
                              list_families, register_family, unregister_family)
from vision_ar.io import PretrainedMixin
from vision_ar.pipelines.base import Pipeline, PipelineOutput, to_output_type
from vision_ar.registry import register_preset, unregister_preset
from vision_ar.tokens import TokenLayout, image_hw


# ----------------------------------------------------------------------------------------------------
# The toy family
# ----------------------------------------------------------------------------------------------------
@dataclass
class ToyTokenizerConfig:
    levels: int = 8
    patch: int = 8
    image_size: int = 32


class ToyTokenizer(PretrainedMixin, nn.Module):
    config_class = ToyTokenizerConfig

    def __init__(self, config: ToyTokenizerConfig):
        super().__init__()
        self.config = config
        self.codebook = nn.Parameter(torch.linspace(-1, 1, config.levels))
        self.to_rgb = nn.Conv2d(1, 3, 1)
        self.side = config.image_size // config.patch

    def token_layout(self, image_size=None):
        if image_size is not None and image_hw(image_size) != (self.config.image_size,) * 2:
            raise ConfigError(f"the toy tokenizer takes {self.config.image_size}px images")
        return TokenLayout.sequence(self.side * self.side, vocab_size=self.config.levels)

    def _latent(self, images):
        return F.avg_pool2d(images.mean(1, keepdim=True), self.config.patch).flatten(1)  # (B, 16)

    def _codes(self, z):
        return (z[..., None] - self.codebook).abs().argmin(-1)

    def encode(self, images):
        return self._codes(self._latent(images))

    def _pixels(self, values):
        grid = values.view(-1, 1, self.side, self.side)
        return self.to_rgb(F.interpolate(grid, scale_factor=self.config.patch, mode="nearest"))

    def decode(self, tokens):
        return self._pixels(self.codebook[tokens])

    def forward(self, images):
        z = self._latent(images)
        q = self.codebook[self._codes(z)]
        quant_loss = F.mse_loss(q, z.detach()) + 0.25 * F.mse_loss(z, q.detach())
        return self._pixels(z + (q - z).detach()), quant_loss

    def training_forward(self, images, forward=None):
        rec, quant_loss = (forward or self)(images)
        return rec, quant_loss, {}


@dataclass
class ToyGeneratorConfig:
    num_classes: int = 10
    vocab_size: int = 8
    length: int = 16


class ToyGenerator(PretrainedMixin, nn.Module):
    config_class = ToyGeneratorConfig

    def __init__(self, config: ToyGeneratorConfig):
        super().__init__()
        self.config = config
        self.logits = nn.Parameter(torch.zeros(config.num_classes + 1, config.length, config.vocab_size))

    @property
    def token_layout(self):
        return TokenLayout.sequence(self.config.length, vocab_size=self.config.vocab_size)

    def forward(self, labels):
        return self.logits[labels]


class ToyTask:
    def __init__(self, generator):
        self.model = generator

    def loss(self, model, batch, step):
        tokens, labels = batch
        assert tokens.dtype == torch.int64 and tokens.shape[1:] == (16,)
        dropped = torch.where(torch.rand(labels.shape) < 0.1, self.model.config.num_classes, labels)
        logits = model(dropped)
        return F.cross_entropy(logits.flatten(0, 1), tokens.flatten()), {}


class ToyPipeline(Pipeline):
    def default_settings(self):
        return {"guidance_scale": 1.0, "toy_temperature": 1.0}

    @torch.no_grad()
    def __call__(self, class_labels, guidance_scale=None, generator=None, toy_temperature=None,
                 output_type="pil"):
        labels, g = self.check_request(class_labels, self.setting(guidance_scale, "guidance_scale"))
        cond = self.generator(torch.tensor(labels))
        uncond = self.generator(torch.full((len(labels),), self.generator.config.num_classes))
        logits = (uncond + (cond - uncond) * g) / self.setting(toy_temperature, "toy_temperature")
        flat = torch.multinomial(logits.softmax(-1).flatten(0, 1), 1, generator=generator).view(len(labels), -1)
        images = self.tokenizer.decode(self.generator.token_layout.unflatten(flat))
        images01 = ((images + 1) / 2).clamp(0, 1)
        return PipelineOutput(images=to_output_type(images01, output_type), tokens=flat, labels=labels)


def toy_family(**changes) -> Family:
    parts = dict(
        name="toy", description="a per-position categorical table over 1D toy codes",
        tokenizer_classes=(ToyTokenizer,), generator_class=ToyGenerator, pipeline_class=ToyPipeline,
        tokenizer_presets="toy-tokenizer", generator_presets="toy",
        size_generator=lambda tok, layout: {"vocab_size": tok.config.levels, "length": layout.num_tokens},
        generator_task=lambda gen, tok: ToyTask(gen),
        sampling=SamplingConvention(samplers=("table",), guidance="uncond + (cond - uncond) * scale",
                                    no_guidance=1.0),
        cli_flags=(Flag("--toy-temperature", "toy: divide the logits", to="call", type=float),))
    parts.update(changes)
    return Family(**parts)


@pytest.fixture(scope="module")
def toy():
    register_preset("toy-tok", family="toy-tokenizer")(lambda **o: ToyTokenizer(ToyTokenizerConfig(**o)))
    register_preset("toy-gen", family="toy")(lambda **o: ToyGenerator(ToyGeneratorConfig(**o)))
    fam = register_family(toy_family())
    yield fam
    unregister_family("toy")
    unregister_preset("toy-tok")
    unregister_preset("toy-gen")


COMMON = ["--data", "fashion-mnist", "--limit", "64", "--steps", "3", "--set", "batch_size=16",
          "--set", "progress=false", "--set", "log_every=1", "--set", "ckpt_every=3"]


def test_toy_family_trains_samples_and_evaluates_through_the_cli(toy, tmp_path, capsys):
    tok, gen = tmp_path / "tok", tmp_path / "gen"
    assert main(["train", "tokenizer", "--model", "toy-tok", "--out", str(tok)] + COMMON) == 0
    assert main(["train", "generator", "--model", "toy-gen", "--tokenizer", str(tok / "final"),
                 "--out", str(gen)] + COMMON) == 0
    # the generator was sized from the tokenizer's declared 1D layout; the cache kept it
    cfg = json.loads((gen / "final" / "config.json").read_text())
    assert cfg["_class"] == "ToyGenerator" and cfg["length"] == 16 and cfg["vocab_size"] == 8
    assert json.loads((gen / "pipeline" / "pipeline.json").read_text())["_class"] == "ToyPipeline"

    png, npz = tmp_path / "g.png", tmp_path / "s.npz"
    assert main(["sample", "--model", str(gen / "pipeline"), "--classes", "0", "9", "--out", str(png)]) == 0
    assert png.stat().st_size > 0
    args = ["sample", "--model", str(gen / "pipeline"), "--classes", "3", "--repeat", "2", "--seed", "5",
            "--toy-temperature", "0.5", "--cfg", "2.0"]
    assert main(args + ["--out", str(npz)]) == 0
    assert main(args + ["--out", str(tmp_path / "again.npz")]) == 0
    a, b = np.load(npz)["arr_0"], np.load(tmp_path / "again.npz")["arr_0"]
    assert a.shape == (2, 32, 32, 3) and np.array_equal(a, b)  # same seed, same images

    capsys.readouterr()
    out = tmp_path / "eval"
    assert main(["eval", "--pipeline", str(gen / "pipeline"), "--ref", "fashion-mnist", "--num", "20",
                 "--chunk-size", "10", "--out-dir", str(out), "--no-progress", "--device", "cpu"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["metrics"]["n"] == 20 and 0.0 <= report["metrics"]["accuracy"] <= 1.0
    assert "accuracy" in capsys.readouterr().out


def test_toy_family_is_listed_and_found(toy):
    assert get_family("toy") is toy and toy in list_families()
    tok, gen = ToyTokenizer(ToyTokenizerConfig()), ToyGenerator(ToyGeneratorConfig())
    assert family_of(tokenizer=tok, generator=gen) is toy
    assert family_of_preset("toy-gen") is toy and family_of_preset("toy-tok", role="tokenizer") is toy
    assert family_of_preset("var-fmnist").name == "var" and family_of_preset("gpt-b").name == "next-token"


# ----------------------------------------------------------------------------------------------------
# Bad input: one clear error each, naming the family and the fix
# ----------------------------------------------------------------------------------------------------
def test_registering_a_family_twice(toy):
    with pytest.raises(ConfigError, match="family 'toy' is registered twice"):
        register_family(toy_family())
    with pytest.raises(ConfigError, match="preset 'toy-gen' is registered twice"):
        register_preset("toy-gen", family="toy")(lambda **o: None)


def test_a_family_missing_parts():
    with pytest.raises(ConfigError, match=r"family 'toy2' is missing size_generator \(.*\); generator_task"):
        toy_family(name="toy2", generator_task=None, size_generator=None)
    with pytest.raises(ConfigError, match="missing name"):
        toy_family(name="")

    class NoLayout(nn.Module):
        def encode(self, x): ...
        def decode(self, t): ...
        save_pretrained = from_pretrained = None

    with pytest.raises(ConfigError, match="family 'toy3': tokenizer class NoLayout lacks token_layout"):
        toy_family(name="toy3", tokenizer_classes=(NoLayout,))
    with pytest.raises(ConfigError, match="pipeline_class must be a subclass"):
        toy_family(name="toy4", pipeline_class=object)


def test_a_flag_that_clashes_with_a_command_option(tmp_path, capsys):
    register_family(toy_family(name="toy-clash", tokenizer_presets="toy-clash-tokenizer",
                               generator_presets="toy-clash", cli_flags=(Flag("--seed", "clashes", type=int),)))
    try:
        assert main(["sample", "--model", "x", "--classes", "0", "--out", str(tmp_path / "x.png")]) == 2
        assert "family toy-clash: its flag --seed clashes with an option" in capsys.readouterr().err
    finally:
        unregister_family("toy-clash")


def test_a_pair_from_two_families(toy):
    from vision_ar.models.next_token import GPT, GPTConfig

    gpt = GPT(GPTConfig(dim=32, n_layer=1, n_head=2, vocab_size=8, num_classes=10, block_size=16))
    with pytest.raises(ConfigError, match="from different families.*toy tokenizer with a toy generator"):
        ToyPipeline(ToyTokenizer(ToyTokenizerConfig()), gpt)


def test_a_pair_with_mismatched_sizes(toy):
    with pytest.raises(ConfigError, match="family toy: .*vocab_size=16 .* needs vocab_size=8.*--model-set "
                                          "vocab_size=8"):
        ToyPipeline(ToyTokenizer(ToyTokenizerConfig()), ToyGenerator(ToyGeneratorConfig(vocab_size=16)))


def test_a_flag_of_another_family(toy, tmp_path, capsys):
    from vision_ar.models.next_scale import VAR, VARConfig
    from vision_ar.pipelines.var import VARPipeline
    from vision_ar.tokenizers.multiscale import MultiScaleVQVAE, MultiScaleVQVAEConfig

    vae = MultiScaleVQVAE(MultiScaleVQVAEConfig(vocab_size=16, z_channels=4, ch=32, ch_mult=(1, 2),
                                                num_res_blocks=1, patch_nums=(1, 2), using_sa=False,
                                                using_mid_sa=False))
    var = VAR(VARConfig(vocab_size=16, Cvae=4, num_classes=3, depth=1, embed_dim=32, num_heads=1, patch_nums=(1, 2)))
    folder = VARPipeline(vae, var).save_pretrained(tmp_path / "var")
    assert main(["sample", "--model", str(folder), "--classes", "0", "--toy-temperature", "2",
                 "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert "--toy-temperature applies to toy models; this model is a var model" in err


def test_train_generator_of_another_family(toy, tmp_path, capsys):
    tok = tmp_path / "tok"
    ToyTokenizer(ToyTokenizerConfig()).save_pretrained(tok)
    assert main(["train", "generator", "--model", "gpt-fmnist", "--tokenizer", str(tok), "--out",
                 str(tmp_path / "g")] + COMMON) == 2
    err = capsys.readouterr().err
    assert "does not fit tokenizer ToyTokenizer (family toy)" in err and "toy presets" in err
