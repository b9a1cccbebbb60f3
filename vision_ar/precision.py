"""Inference precision: fp32 (the exact mode), or reduced-precision weights chosen for the machine at hand.

    from vision_ar.precision import apply_precision
    chosen = apply_precision(pipe, "auto", batch_size=1)     # prints e.g. "precision auto -> int8 ..."
    pipe(class_labels=[207], generator=torch.Generator().manual_seed(0))

Modes (`--precision` on the CLI and the benchmarks):

    fp32   the exact mode: the official results (parity tests), nothing converted
    fp32-packed  (CPU) fp32 weights pre-packed once in oneDNN's blocked layout: fp32 arithmetic in another
           summation order (results within float rounding of fp32, ~1e-6 relative), 1.3-1.7x faster for the
           2-4 rows of batch-1 decoding where the default 2-row BLAS product reads the weights at half speed
    fp16   linear weights in float16, products in float16
    bf16   linear weights in bfloat16, products in bfloat16: only where the hardware runs bf16 natively
           (AVX512-BF16 / AMX CPUs, GPUs with bf16); elsewhere torch emulates it hundreds of times slower
    int8   weight-only int8, one scale per output channel (`torch.ops.aten._weight_int8pack_mm`), with the
           activations in the dtype the kernel is fastest with on this machine (measured)
    auto   the fastest of the modes this machine runs, measured once by a micro-benchmark shaped like the
           model's linear layers at the batch's row count, cached on disk (`<VISION_AR_CACHE or
           ~/.cache/vision_ar>/precision.json`) and printed

Only the generator's `nn.Linear` layers change (vision_ar/nn/quantized_linear.py); activations, norms, softmax,
RoPE, the KV cache and the sampling stay float32. In a reduced mode the tokenizer's decoder runs under bf16
autocast where bf16 is native. `apply_precision` (what the CLI and the benchmarks call, fp32 included) also puts
the decoder's convolutions in channels-last memory layout (the layout oneDNN's kernels want: 1.15-1.2x; values
differ from the default layout only by float rounding, ~1e-5). A pipeline nobody converts runs as loaded.

Why int8 is the lever for batch-1 next-token decoding: each token reads every weight once for two rows (CFG),
so the step costs the bytes of the weights; large batches and VAR's scales are compute-bound and gain only from
products that run natively in a smaller type.

`parity=True` (the exact mode the official comparisons need) accepts only fp32 ("auto" then means fp32).
"""
from __future__ import annotations

import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .errors import ConfigError
from .io import atomic_write_text
from .nn.quantized_linear import REDUCED_LINEARS, CastLinear, Int8Linear

