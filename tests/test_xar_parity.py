"""Parity of the xAR network, its training pass and the flow sampler with the official OliverRensu/xAR code
(fixtures made by the official code with random weights).

Every config, case, seed and setting is read from the fixture folder (`xar/xar`, `xar/manifests`); cases are
enumerated by file pattern (forward_explicit*, forward_seeded*, sample_*), so other fixture sets run the same way.
"""
import json
import re

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import family_fixtures
from vision_ar.models.next_x import XAR, XARConfig, FlowDraws
from vision_ar.sampling.flow import FlowNoise, entity_guidance, sample_flow, time_grid

pytestmark = pytest.mark.parity

NET_TOL = dict(atol=1e-4, rtol=0.0)     # fixture README: 1e-4 for the network
TOKEN_TOL = dict(atol=1e-3, rtol=0.0)   # fixture README: 1e-3 for sampler tokens


def _folder():
    return family_fixtures("xar") / "xar"


def _cases(pattern: str):
    folder = family_fixtures("xar") / "xar"
    names = sorted(p.stem for p in folder.glob(pattern + ".json"))
    return [n for n in names if (folder / f"{n}.safetensors").is_file()]


def _close(name, got, want, tol):
    assert tuple(got.shape) == tuple(want.shape), f"{name}: shape {tuple(got.shape)} vs {tuple(want.shape)}"
    torch.testing.assert_close(got.to(want.dtype), want, msg=lambda m: f"{name}: {m}", **tol)


@pytest.fixture(scope="module")
def fixture_cfg():
    return json.loads((_folder() / "config.json").read_text())


def _model(fixture_cfg, **overrides) -> XAR:
    config = XARConfig.from_official_kwargs(fixture_cfg["constructor"], **overrides)
    model = XAR(config)
    model.load_checked_state_dict(load_file(str(_folder() / "state_dict.safetensors")), what="fixture xAR")
    return model


@pytest.fixture(scope="module")
def model(fixture_cfg):
    return _model(fixture_cfg)


# ----------------------------------------------------------------------------------------------------
# Structure: keys, order, shapes, the layout buffers
# ----------------------------------------------------------------------------------------------------
def test_config_facts(model, fixture_cfg):
    d, lay = fixture_cfg["derived"], model.layout
    assert lay.seq_len == d["seq_len"] and lay.num_entities == d["clusters"]
    assert lay.entity_sizes == [d["tokens_per_cell"]] * d["clusters"]
    assert model.config.entity_size == d["cell_tokens"][0] == d["cell_tokens"][1]
    assert model.config.null_class == d["null_class"] and model.class_emb.num_embeddings == d["class_emb_rows"]
    assert model.encoder_blocks[0].mlp.fc1_g.out_features == d["mlp_hidden"]
    assert model.time_embed.frequency_embedding_size == d["timestep_freq_dim"]
    assert model.config.rope_theta == d["rope_theta"] and model.config.norm_eps == d["rmsnorm_eps"]
    assert sum(p.numel() for p in model.parameters()) == fixture_cfg["num_params"]


def test_state_dict_keys_order_and_shapes(fixture_cfg):
    config = XARConfig.from_official_kwargs(fixture_cfg["constructor"])
    own = XAR(config).state_dict()
    want = fixture_cfg["state_dict_keys"]
    assert list(own) == list(want)  # official order
    assert {k: list(v.shape) for k, v in own.items()} == {k: v["shape"] for k, v in want.items()}


def test_layout_buffers_are_the_official_ones(fixture_cfg):
    """mask and RoPE buffers computed from the entity layout equal the official ones bit for bit."""
    own = XAR(XARConfig.from_official_kwargs(fixture_cfg["constructor"])).state_dict()
    sd = load_file(str(_folder() / "state_dict.safetensors"))
    buffers = [k for k in sd if k == "mask" or ".rope." in k]
    assert buffers
    for k in buffers:
        assert torch.equal(own[k], sd[k]), k


# ----------------------------------------------------------------------------------------------------
# Training forward
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", _cases("forward_explicit*"))
def test_forward_with_injected_draws(fixture_cfg, case):
    meta = json.loads((_folder() / f"{case}.json").read_text())
    t = load_file(str(_folder() / f"{case}.safetensors"))
    model = _model(fixture_cfg, label_drop_prob=0.0).train()
    B = t["x"].shape[0]
    draws = FlowDraws(drop_u=torch.ones(B), t=t["t"], noise=list(t["noise"].unbind(0)))
    assert torch.allclose(t["t"], torch.tensor(meta["args"]["t_values"], dtype=torch.float32))
    out = model(t["x"], t["labels"], draws=draws)
    assert torch.equal(out.t_int, t["t_int"])
    _close("model_input", out.model_input, t["model_input"], dict(atol=1e-6, rtol=0.0))
    _close("target", out.target, t["target"], dict(atol=1e-6, rtol=0.0))
    _close("condition", out.condition, t["condition"], NET_TOL)
    _close("encoder_out", out.encoder_out, t["encoder_out"], NET_TOL)
    _close("model_output", out.prediction, t["model_output"], NET_TOL)
    _close("loss", out.loss.reshape(1), t["loss"], NET_TOL)


