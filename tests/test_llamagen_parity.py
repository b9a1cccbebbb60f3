"""Parity with official LlamaGen (VQ tokenizer, c2i GPT, KV cache, generate()) on the golden fixtures.

Every setting, case and tolerance-relevant input is read from ../shared/fixtures/llamagen (see its README);
generation runs, probability tables and images are enumerated by key pattern, so another fixture set with
other sizes/seeds/run names goes through the same tests.
"""
from __future__ import annotations

import ast
import json
import re

import pytest
import torch
from safetensors.torch import load_file

from conftest import family_fixtures
from vision_ar.models.next_token import GPT, GPTConfig
from vision_ar.registry import create
from vision_ar.sampling.token_loop import generate
from vision_ar.tokenizers.vq import VQConfig, VQModel

pytestmark = pytest.mark.parity

LOGITS_ATOL = 1e-4
LATENT_ATOL = 1e-5
IMAGE_ATOL = 1e-4


# ----------------------------------------------------------------------------------------------------
# Loading the fixture set
# ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def folder():
    return family_fixtures("llamagen")


def _json(folder, name):
    return json.loads((folder / name).read_text())


@pytest.fixture(scope="module")
def vq(folder):
    meta = _json(folder, "vq_config.json")
    body = meta["encoder_decoder"]
    assert body.get("norm_type", "group") == "group" and body.get("resamp_with_conv", True)
    assert body.get("groupnorm_groups", 32) == 32
    cfg = VQConfig(**meta["vq_model_args"], ch=body["ch"], num_res_blocks=body["num_res_blocks"],
                   in_channels=body.get("in_channels", 3), out_channels=body.get("out_channels", 3))
    assert list(cfg.encoder_ch_mult) == list(body["ch_mult"])
    model = VQModel.from_official(load_file(folder / "vq_state_dict.safetensors"), cfg)
    return model.eval()


@pytest.fixture(scope="module")
def vq_io(folder):
    return load_file(folder / "vq_io.safetensors")


@pytest.fixture(scope="module")
def gpt_meta(folder):
    return _json(folder, "gpt_config.json")


def _fresh_gpt(folder, gpt_meta) -> GPT:
    config = GPTConfig.from_official_args(gpt_meta["model_args"])
    return GPT.from_official(load_file(folder / "gpt_state_dict.safetensors"), config)


@pytest.fixture(scope="module")
def gpt(folder, gpt_meta):
    return _fresh_gpt(folder, gpt_meta)


@pytest.fixture(scope="module")
def gpt_io(folder):
    return load_file(folder / "gpt_io.safetensors")


def _runs(folder):
    return _json(folder, "generate_runs.json")["runs"]


def _latent_shape(vq_model: VQModel, vq_io_tensors, codes: torch.Tensor):
    """[B, e_dim, h, w] for decode_code, from the fixture's quantised latents."""
    _, c, h, w = vq_io_tensors["quant"].shape
    assert c == vq_model.config.codebook_embed_dim
    return [codes.shape[0], c, h, w]


def _close(actual, expected, atol, what):
    diff = (actual.float() - expected.float()).abs().max().item()
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} vs {tuple(expected.shape)}"
    assert diff <= atol, f"{what}: max abs diff {diff:.3g} > {atol}"


# ----------------------------------------------------------------------------------------------------
# VQ tokenizer
# ----------------------------------------------------------------------------------------------------
@torch.no_grad()
def test_vq_encoder_latents_and_codes(vq, vq_io):
    images = vq_io["images"]
    enc = vq.encoder(images)
    _close(enc, vq_io["encoder_out"], LATENT_ATOL, "encoder_out")
    _close(vq.quant_conv(enc), vq_io["z_prequant"], LATENT_ATOL, "z_prequant")
    quant, ids = vq.encode_with_latents(images)
    _close(quant, vq_io["quant"], LATENT_ATOL, "quant")
    assert torch.equal(ids.flatten(1), vq_io["codes"]), "VQ indices differ from the official ones"
    assert torch.equal(vq.encode(images), ids)


