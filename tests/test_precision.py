"""Reduced-precision inference (vision_ar/precision.py, nn/quantized_linear.py) on tiny random models:
converted layers stay close to fp32, sampled tokens mostly agree with the fp32 run for the same seed, fp32 is
untouched, and the bad requests (unknown mode, a mode the machine cannot run, reduced + parity) are refused."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from vision_ar import precision as P
from vision_ar.errors import ConfigError
from vision_ar.models.next_scale import VAR, VARConfig
from vision_ar.models.next_token import GPT, GPTConfig
from vision_ar.nn.quantized_linear import CastLinear, Int8Linear
from vision_ar.sampling.next_scale import sample_next_scale
from vision_ar.sampling.token_loop import generate
from vision_ar.tokenizers.multiscale import MultiScaleVQVAE, MultiScaleVQVAEConfig

REDUCED = [p for p in P.PRECISIONS if p != "fp32"]


def runnable(name: str):
    reason = P.unsupported_reason(name, "cpu")
    if reason:
        pytest.skip(f"{name} does not run on this CPU: {reason}")


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VISION_AR_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(P, "_MEMO", {})


def tiny_gpt(seed=0) -> GPT:
    torch.manual_seed(seed)
    model = GPT(GPTConfig(dim=64, n_layer=2, n_head=2, multiple_of=32, vocab_size=64, num_classes=10,
                          block_size=16))
    with torch.no_grad():  # peaked distributions (the official init zeroes the head)
        for p in model.parameters():
            p.normal_(0, 0.3)
    return model.eval()


def tiny_var(seed=0) -> tuple[VAR, MultiScaleVQVAE]:
    torch.manual_seed(seed)
    pn = (1, 2, 4)
    vae = MultiScaleVQVAE(MultiScaleVQVAEConfig(vocab_size=64, z_channels=32, ch=32, ch_mult=(1, 1),
                                                num_res_blocks=1, patch_nums=pn)).eval()
    var = VAR(VARConfig(vocab_size=64, Cvae=32, num_classes=10, depth=2, embed_dim=64, num_heads=2,
                        patch_nums=pn, init_head=1.0)).eval()
    return var, vae


# ----------------------------------------------------------------------------------------------------
# Layers
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", REDUCED)
def test_converted_linear_close_to_fp32(name):
    runnable(name)
    torch.manual_seed(0)
    lin = nn.Linear(64, 48)
    p = P.resolve_precision(name, "cpu", workload=P.Workload(2, ((48, 64),)), verbose=False)
    new = P._convert_one(lin, p)
    assert isinstance(new, Int8Linear if name == "int8" else CastLinear)
    x = torch.randn(5, 3, 64)
    ref, got = lin(x), new(x)
    assert got.dtype == torch.float32 and got.shape == ref.shape
    assert (got - ref).abs().max() / ref.abs().max() < 3e-2


def test_half_precision_layer_copies_and_saves_without_its_packed_weight():
    runnable("fp16")
    lin = nn.Linear(64, 32)
    for dtype in (torch.float16, torch.bfloat16):
        if dtype == torch.bfloat16 and P.unsupported_reason("bf16", "cpu"):
            continue
        m = CastLinear(lin, dtype)
        x = torch.randn(64, 5).t()  # a non-contiguous input
        y = m(x)
        twin = copy.deepcopy(m)  # a oneDNN-packed weight (opaque) must not be copied: it is rebuilt
        assert torch.equal(twin(x), y)
        assert sorted(m.state_dict()) == ["bias", "weight"] and m.state_dict()["weight"].dtype == dtype


def test_int8_per_channel_quantisation_round_trip():
    w = torch.randn(16, 64) * torch.logspace(-3, 1, 16)[:, None]  # channels of very different scales
    q, scale = __import__("vision_ar.nn.quantized_linear", fromlist=["x"]).quantize_per_channel_int8(w)
    assert q.dtype == torch.int8 and int(q.abs().max()) <= 127
    err = (q.float() * scale[:, None] - w).abs().amax(dim=1)
    assert torch.all(err <= scale / 2 + 1e-12)  # at most half a step in every channel


def test_int8_leaves_narrow_layers_fp32():
    runnable("int8")
    model = nn.Sequential(nn.Linear(48, 64), nn.Linear(64, 64))  # 48 is not a multiple of 32
    n = P.convert_linears(model, P.Precision("int8", torch.float32))
    assert n == 1 and isinstance(model[0], nn.Linear) and isinstance(model[1], Int8Linear)


def test_a_converted_layer_that_does_not_match_fp32_stays_fp32(monkeypatch, capsys):
    runnable("int8")
    monkeypatch.setattr(Int8Linear, "forward", lambda self, x, bias=None: torch.zeros(
        *x.shape[:-1], self.out_features))
    model = nn.Sequential(nn.Linear(64, 64))
    assert P.convert_linears(model, P.Precision("int8", torch.float32)) == 0
    assert isinstance(model[0], nn.Linear)
    assert "stays fp32" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------
# Whole models: the same seed gives mostly the same tokens
# ----------------------------------------------------------------------------------------------------
def agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a == b).float().mean().item()


@pytest.mark.parametrize("name", REDUCED)
def test_gpt_tokens_mostly_agree_with_fp32(name):
    runnable(name)
    ref_model = tiny_gpt()
    model = copy.deepcopy(ref_model)
    p = P.resolve_precision(name, "cpu", workload=P.Workload.of(model, 16), verbose=False)
    assert P.convert_linears(model, p) > 0
    labels = torch.arange(8) % 10
    idx = torch.randint(0, 64, (8, 15), generator=torch.Generator().manual_seed(1))
    ref_logits, got_logits = ref_model(idx, labels)[0], model(idx, labels)[0]
    assert agreement(ref_logits.argmax(-1), got_logits.argmax(-1)) >= 0.9
    kw = dict(cfg_scale=2.0, top_k=0, top_p=1.0)
    ref = generate(ref_model, labels, 16, generator=torch.Generator().manual_seed(0), **kw)
    got = generate(model, labels, 16, generator=torch.Generator().manual_seed(0), **kw)
    assert agreement(ref, got) >= 0.5  # a flipped token changes every later one; most rows never flip


@pytest.mark.parametrize("name", REDUCED)
def test_var_tokens_mostly_agree_with_fp32(name):
    runnable(name)
    var, vae = tiny_var()
    var_r = copy.deepcopy(var)
    p = P.resolve_precision(name, "cpu", workload=P.Workload.of(var_r, var_r.rows_per_image_step), verbose=False)
    assert P.convert_linears(var_r, p) > 0
    labels = list(range(6))
    kw = dict(cfg=1.5, top_k=20, top_p=0.9)
    ref, img_ref = sample_next_scale(var, vae, labels, torch.Generator().manual_seed(0), **kw)
    got, img = sample_next_scale(var_r, vae, labels, torch.Generator().manual_seed(0), **kw)
    ref, got = torch.cat([t.flatten(1) for t in ref], 1), torch.cat([t.flatten(1) for t in got], 1)
    assert agreement(ref, got) >= 0.6
    assert img.shape == img_ref.shape and torch.isfinite(img).all()


def test_fp32_is_the_exact_mode():
    model = tiny_gpt()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert P.convert_linears(model, P.resolve_precision("fp32")) == 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert P.resolve_precision("auto", parity=True) == P.FP32


# ----------------------------------------------------------------------------------------------------
# Bad requests
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", REDUCED)
def test_reduced_precision_with_parity_is_refused(name):
    with pytest.raises(ConfigError, match="parity"):
        P.resolve_precision(name, "cpu", parity=True)


def test_unknown_precision():
    with pytest.raises(ConfigError, match="unknown precision 'fp8'.*fp32"):
        P.resolve_precision("fp8")


def test_bf16_without_native_support_is_refused(monkeypatch):
    monkeypatch.setattr(P, "cpu_has_native_bf16", lambda: False)
    with pytest.raises(ConfigError, match=r"bf16.*no native bf16.*This machine runs: fp32"):
        P.resolve_precision("bf16", "cpu")
    assert "bf16" not in P.supported_precisions("cpu")


def test_int8_without_the_kernel_is_refused(monkeypatch):
    monkeypatch.delattr(torch.ops.aten, "_weight_int8pack_mm", raising=False)
    monkeypatch.setattr(P, "unsupported_reason", lambda name, device="cpu": (
        "torch has no _weight_int8pack_mm" if name == "int8" else None))
    with pytest.raises(ConfigError, match="int8.*cannot run here"):
        P.resolve_precision("int8", "cpu")


def test_auto_needs_a_workload():
    with pytest.raises(ConfigError, match="workload"):
        P.resolve_precision("auto")


# ----------------------------------------------------------------------------------------------------
# auto: measured once, cached, printed
# ----------------------------------------------------------------------------------------------------
def test_auto_is_measured_once_then_cached(monkeypatch, capsys):
    calls = []
    real = P.measure

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(P, "measure", counting)
    work = P.Workload.of(tiny_gpt(), 2)
    first = P.resolve_precision("auto", "cpu", workload=work)
    assert first.name in P.supported_precisions("cpu")
    assert "precision auto -> " in capsys.readouterr().err
    assert P.resolve_precision("auto", "cpu", workload=work) == first and len(calls) == 1  # in-process memo
    monkeypatch.setattr(P, "_MEMO", {})
    assert P.resolve_precision("auto", "cpu", workload=work) == first and len(calls) == 1  # from the disk cache
    assert P.cache_file().is_file()
    assert "cached" in capsys.readouterr().err


def test_apply_precision_to_a_pipeline_once():
    runnable("int8")
    from vision_ar.pipelines.var import VARPipeline

    var, vae = tiny_var()
    pipe = VARPipeline(vae, var)
    ref = pipe([1, 2], generator=torch.Generator().manual_seed(0), output_type="pt")
    fp32 = VARPipeline(copy.deepcopy(vae), copy.deepcopy(var))
    assert P.apply_precision(fp32, "fp32") == P.FP32
    same = fp32([1, 2], generator=torch.Generator().manual_seed(0), output_type="pt")
    assert all(torch.equal(a, b) for a, b in zip(ref.tokens, same.tokens))  # channels-last decoder: same tokens
    torch.testing.assert_close(same.images, ref.images, atol=1e-4, rtol=0)

    chosen = P.apply_precision(pipe, "int8", batch_size=2)
    assert chosen.name == "int8" and pipe.precision == chosen
    out = pipe([1, 2], generator=torch.Generator().manual_seed(0), output_type="pt")
    assert out.images.shape == ref.images.shape
    assert P.apply_precision(pipe, "int8", batch_size=2) == chosen  # the same again: nothing to do
    with pytest.raises(ConfigError, match="load it again"):
        P.apply_precision(pipe, "fp16")


def test_int8_on_a_cpu_without_native_bf16(monkeypatch):
    """What an AVX2 machine does: int8 with the activations in whichever dtype the kernel measures fastest
    (bf16 there is only the activations' storage: the int8 kernel's vectorised path, not a bf16 matmul);
    the decoder stays fp32 (no native bf16 convolutions)."""
    runnable("int8")
    monkeypatch.setattr(P, "cpu_has_native_bf16", lambda: False)
    assert P.unsupported_reason("bf16", "cpu") is not None  # the bf16 MODE stays refused there
    model = tiny_gpt()
    p = P.resolve_precision("int8", "cpu", workload=P.Workload.of(model, 2), verbose=False)
    assert p.compute_dtype in P._int8_activation_dtypes("cpu") and p.decoder_dtype == torch.float32
    ref = copy.deepcopy(model)
    P.convert_linears(model, p)
    labels = torch.arange(4)
    idx = torch.randint(0, 64, (4, 15), generator=torch.Generator().manual_seed(1))
    assert agreement(ref(idx, labels)[0].argmax(-1), model(idx, labels)[0].argmax(-1)) >= 0.9


def test_fp32_packed_is_fp32_arithmetic_in_another_layout(monkeypatch):
    """fp32-packed: the same fp32 products within float rounding, fp32 decoder even where bf16 is native,
    never the exact (parity) mode, CPU only."""
    runnable("fp32-packed")
    torch.manual_seed(0)
    lin = nn.Linear(96, 80)
    p = P.resolve_precision("fp32-packed", "cpu", verbose=False)
    assert p.compute_dtype == torch.float32 and p.decoder_dtype == torch.float32 and not p.exact
    monkeypatch.setattr(P, "cpu_has_native_bf16", lambda: True)
    assert P.resolve_precision("fp32-packed", "cpu", verbose=False).decoder_dtype == torch.float32
    new = P._convert_one(lin, p)
    assert isinstance(new, CastLinear) and new.weight.dtype == torch.float32
    for rows in (1, 2, 7):
        x = torch.randn(rows, 96)
        ref, got = lin(x), new(x)
        assert got.dtype == torch.float32
        assert (got - ref).abs().max() / ref.abs().max() < 1e-5
    assert "CPU weight layout" in P.unsupported_reason("fp32-packed", "cuda")


# ----------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------
@pytest.fixture
def tiny_var_folder(tmp_path):
    from vision_ar.pipelines.var import VARPipeline

    var, vae = tiny_var()
    return VARPipeline(vae, var, {"guidance_scale": 1.5}).save_pretrained(tmp_path / "pipe")


@pytest.mark.parametrize("extra, message", [
    (["--precision", "fp8"], "unknown precision 'fp8'"),
    (["--precision", "int8", "--parity"], "parity (the official results) is fp32 only"),
])
def test_cli_precision_errors(tiny_var_folder, tmp_path, capsys, extra, message):
    from vision_ar.cli import main

    out = tmp_path / "o.png"
    assert main(["sample", "--model", str(tiny_var_folder), "--classes", "0", "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and not out.exists()


def test_cli_samples_in_a_reduced_precision(tiny_var_folder, tmp_path, capsys):
    from vision_ar.cli import main

    name = next(p for p in ("int8", "fp16") if P.unsupported_reason(p, "cpu") is None)
    out = tmp_path / "o.png"
    assert main(["sample", "--model", str(tiny_var_folder), "--classes", "0", "1", "--precision", name,
                 "--out", str(out)]) == 0
    assert out.stat().st_size > 0 and f"precision {name}" in capsys.readouterr().err
