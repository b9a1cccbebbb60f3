"""Reduced-precision stand-ins for `nn.Linear`, for inference only (`vision_ar/precision.py` installs them).

Why: batch-1 next-token decoding reads every weight once per token and does almost no arithmetic with it, so
its speed is the speed of reading the weights; halving (fp16 / bf16) or quartering (int8) their bytes is the
lever. Compute-bound work (VAR scales, large batches) gains only where the CPU/GPU multiplies in the reduced
type natively (bf16 on AVX512-BF16 / AMX CPUs and on GPUs).

    CastLinear(linear, torch.bfloat16)           weight stored in fp16 / bf16, x cast to it for the product
    CastLinear(linear, torch.float32)            fp32 weight pre-packed in oneDNN's blocked layout (CPU): the
                                                 same fp32 arithmetic, another summation order; measured
                                                 1.3-1.7x faster than F.linear for 2-4 rows (it streams the
                                                 weight at ~11 GB/s where MKL's 2-row product reads ~6)
    Int8Linear(linear, compute_dtype)            weight-only int8, one scale per output channel
                                                 (torch.ops.aten._weight_int8pack_mm)

Both keep the activations' dtype at their boundary (a float32 model stays float32 between layers: norms,
softmax, RoPE and the KV cache are unchanged) and add the bias in that dtype after the product. Their
state_dict is not the model's checkpoint format: convert a loaded model, never save a converted one.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# `_weight_int8pack_mm` on CPU gives wrong results (or crashes) for reduction widths that are not a multiple
# of 16 with half-precision activations (measured on torch 2.14); 32 leaves a margin. Narrower layers stay fp32.
INT8_K_MULTIPLE = 32


def _onednn_packs(dtype: torch.dtype) -> bool:
    """Whether oneDNN runs `dtype` products on this CPU (then weights are pre-packed into its blocked layout:
    measured 1.3x faster than F.linear, which re-lays the bf16 weight out at every call). fp32: always."""
    if dtype == torch.float32:
        return torch.backends.mkldnn.is_available()
    try:
        if dtype == torch.bfloat16:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        if dtype == torch.float16:
            return bool(torch.ops.mkldnn._is_mkldnn_fp16_supported())
    except (AttributeError, RuntimeError):
        pass
    return False


class CastLinear(nn.Module):
    """y = (x.to(dtype) @ W.to(dtype)^T).to(x.dtype) + b.

    On a CPU whose oneDNN runs `dtype`, the weight is also packed once (at the first call) into oneDNN's
    layout; the packed copy is a cache, never saved or copied (state_dict and deepcopy see `weight` only)."""

    def __init__(self, linear: nn.Linear, dtype: torch.dtype):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.compute_dtype = dtype
        self.register_buffer("weight", linear.weight.detach().to(dtype).contiguous())
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().clone())
        self._packed: torch.Tensor | None = None
        self._pack = _onednn_packs(dtype)

    def __getstate__(self):  # the packed weight is an opaque oneDNN tensor: rebuilt, not copied
        state = self.__dict__.copy()
        state["_packed"] = None
        return state

    def _apply(self, fn, recurse=True):  # .to(device/dtype): the packed copy no longer matches
        self._packed = None
        return super()._apply(fn, recurse)

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """`bias` overrides the module's own (VAR's q/k/v bias is assembled per call)."""
        bias = self.bias if bias is None else bias
        xc = x.to(self.compute_dtype)
        if self._pack and x.device.type == "cpu" and self.weight.device.type == "cpu":
            if self._packed is None:
                rows = max(xc.numel() // self.in_features, 1)  # a hint for the layout, any rows work after
                self._packed = torch.ops.mkldnn._reorder_linear_weight(self.weight, rows)
            y = torch.ops.mkldnn._linear_pointwise(xc, self._packed, None, "none", [], "")
        else:
            y = F.linear(xc, self.weight)
        y = y.to(x.dtype)
        return y if bias is None else y.add_(bias)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, weight={self.compute_dtype}"


def quantize_per_channel_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel int8: W ~ q * scale[:, None], q in [-127, 127]. Returns (q, scale fp32)."""
    w = weight.detach().float()
    scale = w.abs().amax(dim=1).clamp_min(torch.finfo(torch.float32).tiny) / 127.0
    q = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return q.contiguous(), scale


class Int8Linear(nn.Module):
    """Weight-only int8: y = (x.to(compute_dtype) @ (q * scale)^T).to(x.dtype) + b, one fused kernel."""

    def __init__(self, linear: nn.Linear, compute_dtype: torch.dtype = torch.bfloat16):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.compute_dtype = compute_dtype
        q, scale = quantize_per_channel_int8(linear.weight)
        self.register_buffer("weight_int8", q)
        self.register_buffer("scales", scale.to(compute_dtype))
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().clone())

    @staticmethod
    def fits(linear: nn.Linear) -> bool:
        return linear.in_features % INT8_K_MULTIPLE == 0

    def dequantized_weight(self) -> torch.Tensor:
        return self.weight_int8.float() * self.scales.float()[:, None]

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        bias = self.bias if bias is None else bias
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features).to(self.compute_dtype).contiguous()  # the kernel wants dense rows
        y = torch.ops.aten._weight_int8pack_mm(x2, self.weight_int8, self.scales)
        y = y.to(x.dtype).view(*lead, self.out_features)
        return y if bias is None else y.add_(bias)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, weight=int8 per-channel, compute={self.compute_dtype}"


REDUCED_LINEARS = (CastLinear, Int8Linear)


def linear_with_bias(module: nn.Module, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """`F.linear(x, module.weight, bias)` for a plain nn.Linear (the exact, fused fp32 path, bit for bit what
    the official code computes), the reduced module's own product otherwise."""
    if isinstance(module, nn.Linear):
        return F.linear(x, module.weight, bias)
    return module(x, bias=bias)