@torch.no_grad()
def test_vq_reconstruction_from_codes(vq, vq_io):
    codes = vq_io["codes"]
    rec = vq.decode_code(codes, _latent_shape(vq, vq_io, codes))
    _close(rec, vq_io["recon_from_codes"], IMAGE_ATOL, "decode_code")
    h, w = vq_io["quant"].shape[2:]
    _close(vq.decode(codes.view(-1, h, w)), vq_io["recon_from_codes"], IMAGE_ATOL, "decode(indices)")


# ----------------------------------------------------------------------------------------------------
# GPT: teacher forcing, loss, KV cache
# ----------------------------------------------------------------------------------------------------
@torch.no_grad()
def test_gpt_teacher_forced_logits(gpt, gpt_io):
    logits, _ = gpt(gpt_io["tf_idx"], gpt_io["tf_cond_idx"])
    _close(logits, gpt_io["tf_logits"], LOGITS_ATOL, "tf_logits")


def test_gpt_train_loss(folder, gpt_meta, gpt_io):
    model = _fresh_gpt(folder, gpt_meta).train()
    for m in model.modules():  # the fixture disabled every dropout and the label drop
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    model.cls_embedding.dropout_prob = 0.0
    idx = gpt_io["tf_idx"]
    _, loss = model(idx[:, :-1], gpt_io["tf_cond_idx"], targets=idx)
    _close(loss.detach(), gpt_io["train_loss"], 1e-5, "train_loss")


def test_gpt_kv_cache_logits(gpt, gpt_io):
    idx, labels, tf = gpt_io["tf_idx"], gpt_io["tf_cond_idx"], gpt_io["tf_logits"]
    n = idx.shape[1]
    gpt.setup_cache(idx.shape[0])
    _close(gpt.prefill(labels), gpt_io["kv_prefill_logits"][:, 0], LOGITS_ATOL, "kv prefill")
    first = gpt.decode(idx[:, :1], start_pos=1)
    _close(first[:, 0], gpt_io["kv_decode_logits_first"][:, 0], LOGITS_ATOL, "kv decode first")
    steps = [first]
    for t in range(1, n - 1):  # one token at a time, like the official loop
        steps.append(gpt.decode(idx[:, t:t + 1], start_pos=t + 1))
    _close(steps[-1][:, 0], gpt_io["kv_decode_logits_last"][:, 0], LOGITS_ATOL, "kv decode last")
    _close(torch.cat(steps, 1), tf[:, 1:n], LOGITS_ATOL, "kv decode, every step vs teacher forcing")
    # A whole window at once (what speculative decoding feeds) gives the same logits.
    gpt.truncate_cache(1)
    _close(gpt.decode(idx, start_pos=1), tf[:, 1:], LOGITS_ATOL, "kv decode, full window")


# ----------------------------------------------------------------------------------------------------
# generate(): tokens, probabilities, images
# ----------------------------------------------------------------------------------------------------
def _gen_kwargs(run):
    return dict(cfg_scale=run["cfg_scale"], cfg_interval=run["cfg_interval"], temperature=run["temperature"],
                top_k=run["top_k"], top_p=run["top_p"])


def test_every_generated_tensor_has_a_run(folder, gpt_io):
    names = {r["name"] for r in _runs(folder)}
    keyed = {m.group(1) for k in gpt_io for m in [re.fullmatch(r"gen_(.+)_(tokens|probs|images)", k)] if m}
    assert keyed and keyed <= names, f"fixture tensors without settings: {sorted(keyed - names)}"
    assert all(f"gen_{n}_tokens" in gpt_io for n in names)