PRECISIONS = ("fp32", "fp32-packed", "fp16", "bf16", "int8")
PRECISION_CHOICES = PRECISIONS + ("auto",)
_FLOAT = {"fp32": torch.float32, "fp32-packed": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
CACHE_VERSION = 3  # bump when a kernel or the benchmark changes: older choices are measured again

# Micro-benchmark size: enough weight bytes to leave the CPU caches (like a real model), few enough to take
# about a second per candidate set.
BENCH_MAX_FP32_BYTES = 96 * 2**20
BENCH_MAX_ROWS = 64


@dataclass(frozen=True)
class Precision:
    """A resolved mode: `name` in PRECISIONS; `compute_dtype` the products' dtype (int8: the activations');
    `decoder_dtype` the tokenizer decoder's autocast dtype (float32 = no autocast)."""

    name: str
    compute_dtype: torch.dtype = torch.float32
    decoder_dtype: torch.dtype = torch.float32

    @property
    def exact(self) -> bool:
        return self.name == "fp32"

    def describe(self) -> str:
        if self.name == "int8":
            return f"int8 (activations {_dtype_name(self.compute_dtype)})"
        return self.name


FP32 = Precision("fp32")


def _dtype_name(dtype: torch.dtype) -> str:
    return {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}.get(dtype, str(dtype))


# ====================================================================================================
# What this machine can run
# ====================================================================================================
def cpu_capability() -> str:
    return torch.backends.cpu.get_cpu_capability()


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: bf16 products in hardware. Without them torch emulates bf16 (the issue measured
    0.3 GFLOP/s for a 2048 x 2048 bf16 matmul on an AVX2 CPU against ~100 for fp32)."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, p, lambda: False)() for p in probes)


def _device(device) -> torch.device:
    return torch.device(device) if not isinstance(device, torch.device) else device


def unsupported_reason(name: str, device="cpu") -> str | None:
    """None when `device` runs precision `name` natively, else why not (for the error message)."""
    dev = _device(device)
    if name == "fp32":
        return None
    if name == "fp32-packed":
        if dev.type != "cpu":
            return f"fp32-packed is oneDNN's CPU weight layout; on {dev.type} use fp32 (or fp16 / bf16)"
        if not torch.backends.mkldnn.is_available():
            return f"this torch build ({torch.__version__}) has no oneDNN (mkldnn) CPU kernels"
        return None
    if name == "int8" and not hasattr(torch.ops.aten, "_weight_int8pack_mm"):
        return f"torch {torch.__version__} has no torch.ops.aten._weight_int8pack_mm (needs torch >= 2.3)"
    if dev.type == "cpu":
        cap = cpu_capability()
        if name == "bf16" and not cpu_has_native_bf16():
            return (f"this CPU ({cap}) has no native bf16 (AVX512-BF16 or AMX): torch emulates bf16 products "
                    f"hundreds of times slower than fp32")
        if name in ("fp16", "int8") and cap == "DEFAULT":
            return f"this CPU has no AVX2/AVX512 vector units torch uses for {name} (capability {cap})"
        return None
    if dev.type == "cuda":
        if name == "bf16" and not torch.cuda.is_bf16_supported():
            return f"this GPU ({torch.cuda.get_device_name(dev)}) has no bf16 support"
        if name == "int8":
            return _probe_int8(dev)
        return None
    return None if name in ("fp16", "bf16") else f"{name} is not implemented on {dev.type}"


def _probe_int8(dev: torch.device) -> str | None:
    try:
        x = torch.zeros(1, 32, dtype=torch.bfloat16, device=dev)
        w = torch.zeros(16, 32, dtype=torch.int8, device=dev)
        torch.ops.aten._weight_int8pack_mm(x, w, torch.ones(16, dtype=torch.bfloat16, device=dev))
    except (RuntimeError, NotImplementedError) as e:
        return f"_weight_int8pack_mm does not run on {dev.type}: {str(e).splitlines()[0][:120]}"
    return None


def supported_precisions(device="cpu") -> list[str]:
    return [p for p in PRECISIONS if unsupported_reason(p, device) is None]


def _decoder_dtype(device) -> torch.dtype:
    dev = _device(device)
    native = cpu_has_native_bf16() if dev.type == "cpu" else dev.type == "cuda" and torch.cuda.is_bf16_supported()
    return torch.bfloat16 if native else torch.float32


def _mode_decoder_dtype(name: str, reduced: torch.dtype) -> torch.dtype:
    """fp32-packed keeps fp32 arithmetic everywhere, the decoder included; the reduced modes take `reduced`."""
    return torch.float32 if name == "fp32-packed" else reduced


def _int8_activation_dtypes(device) -> list[torch.dtype]:
    # The int8 kernel converts the weights to the activations' dtype; which dtype is fastest depends on the CPU,
    # so each is a candidate. Measured with torch 2.14 for 2 rows: its bf16-activation path is the vectorised
    # one on AVX-512 AND on AVX2-only CPUs (2.4x faster than fp32 F.linear on an AVX2 EPYC, where fp16 / fp32
    # activations run ~20x slower than bf16): bf16 here is only the activations' storage, not a bf16 matmul,
    # so it does not need the native bf16 products the bf16 mode needs.
    dev = _device(device)
    on_cpu_with_vectors = dev.type == "cpu" and cpu_capability() != "DEFAULT"
    dtypes = [torch.bfloat16] if on_cpu_with_vectors or unsupported_reason("bf16", device) is None else []
    return dtypes + [torch.float16, torch.float32]


# ====================================================================================================
# The micro-benchmark behind "auto"
# ====================================================================================================
@dataclass(frozen=True)
class Workload:
    """What one generator step multiplies: `rows` activation rows through linear layers of `shapes`
    ((out_features, in_features) each, in model order)."""

    rows: int
    shapes: tuple[tuple[int, int], ...]

    @classmethod
    def of(cls, model: nn.Module, rows: int) -> "Workload":
        shapes = tuple((m.out_features, m.in_features) for m in model.modules()
                       if isinstance(m, (nn.Linear, *REDUCED_LINEARS)))
        if not shapes:
            raise ConfigError(f"{type(model).__name__} has no nn.Linear layers to run in reduced precision.")
        return cls(max(int(rows), 1), shapes)

    def bench_shapes(self) -> list[tuple[int, int]]:
        """The model's shapes in order, cut at BENCH_MAX_FP32_BYTES (a small model is benchmarked whole)."""
        out, total = [], 0
        for shape in self.shapes:
            if total and total + 4 * shape[0] * shape[1] > BENCH_MAX_FP32_BYTES:
                break
            out.append(shape)
            total += 4 * shape[0] * shape[1]
        return out

    def cache_key(self, device) -> str:
        dev = _device(device)
        if dev.type == "cuda":
            where = f"cuda:{torch.cuda.get_device_name(dev)}"
        else:
            where = f"cpu:{_cpu_name()}:{cpu_capability()}:threads{torch.get_num_threads()}"
        mb = sum(4 * o * i for o, i in self.bench_shapes()) >> 20
        rows = min(self.rows, BENCH_MAX_ROWS)
        return f"v{CACHE_VERSION}|torch{torch.__version__}|{where}|rows{rows}|fp32MB{mb}|{self.bench_shapes()[0]}"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _candidates(device) -> list[Precision]:
    dec = _decoder_dtype(device)
    out = [FP32]
    for name in ("fp32-packed", "fp16", "bf16"):
        if unsupported_reason(name, device) is None:
            out.append(Precision(name, _FLOAT[name], _mode_decoder_dtype(name, dec)))
    if unsupported_reason("int8", device) is None:
        out += [Precision("int8", dt, dec) for dt in _int8_activation_dtypes(device)]
    return out


def _convert_one(linear: nn.Linear, p: Precision) -> nn.Module:
    if p.name == "fp32":
        return linear
    if p.name == "int8":
        return Int8Linear(linear, p.compute_dtype) if Int8Linear.fits(linear) else linear
    return CastLinear(linear, p.compute_dtype)


def _sync(device):
    if _device(device).type == "cuda":
        torch.cuda.synchronize()


@torch.no_grad()
def measure(workload: Workload, device="cpu", candidates: list[Precision] | None = None,
            rounds: int = 3) -> dict[Precision, float]:
    """Seconds per pass of `workload.rows` rows through the workload's layers, per candidate (best of rounds;
    the candidates alternate within each round so that a drifting machine treats them alike)."""
    candidates = candidates or _candidates(device)
    dev = _device(device)
    gen = torch.Generator().manual_seed(0)
    layers = []
    for out_f, in_f in workload.bench_shapes():
        lin = nn.Linear(in_f, out_f, bias=False)
        lin.weight.copy_(torch.randn(out_f, in_f, generator=gen) * 0.02)
        layers.append(lin.to(dev))
    rows = min(workload.rows, BENCH_MAX_ROWS)
    inputs = {i: torch.randn(rows, i, generator=gen).to(dev) for i in {s[1] for s in workload.bench_shapes()}}
    best: dict[Precision, float] = {}
    for r in range(rounds):
        for p in candidates:
            mods = [_convert_one(lin, p) for lin in layers]
            for m in mods:  # first calls: weight packing and kernel selection happen outside the timing
                m(inputs[m.in_features])
            _sync(dev)
            t0 = time.perf_counter()
            for m in mods:
                m(inputs[m.in_features])
            _sync(dev)
            dt = time.perf_counter() - t0
            best[p] = min(best.get(p, float("inf")), dt)
            del mods
    return best


# ====================================================================================================
# Resolving a requested mode
# ====================================================================================================
_MEMO: dict[str, Precision] = {}


def cache_file() -> Path:
    root = os.environ.get("VISION_AR_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "vision_ar")
    return Path(root) / "precision.json"


def _read_cache() -> dict:
    try:
        return json.loads(cache_file().read_text())
    except (OSError, ValueError):
        return {}


def _write_cache(key: str, entry: dict) -> None:
    data = _read_cache()
    data[key] = entry
    try:
        cache_file().parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(json.dumps(data, indent=1, sort_keys=True), cache_file())
    except OSError:  # a read-only home must not stop sampling; the choice is then measured per process
        pass


def _from_entry(entry: dict) -> Precision:
    dtypes = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    return Precision(entry["name"], dtypes[entry["compute"]], dtypes[entry["decoder"]])


def _say(msg: str) -> None:
    print(f"vision-ar: {msg}", file=sys.stderr, flush=True)


def choose_fastest(workload: Workload, device="cpu", verbose: bool = True) -> Precision:
    """The fastest candidate on this machine for `workload` (measured once, then read from the cache)."""
    key = workload.cache_key(device)
    if key in _MEMO:
        return _MEMO[key]
    entry = _read_cache().get(key)
    source = "cached"
    if entry is None:
        times = measure(workload, device)
        winner = min(times, key=times.get)
        entry = {"name": winner.name, "compute": _dtype_name(winner.compute_dtype),
                 "decoder": _dtype_name(winner.decoder_dtype),
                 "ms": {p.describe(): round(t * 1e3, 3) for p, t in times.items()}}
        _write_cache(key, entry)
        source = "measured"
    choice = _from_entry(entry)
    _MEMO[key] = choice
    if verbose:
        ms = ", ".join(f"{k} {v:g}" for k, v in entry["ms"].items())
        _say(f"precision auto -> {choice.describe()} for {workload.rows} rows per step on {_device(device).type} "
             f"({source}, ms per pass: {ms}; override with --precision)")
    return choice


def check_precision_request(requested: str, parity: bool = False) -> None:
    """The checks that need no model (run them before loading one)."""
    if requested not in PRECISION_CHOICES:
        raise ConfigError(f"unknown precision {requested!r}; choose one of {', '.join(PRECISION_CHOICES)}")
    if parity and requested not in ("fp32", "auto"):
        raise ConfigError(f"precision {requested!r} was asked together with parity: parity (the official "
                          f"results) is fp32 only; drop the parity option or use --precision fp32")


def resolve_precision(requested: str = "fp32", device="cpu", *, parity: bool = False,
                      workload: Workload | None = None, verbose: bool = True) -> Precision:
    """A `--precision` value -> the Precision to run. Raises ConfigError for an unknown mode, a mode this
    machine cannot run (saying which it can), or a reduced mode together with parity."""
    check_precision_request(requested, parity)
    if parity:
        return FP32
    if requested == "fp32":
        return FP32
    if requested == "auto":
        if workload is None:
            raise ConfigError("precision 'auto' needs a workload (the model and its rows per step) to measure")
        return choose_fastest(workload, device, verbose=verbose)
    reason = unsupported_reason(requested, device)
    if reason is not None:
        raise ConfigError(f"precision {requested!r} cannot run here: {reason}. This machine runs: "
                          f"{', '.join(supported_precisions(device))} (or 'auto' to pick the fastest).")
    if requested == "int8":
        dtypes = _int8_activation_dtypes(device)
        if len(dtypes) > 1 and workload is not None:  # which activation dtype the int8 kernel is fastest with
            cands = [Precision("int8", dt, _decoder_dtype(device)) for dt in dtypes]
            times = measure(workload, device, cands, rounds=2)
            return min(times, key=times.get)
        return Precision("int8", dtypes[0], _decoder_dtype(device))
    return Precision(requested, _FLOAT[requested], _mode_decoder_dtype(requested, _decoder_dtype(device)))


# ====================================================================================================
# Applying a mode
# ====================================================================================================
# A converted layer must match its float product to this relative error (int8 and half-precision rounding
# are ~1e-2 at worst); a kernel outside it is a kernel bug on this machine, and the layer stays fp32.
_VERIFY_RTOL = 5e-2


@torch.no_grad()
def _verify(new: nn.Module, old: nn.Linear) -> bool:
    x = torch.randn(3, old.in_features, generator=torch.Generator().manual_seed(0)).to(old.weight.device)
    ref = torch.nn.functional.linear(x, old.weight.float(), None if old.bias is None else old.bias.float())
    got = new(x).float()
    err = (got - ref).abs().max() / ref.abs().max().clamp_min(1e-12)
    return bool(torch.isfinite(got).all()) and float(err) < _VERIFY_RTOL


def convert_linears(module: nn.Module, precision: Precision, verify: bool = True) -> int:
    """Replace every nn.Linear inside `module` by its reduced-precision form, in place; returns how many.

    int8 layers whose input width the kernel does not handle stay fp32 (and so does any layer whose converted
    product fails the check against fp32: a warning names it)."""
    if precision.exact:
        return 0
    count = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if not isinstance(child, nn.Linear) or isinstance(child, REDUCED_LINEARS):
                continue
            new = _convert_one(child, precision)
            if new is child:
                continue
            if verify and not _verify(new, child):
                _say(f"warning: {precision.describe()} product of layer {name} ({child.in_features} -> "
                     f"{child.out_features}) does not match fp32 on this machine; that layer stays fp32")
                continue
            setattr(parent, name, new.to(child.weight.device))
            count += 1
    return count


def prepare_decoder(tokenizer: nn.Module, precision: Precision) -> None:
    """Channels-last convolutions for the decoder; under a reduced mode, bf16 autocast where native."""
    for name in ("decoder", "post_quant_conv"):
        part = getattr(tokenizer, name, None)
        if isinstance(part, nn.Module):
            part.to(memory_format=torch.channels_last)
    decoder = getattr(tokenizer, "decoder", None)
    if isinstance(decoder, nn.Module) and not isinstance(decoder, AutocastDecoder) \
            and precision.decoder_dtype != torch.float32 and not precision.exact:
        tokenizer.decoder = AutocastDecoder(decoder, precision.decoder_dtype)


class AutocastDecoder(nn.Module):
    """Runs the wrapped decoder under autocast (convolutions in `dtype`, norms in fp32), returns float32."""

    def __init__(self, decoder: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.inner = decoder
        self.dtype = dtype

    def forward(self, *args, **kwargs):
        device = next(self.inner.parameters()).device.type
        with torch.autocast(device, dtype=self.dtype):
            return self.inner(*args, **kwargs).float()


def rows_per_step(generator: nn.Module, batch_size: int) -> int:
    """Activation rows one generator forward multiplies for `batch_size` images with CFG (a generator may
    say how many it uses per image with `rows_per_image_step`; default 2: one token, two CFG rows)."""
    return int(batch_size) * int(getattr(generator, "rows_per_image_step", 2))


def apply_precision(pipe, requested: str = "fp32", *, batch_size: int = 1, tokens_per_forward: int = 1,
                    parity: bool = False, verbose: bool = True) -> Precision:
    """Resolve `requested` for `pipe.generator` at `batch_size` images per call and convert the pipeline in
    place (generator linears; tokenizer decoder). Convert once per loaded pipeline.

    tokens_per_forward: tokens per image one forward verifies (SJD's window; 1 for the plain loop): "auto"
    measures at that many more rows, where another mode may be the fastest (a window of 16 at batch 1 is
    compute-bound where a single token is memory-bound)."""
    generator, tokenizer = pipe.generator, pipe.tokenizer
    device = next(generator.parameters()).device
    current = getattr(pipe, "precision", None)
    if current is not None and not current.exact and requested == current.name:
        return current  # already converted to this mode (not measured again: a timing may pick another variant)
    # the exact mode converts nothing, so a generator without linear layers (a toy family) still runs
    workload = Workload.of(generator, rows_per_step(generator, batch_size) * max(int(tokens_per_forward), 1)) \
        if requested != "fp32" else None
    precision = resolve_precision(requested, device, parity=parity, workload=workload, verbose=verbose)
    if current is not None and not current.exact:
        if current == precision:
            return precision
        raise ConfigError(f"this pipeline already runs in {current.describe()}; load it again to run it in "
                          f"{precision.describe()} (a conversion cannot be undone)")
    convert_linears(generator, precision)
    prepare_decoder(tokenizer, precision)
    pipe.precision = precision
    if verbose and requested not in ("auto", "fp32"):  # auto says its choice itself; fp32 is the default
        _say(f"precision {precision.describe()}")
    return precision
