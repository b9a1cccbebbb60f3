"""Compiled sampling steps (nn/compile.py, GPT.compile_decode, VAR.compile_scales), traced by dynamo with the
"eager" backend so that the test is quick and runs anywhere (inductor / CUDA graphs: benchmarks/gpu_check.sh),
and the one-warning fallback where a machine cannot compile."""
from __future__ import annotations

import warnings

import pytest
import torch

from vision_ar.nn import compile as C
from vision_ar.sampling.jacobi import sjd_generate
from vision_ar.sampling.next_scale import sample_next_scale
from vision_ar.sampling.token_loop import generate

from test_precision import tiny_gpt, tiny_var


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def test_compiled_gpt_decode_gives_the_same_tokens():
    labels = torch.arange(3)
    kw = dict(cfg_scale=2.0, top_k=8, top_p=0.9)
    model = tiny_gpt()
    ref = generate(model, labels, 16, generator=torch.Generator().manual_seed(0), **kw)
    model.compile_decode(backend="eager")
    got = generate(model, labels, 16, generator=torch.Generator().manual_seed(0), **kw)
    assert torch.equal(ref, got)
    assert model.cache_length == 1 + 15  # the static step keeps the cache's bookkeeping
    # windows of several tokens (SJD) keep using the eager path and still work next to the compiled step
    tokens = sjd_generate(model, labels, 16, generator=torch.Generator().manual_seed(0), window_length=4, **kw)
    assert tokens.shape == (3, 16)


def test_compiled_var_scales_give_the_same_tokens():
    var, vae = tiny_var()
    kw = dict(cfg=1.5, top_k=20, top_p=0.9)
    ref, img_ref = sample_next_scale(var, vae, [1, 2], torch.Generator().manual_seed(0), **kw)
    var.compile_scales(backend="eager")
    for _ in range(2):  # the second run reuses the graphs
        got, img = sample_next_scale(var, vae, [1, 2], torch.Generator().manual_seed(0), **kw)
        assert all(torch.equal(a, b) for a, b in zip(ref, got))
        torch.testing.assert_close(img, img_ref, atol=1e-5, rtol=0)


def test_no_compiler_falls_back_with_one_warning(monkeypatch):
    monkeypatch.setattr(C, "compile_unavailable_reason", lambda device: "no C++ compiler found (set CXX)")
    model = tiny_gpt()
    with pytest.warns(RuntimeWarning, match="cannot compile the GPT decode step: no C\\+\\+ compiler"):
        model.compile_decode()
    labels = torch.arange(2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no further warnings while sampling
        out = generate(model, labels, 8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, generate(tiny_gpt(), labels, 8, generator=torch.Generator().manual_seed(0)))


def test_a_compilation_failing_at_its_first_call_falls_back(monkeypatch):
    def broken_backend(gm, example_inputs):
        raise RuntimeError("toolchain exploded")

    fn = C.compiled(lambda x: x * 2 + 1, "cpu", backend=broken_backend, what="test step")
    with pytest.warns(RuntimeWarning, match="compiling the test step failed"):
        assert torch.equal(fn(torch.ones(3)), torch.full((3,), 3.0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.equal(fn(torch.zeros(2)), torch.ones(2))  # eager from now on, no second warning


def test_unknown_compile_mode():
    from vision_ar.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown compile mode"):
        C.compiled(lambda x: x, "cpu", mode="fastest")
