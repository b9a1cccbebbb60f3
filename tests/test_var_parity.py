"""Parity of the VAR transformer and next-scale sampler with the official FoundationVision/VAR code.

The fixtures (../shared/fixtures/var, see its README) were made by the official code with deterministic random
weights. Every VAR folder (var_*/), every sampling case (ar_case*.safetensors with its call in ar_cases.json) and
every full-size manifest (manifests/manifest_var_d*.json) found is checked; sizes and arguments are read from the
fixture files only, so other fixture sets (other seeds, configs, cases) run through the same tests.
"""
import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import family_fixtures, fixtures_root
from fixture_recipe import state_dict_from_recipe
from vision_ar.io import load_state_dict_strict
from vision_ar.models.next_scale import VAR, VARConfig
from vision_ar.registry import create
from vision_ar.sampling.next_scale import sample_next_scale
from vision_ar.tokenizers.multiscale import MultiScaleVQVAE, MultiScaleVQVAEConfig

pytestmark = pytest.mark.parity

LOGITS_TOL = 1e-4       # teacher-forced logits
LOGITS_CFG_TOL = 5e-4   # guided AR logits (CFG multiplies float noise by up to 1 + 2 * cfg)
IMAGE_TOL = 1e-4        # f_hat and images
# f_hat and images of `more_smooth` cases: a Gumbel-softmax mixture of codes at a low temperature (tau 0.0135 at
# the last scale), where logit noise of 1e-5 moves the soft weights. The official code itself, rerun on other
# x86 CPUs, differs from the fixtures by up to 1.1e-3 (AVX2 CPU, fixture README) and 1.6e-2 (f_hat; image
# 3.1e-3) on an AVX-512 Xeon other than the fixtures' one (var_b/ar_case2, 1 and 2 threads). Tokens stay exact.
# 5e-2 holds on all three; a wrong Gumbel temperature (x1.2) or logit scale moves them by 0.4 to 2.6.
SOFT_MIXTURE_TOL = 5e-2


# ----------------------------------------------------------------------------------------------------
# Discovery (at collection time, so each folder / manifest is its own test id)
# ----------------------------------------------------------------------------------------------------
def _discover(pattern: str, is_dir: bool) -> list[str]:
    root = fixtures_root() / "var"
    found = sorted(p.name for p in root.glob(pattern) if p.is_dir() == is_dir) if root.is_dir() else []
    return found or [f"<none matching {pattern}>"]


VAR_FOLDERS = _discover("var_*", is_dir=True)
MANIFESTS = [f"manifests/{n}" for n in _discover("manifests/manifest_var_d*.json", is_dir=False)]


def _fixture_path(relative: str) -> Path:
    path = family_fixtures("var") / relative  # skips (or fails in CI) when the fixture set is absent
    if not path.exists():
        pytest.fail(f"fixture {path} not found: the var fixture set has no {relative}")
    return path


# ----------------------------------------------------------------------------------------------------
# Building models from fixture folders
# ----------------------------------------------------------------------------------------------------
def build_var(folder: Path) -> tuple[VAR, dict]:
    """VAR from config.json (official kwargs + vae-derived V/Cvae), recipe weights loaded strictly."""
    cfg = json.loads((folder / "config.json").read_text())
    kwargs = dict(cfg["var_kwargs"])
    # The fixtures changed cond_drop_rate after construction (mode); apply the same.
    kwargs.update({k: v for k, v in cfg.get("mode", {}).items() if k == "cond_drop_rate"})
    model = VAR(VARConfig(vocab_size=cfg["V"], Cvae=cfg["Cvae"], **kwargs))
    model.eval() if cfg.get("mode", {}).get("eval", True) else model.train()
    sd = state_dict_from_recipe(folder)
    assert list(model.state_dict()) == list(sd), "state_dict keys/order differ from the official VAR"
    load_state_dict_strict(model, sd, what=f"fixture {folder.name}")
    # derived sizes the official constructor reports
    assert model.L == cfg["L"] and model.first_l == cfg["first_l"] and model.C == cfg["C"]
    assert [list(be) for be in model.begin_ends] == cfg["begin_ends"]
    return model, cfg


_VAE_CACHE: dict[Path, MultiScaleVQVAE] = {}


def build_vae(var_folder: Path, cfg: dict) -> MultiScaleVQVAE:
    """The VQ-VAE the VAR folder names (config.json "vqvae": "../vqvae ..."), shared between folders."""
    rel = str(cfg.get("vqvae", "../vqvae")).split()[0]
    folder = (var_folder / rel).resolve()
    if folder not in _VAE_CACHE:
        vcfg = json.loads((folder / "config.json").read_text())
        vae = MultiScaleVQVAE(MultiScaleVQVAEConfig.from_official_kwargs(vcfg["kwargs"])).eval()
        load_state_dict_strict(vae, state_dict_from_recipe(folder), what=f"fixture VQVAE {folder}")
        _VAE_CACHE[folder] = vae
    return _VAE_CACHE[folder]


def _max_diff(got: torch.Tensor, want: torch.Tensor, name: str) -> float:
    assert got.shape == want.shape, f"{name}: shape {tuple(got.shape)} vs official {tuple(want.shape)}"
    assert got.dtype == want.dtype, f"{name}: dtype {got.dtype} vs official {want.dtype}"
    return (got.double() - want.double()).abs().max().item() if got.numel() else 0.0


def _call_labels(label_arg):
    """ar_cases.json `label_B` as passed to the official call: list -> int64 tensor, int, or None."""
    if isinstance(label_arg, list):
        return torch.tensor(label_arg, dtype=torch.int64)
    return label_arg


