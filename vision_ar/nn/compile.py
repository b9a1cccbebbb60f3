"""`torch.compile` for the sampling steps, with one clear fallback when this machine cannot compile.

    step = compiled(fn, device, what="GPT decode step")        # compiled fn, or fn itself after one warning

Why: a batch-1 decode step launches a few hundred small kernels; on a GPU their launch overhead is most of
the step unless the step is captured once as a CUDA graph (mode "reduce-overhead", which needs static shapes:
the models' static-cache steps provide them). On a CPU, inductor fuses the small element-wise ops into
generated C++.

What compiling needs, checked up front (reason -> warning, eager fallback):
  * CPU: a C++ compiler (inductor writes C++): `$CXX`, g++, clang++ or c++ on PATH;
  * CUDA: Triton importable (inductor writes Triton kernels) and a GPU of compute capability >= 7.0.
A compilation that fails at its first call (toolchain problems found only then) also falls back with one
warning; nothing is ever silently run differently.

The GPU path (modes "reduce-overhead" / "max-autotune", CUDA graphs) is untested on a GPU in this project so
far; on CPU it is tested with the same code (benchmarks/gpu_check.sh runs it on a GPU).
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import warnings
from typing import Callable

import torch

MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def compile_unavailable_reason(device) -> str | None:
    dev = torch.device(device)
    if not hasattr(torch, "compile"):
        return f"torch {torch.__version__} has no torch.compile"
    if dev.type == "cuda":
        if importlib.util.find_spec("triton") is None:
            return "Triton is not installed (pip install triton): inductor generates Triton kernels for CUDA"
        major, _ = torch.cuda.get_device_capability(dev)
        if major < 7:
            return f"{torch.cuda.get_device_name(dev)} has compute capability {major}.x; Triton needs >= 7.0"
        return None
    if dev.type == "cpu":
        cxx = [os.environ.get("CXX"), "g++", "clang++", "c++"]
        if not any(c and shutil.which(c) for c in cxx):
            return "no C++ compiler found (set CXX or install g++/clang++): inductor generates C++ for the CPU"
        return None
    return f"compiling for {dev.type} is not supported here"


def default_mode(device) -> str:
    """CUDA graphs on a GPU (the point of compiling a batch-1 step), plain inductor on a CPU."""
    return "reduce-overhead" if torch.device(device).type == "cuda" else "default"


class _CompiledOrEager:
    """Runs the compiled function; if its first call fails to compile, warns once and runs `fn` from then on."""

    def __init__(self, fn: Callable, compiled: Callable, what: str):
        self.fn, self.compiled, self.what = fn, compiled, what
        self.first = True

    def __call__(self, *args, **kwargs):
        if not self.first:
            return self.compiled(*args, **kwargs)
        try:
            out = self.compiled(*args, **kwargs)
        except Exception as e:  # toolchain / backend failures surface at the first call
            if not _is_compile_failure(e):
                raise
            warnings.warn(f"vision-ar: compiling the {self.what} failed ({type(e).__name__}: "
                          f"{str(e).splitlines()[0][:200]}); running it uncompiled", RuntimeWarning, stacklevel=2)
            self.compiled = self.fn
            out = self.fn(*args, **kwargs)
        self.first = False
        return out


def _is_compile_failure(e: Exception) -> bool:
    try:
        from torch._dynamo.exc import BackendCompilerFailed, InternalTorchDynamoError, TorchRuntimeError, Unsupported
    except ImportError:  # pragma: no cover - very old torch
        return False
    names = ("CppCompileError", "InductorError", "CompilationError", "InvalidCxxCompiler")
    return isinstance(e, (BackendCompilerFailed, InternalTorchDynamoError, TorchRuntimeError, Unsupported)) \
        or type(e).__name__ in names


def compiled(fn: Callable, device, mode: str | None = None, what: str = "sampling step",
             backend: str = "inductor", fullgraph: bool = True) -> Callable:
    """torch.compile(fn) when this machine can, else `fn` after one warning naming what is missing."""
    mode = mode or default_mode(device)
    if mode not in MODES:
        from ..errors import ConfigError

        raise ConfigError(f"unknown compile mode {mode!r}; choose one of {', '.join(MODES)}")
    reason = compile_unavailable_reason(device) if backend == "inductor" else None
    if reason is not None:
        warnings.warn(f"vision-ar: cannot compile the {what}: {reason}; running it uncompiled", RuntimeWarning,
                      stacklevel=2)
        return fn
    kwargs = {"backend": backend, "fullgraph": fullgraph, "dynamic": False}
    if backend == "inductor":
        kwargs["mode"] = mode
    return _CompiledOrEager(fn, torch.compile(fn, **kwargs), what)


def mark_static(*tensors: torch.Tensor) -> None:
    """Tell dynamo these tensors keep their address (KV caches written in place), so CUDA graphs can capture
    the steps that write them instead of skipping the graph."""
    mark = getattr(torch._dynamo, "mark_static_address", None)
    if mark is None:
        return
    for t in tensors:
        mark(t)