@pytest.mark.parametrize("rng", ["global_seed", "generator"])
def test_generate_tokens_equal_official(folder, gpt_meta, gpt_io, rng):
    labels = gpt_io["gen_labels"]
    for run in _runs(folder):
        expected = gpt_io[f"gen_{run['name']}_tokens"]
        model = _fresh_gpt(folder, gpt_meta)
        if rng == "global_seed":
            torch.manual_seed(run["seed"])
            generator = None
        else:
            generator = torch.Generator().manual_seed(run["seed"])
        tokens, probs = generate(model, labels, expected.shape[1], generator=generator, return_probs=True,
                                 **_gen_kwargs(run))
        assert tokens.dtype == torch.int64
        assert torch.equal(tokens, expected), f"run {run['name']}: tokens differ from official"
        if f"gen_{run['name']}_probs" in gpt_io:
            _close(probs, gpt_io[f"gen_{run['name']}_probs"], 1e-4, f"run {run['name']}: probs")
            nonzero = (probs > 0).sum(-1)
            assert nonzero.min().item() == run["nonzero_probs_per_step_min"]
            assert nonzero.max().item() == run["nonzero_probs_per_step_max"]


@torch.no_grad()
def test_generated_images(vq, vq_io, gpt_io):
    keys = [k for k in gpt_io if re.fullmatch(r"gen_(.+)_images", k)]
    for key in keys:
        codes = gpt_io[key.replace("_images", "_tokens")]
        _close(vq.decode_code(codes, _latent_shape(vq, vq_io, codes)), gpt_io[key], IMAGE_ATOL, key)


# ----------------------------------------------------------------------------------------------------
# Full-size manifests == presets (built on the meta device: no memory, no time)
# ----------------------------------------------------------------------------------------------------
def _constructor_kwargs(constructor: str) -> dict:
    call = ast.parse(constructor, mode="eval").body
    assert isinstance(call, ast.Call)
    return {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords}


def _preset_for(entry: dict) -> tuple[str, dict]:
    """('vq-16', overrides) / ('gpt-b', overrides) from the manifest's official constructor call."""
    ctor = entry["constructor"]
    kwargs = _constructor_kwargs(ctor)
    m = re.match(r"VQ_(\d+)\(", ctor)
    if m:
        return f"vq-{m.group(1)}", kwargs
    m = re.match(r"GPT_models\['GPT-([^']+)'\]", ctor)
    assert m, f"unknown constructor in manifest: {ctor}"
    assert kwargs.pop("model_type", "c2i") == "c2i"
    return f"gpt-{m.group(1).lower()}", kwargs


def _manifest_entries(folder):
    manifest = _json(folder, "manifest_full_models.json")
    return {k: v for k, v in manifest.items() if isinstance(v, dict) and "keys" in v}


def _assert_matches(model, entry, label):
    sd = model.state_dict()
    want = {k: tuple(v["shape"]) for k, v in entry["keys"].items()}
    have = {k: tuple(v.shape) for k, v in sd.items()}
    assert sorted(have) == sorted(want), (f"{label}: missing {sorted(set(want) - set(have))[:5]}, "
                                          f"extra {sorted(set(have) - set(want))[:5]}")
    wrong = {k: (have[k], want[k]) for k in want if have[k] != want[k]}
    assert not wrong, f"{label}: wrong shapes {wrong}"
    for k, v in entry["keys"].items():
        assert str(sd[k].dtype).replace("torch.", "") == v.get("dtype", "float32"), f"{label}: dtype of {k}"
    assert sum(p.numel() for p in model.parameters()) == entry["num_parameters"], f"{label}: parameter count"


def test_manifests_equal_presets(folder):
    entries = _manifest_entries(folder)
    assert entries
    for label, entry in entries.items():
        name, kwargs = _preset_for(entry)
        with torch.device("meta"):
            model = create(name, **kwargs)
        _assert_matches(model, entry, label)
        if name.startswith("gpt-"):
            cfg = model.config
            assert (cfg.n_layer, cfg.n_head, cfg.dim, cfg.head_dim) == (
                entry["n_layer"], entry["n_head"], entry["dim"], entry["head_dim"])
            assert model.layers[0].feed_forward.w1.out_features == entry["ffn_hidden_dim"]
            # The named presets need no overrides: 256px (16x16) and 384px (24x24, same keys).
            for preset, grid in ((name, 16), (f"{name}-384", 24)):
                with torch.device("meta"):
                    named = create(preset)
                assert named.config.block_size == grid * grid
                _assert_matches(named, entry, f"{label} as preset {preset}")
        else:
            with torch.device("meta"):
                _assert_matches(create(name), entry, f"{label} as preset {name}")