# ----------------------------------------------------------------------------------------------------
# Tests
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("var_name", VAR_FOLDERS)
def test_teacher_forcing_logits(var_name):
    folder = _fixture_path(var_name)
    model, _ = build_var(folder)
    tf = load_file(str(folder / "teacher_forcing.safetensors"))
    with torch.no_grad():
        logits = model(tf["label_B"], tf["x_BLCv_wo_first_l"])
    err = _max_diff(logits, tf["logits_BLV"], "logits_BLV")
    assert err <= LOGITS_TOL, f"{var_name}: teacher-forced logits differ by {err:.3g} > {LOGITS_TOL}"
    # the training targets are the official per-scale tokens; their layout must match our scales
    assert tf["gt_idx_BL"].shape == (logits.shape[0], model.L)


@pytest.mark.parametrize("var_name", VAR_FOLDERS)
def test_autoregressive_cases(var_name):
    folder = _fixture_path(var_name)
    model, cfg = build_var(folder)
    vae = build_vae(folder, cfg)
    listed = {c["file"]: c for c in json.loads((folder / "ar_cases.json").read_text())["cases"]}
    files = sorted(p.name for p in folder.glob("ar_case*.safetensors"))
    assert files, f"{folder} has no ar_case*.safetensors"
    S = len(model.patch_nums)
    unseeded = []
    for file in files:
        assert file in listed, f"{file} is not described in ar_cases.json"
        case, call = listed[file], listed[file]["call"]
        want = load_file(str(folder / file))
        where = f"{var_name}/{file}"
        trace: dict = {}
        if call.get("g_seed") is None:  # official g_seed=None draws from the unknown global RNG state
            unseeded.append(file)
            continue
        generator = torch.Generator().manual_seed(call["g_seed"])  # CPU generator, as the fixtures
        float_tol = SOFT_MIXTURE_TOL if call["more_smooth"] else IMAGE_TOL
        tokens, image = sample_next_scale(model, vae, _call_labels(call["label_B"]), generator, cfg=call["cfg"],
                                          top_k=call["top_k"], top_p=call["top_p"],
                                          more_smooth=call["more_smooth"], batch_size=call["B"], trace=trace)
        assert torch.equal(trace["label_B"], want["label_B"]), \
            f"{where}: labels {trace['label_B'].tolist()} vs official {want['label_B'].tolist()}"
        assert len(tokens) == S
        for si in range(S):
            assert torch.equal(tokens[si], want[f"idx_Bl.{si}"]), f"{where}: tokens of scale {si} differ"
            assert torch.equal(trace[f"kept_count.{si}"], want[f"kept_count.{si}"]), \
                f"{where}: top-k/top-p kept counts of scale {si} differ"
            err = _max_diff(trace[f"f_hat.{si}"], want[f"f_hat.{si}"], f"f_hat.{si}")
            assert err <= float_tol, f"{where}: f_hat after scale {si} differs by {err:.3g} > {float_tol}"
            if f"logits_cfg.{si}" in want:
                err = _max_diff(trace[f"logits_cfg.{si}"], want[f"logits_cfg.{si}"], f"logits_cfg.{si}")
                assert err <= LOGITS_CFG_TOL, f"{where}: guided logits of scale {si} differ by {err:.3g}"
        if case.get("logits_saved"):
            assert all(f"logits_cfg.{si}" in want for si in range(S)), f"{where}: logits_saved but none stored"
        err = _max_diff(image, want["image"], "image")
        assert err <= float_tol, f"{where}: image differs by {err:.3g} > {float_tol}"
    if unseeded and len(unseeded) == len(files):
        pytest.skip(f"{var_name}: every case is unseeded (g_seed=None), nothing reproducible: {unseeded}")


@pytest.mark.parametrize("manifest", MANIFESTS)
def test_manifest_matches_preset(manifest):
    path = _fixture_path(manifest)
    man = json.loads(path.read_text())
    preset = man["model"].replace("_", "-")  # "var_d16" -> "var-d16"
    with torch.device("meta"):  # no memory, no init time, even for the 2B-parameter presets
        model = create(preset)
    build = man["build"]
    c = model.config
    assert (c.depth, c.shared_aln, list(c.patch_nums), c.num_classes, c.vocab_size, c.Cvae) == \
        (build["depth"], build["shared_aln"], build["patch_nums"], build["num_classes"], build["V"], build["Cvae"])
    assert (c.embed_dim, c.num_heads, model.L) == (man["embed_dim"], man["num_heads"], man["L"])
    sd = model.state_dict()
    assert list(sd) == list(man["keys"]), f"{preset}: state_dict keys/order differ from {path.name}"
    params = dict(model.named_parameters())
    for key, spec in man["keys"].items():
        assert list(sd[key].shape) == spec["shape"], f"{preset}.{key}: {list(sd[key].shape)} vs {spec['shape']}"
        assert str(sd[key].dtype).removeprefix("torch.") == spec["dtype"], f"{preset}.{key}: dtype"
        assert (key in params) == (spec["kind"] == "param"), f"{preset}.{key}: param/buffer kind"
    assert sum(p.numel() for p in model.parameters()) == man["num_params"]


def test_discovery_found_fixtures():
    """Guard against a silently empty parametrisation when the fixture set exists."""
    root = family_fixtures("var")
    assert any(root.glob("var_*/")), f"no var_*/ folders under {root}"
    assert any(re.fullmatch(r"manifest_var_d\d+\.json", p.name) for p in (root / "manifests").glob("*.json"))