@pytest.mark.parametrize("case", _cases("forward_seeded*"))
def test_forward_seeded_rng_order(fixture_cfg, case):
    meta = json.loads((_folder() / f"{case}.json").read_text())
    t = load_file(str(_folder() / f"{case}.safetensors"))
    args = meta["args"]
    model = _model(fixture_cfg, label_drop_prob=args["label_drop_prob"]).train()
    B = t["x"].shape[0]
    # the official consumption order: torch.rand(B), numpy normals (K*B) -> sigmoid, K x torch.randn
    order = [entry[0] for entry in meta["rng_consumption_order"]]
    assert order[0] == "torch.rand" and "numpy" in order[1] and all("randn" in o for o in order[2:])
    assert len(order) - 2 == model.layout.num_entities
    torch.manual_seed(args["seed"])
    np.random.seed(args["seed"])
    draws = model.draw(B, rng="official")
    _close("drop_u", draws.drop_u, t["drop_u"], dict(atol=0.0, rtol=0.0))
    _close("t", draws.t, t["t"], dict(atol=0.0, rtol=0.0))
    _close("noise", torch.stack(draws.noise), t["noise"], dict(atol=0.0, rtol=0.0))
    effective = torch.where(draws.drop_u < args["label_drop_prob"], model.config.null_class, t["labels"])
    assert torch.equal(effective, t["labels_effective"])
    assert int((effective == model.config.null_class).sum()) == meta["num_dropped"]
    out = model(t["x"], t["labels"], draws=draws)
    assert torch.equal(out.t_int, t["t_int"])
    _close("model_output", out.prediction, t["model_output"], NET_TOL)
    _close("loss", out.loss.reshape(1), t["loss"], NET_TOL)
    # and the same without handing the draws over: the forward draws them itself, in the same order
    torch.manual_seed(args["seed"])
    np.random.seed(args["seed"])
    again = model(t["x"], t["labels"], draws=model.draw(B, rng="official"))
    assert torch.equal(again.loss, out.loss)


# ----------------------------------------------------------------------------------------------------
# Sampler
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", _cases("sample_*"))
def test_sampler_injected_noise_and_traced_calls(model, case):
    meta = json.loads((_folder() / f"{case}.json").read_text())
    t = load_file(str(_folder() / f"{case}.safetensors"))
    args = meta["args"]
    model.eval()
    K = model.layout.num_entities
    assert [entity_guidance(args["cfg"], k, K) for k in range(K)] == pytest.approx(meta["cfg_per_cell"], abs=1e-12)
    assert time_grid("euler_maruyama", args["num_steps"]).tolist() == pytest.approx(meta["t_steps"], abs=1e-12)
    noise = FlowNoise(initial=list(t["latents"].unbind(0)), steps=[list(e.unbind(0)) for e in t["eps"].unbind(0)])
    calls = []
    tokens = sample_flow(model, t["labels"], num_steps=args["num_steps"], guidance_scale=args["cfg"], noise=noise,
                         on_call=calls.append)
    _close("tokens_injected", tokens, t["tokens_injected"], TOKEN_TOL)

    official = meta["sample_inference_calls"]
    traced = sorted(int(m.group(1)) for k in t if (m := re.fullmatch(r"call(\d+)_x", k)))
    assert len(calls) == len(official) == len(traced)
    for i, (ours, theirs) in enumerate(zip(calls, official)):
        assert theirs["update_cache"] == (ours["step"] == 0) and theirs["scale_index"] == ours["entity"], i
        if theirs["mask_shape"] is not None:  # the official mask covers every key of the call
            assert theirs["mask_shape"][-1] == model.layout.bounds[ours["entity"]][1]
        x, t_in = ours["x"], ours["t"]
        if ours["context"] is not None:  # the official call concatenates the committed entity in front
            x = torch.cat([ours["context"], x], dim=1)
            t_in = torch.cat([torch.zeros_like(t_in), t_in])
        assert str(t_in.dtype).endswith(theirs["t_dtype"].split(".")[-1]), i
        _close(f"call{i:02d}_x", x, t[f"call{i:02d}_x"], NET_TOL)
        _close(f"call{i:02d}_t", t_in, t[f"call{i:02d}_t"], dict(atol=1e-7, rtol=0.0))
        assert torch.equal(model.timestep_index(t_in), t[f"call{i:02d}_t_int"]), i
        _close(f"call{i:02d}_out", ours["velocity"], t[f"call{i:02d}_out"], NET_TOL)


@pytest.mark.parametrize("case", _cases("sample_*"))
def test_sampler_seeded_generator(model, case):
    meta = json.loads((_folder() / f"{case}.json").read_text())
    t = load_file(str(_folder() / f"{case}.safetensors"))
    args = meta["args"]
    model.eval()
    tokens = sample_flow(model, t["labels"], num_steps=args["num_steps"], guidance_scale=args["cfg"],
                         generator=torch.Generator().manual_seed(args["seed"]))
    _close("tokens_seeded", tokens, t["tokens_seeded"], TOKEN_TOL)


# ----------------------------------------------------------------------------------------------------
# Full-size manifests: presets whose keys and shapes are the official checkpoints'
# ----------------------------------------------------------------------------------------------------
PRESET_OF_MANIFEST = {"xar_base": "xar-b", "xar_large": "xar-l", "xar_huge": "xar-h"}


@pytest.mark.parametrize("manifest", sorted(PRESET_OF_MANIFEST))
def test_preset_matches_manifest(manifest):
    path = family_fixtures("xar") / "manifests" / f"{manifest}.json"
    if not path.is_file():
        pytest.skip(f"{path} not in this fixture set")
    man = json.loads(path.read_text())
    from vision_ar.registry import create

    with torch.device("meta"):
        model = create(PRESET_OF_MANIFEST[manifest])
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    own = model.state_dict()
    assert list(own) == list(man["keys"])
    for key, spec in man["keys"].items():
        assert list(own[key].shape) == spec["shape"], key
        assert (key in params) == (spec["kind"] == "parameter") and (key in buffers) == (spec["kind"] == "buffer"), key
    assert sum(p.numel() for p in params.values()) == man["num_params"]
    assert sum(b.numel() for b in buffers.values()) == man["num_buffer_elements"]
