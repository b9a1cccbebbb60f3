"""Rectified-flow sampling with guidance: the Euler ODE solver FlexTok's decoder is sampled with.

A rectified flow moves x_t = t * noise + (1 - t) * x_0 in a straight line; the model predicts the velocity
v = dx/dt = noise - x_0. Sampling starts from noise at t = 1 and takes `steps` Euler steps back to t = 0:

    for i = T .. 1:   t = i / T;   x <- x - (1 / T) * v(x, t)

Guidance (apple/ml-flextok `flow_matching/pipelines.py`, `cfg_utils.py`), with a scale g that is a number or a
function of t (g == 1 runs no unconditional pass):
  * CFG: v = v_u + g * (v_c - v_u)
  * APG (adaptive projected guidance, Sadat et al. 2024): per image, d = v_c - v_u is smoothed by a momentum
    buffer (running = d + momentum * running, momentum -0.5), rescaled to an L2 norm of at most `norm_threshold`
    (2.5) over (C,H,W), and only its component orthogonal to v_c is kept (projection in float64):
    v = v_c + (g - 1) * (d_orth + eta * d_par), eta = 0.

`velocity(x, t, uncond)` is any callable: t is the Python float i/T, uncond a bool.
"""
from __future__ import annotations

from typing import Callable

import torch

from ..errors import ConfigError

Velocity = Callable[[torch.Tensor, float, bool], torch.Tensor]


def classifier_free_guidance(v_cond: torch.Tensor, v_uncond: torch.Tensor, scale: float) -> torch.Tensor:
    return v_uncond + scale * (v_cond - v_uncond)


class APGuidance:
    """Adaptive projected guidance with its per-image momentum state (one instance per sampling run)."""

    def __init__(self, momentum: float = -0.5, norm_threshold: float = 2.5, eta: float = 0.0):
        self.momentum, self.norm_threshold, self.eta = momentum, norm_threshold, eta
        self.running: torch.Tensor | float = 0.0

    def __call__(self, v_cond: torch.Tensor, v_uncond: torch.Tensor, scale: float) -> torch.Tensor:
        dims = tuple(range(1, v_cond.ndim))  # per image: (C, H, W)
        diff = v_cond - v_uncond
        self.running = diff + self.momentum * self.running
        diff = self.running
        if self.norm_threshold > 0:
            norm = diff.norm(p=2, dim=dims, keepdim=True)
            diff = diff * torch.minimum(torch.ones_like(diff), self.norm_threshold / norm)
        unit = torch.nn.functional.normalize(v_cond.double(), dim=dims)
        d64 = diff.double()
        parallel = (d64 * unit).sum(dim=dims, keepdim=True) * unit
        orthogonal = (d64 - parallel).to(diff.dtype)
        return v_cond + (scale - 1) * (orthogonal + self.eta * parallel.to(diff.dtype))


def check_guidance(guidance_scale, steps: int) -> None:
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ConfigError(f"the number of flow steps must be an integer >= 1, got {steps!r}")
    if not callable(guidance_scale):
        try:
            float(guidance_scale)
        except (TypeError, ValueError):
            raise ConfigError(f"guidance_scale must be a number or a function of t, got {guidance_scale!r}") \
                from None


@torch.no_grad()
def rf_sample(velocity: Velocity, noise: torch.Tensor, steps: int, guidance_scale: float | Callable = 1.0,
              apg: bool = False, trace: dict | None = None) -> torch.Tensor:
    """Integrate from `noise` (x at t=1) to t=0 in `steps` Euler steps -> x_0.

    trace: a dict that receives 't' (T,), 'x' (T,*x.shape) (the input of each step), 'v_cond' and, with guidance,
    'v_uncond' (the model outputs), for inspection and parity tests.
    """
    check_guidance(guidance_scale, steps)
    guided = callable(guidance_scale) or float(guidance_scale) != 1.0
    combine = APGuidance() if apg else classifier_free_guidance
    dt = 1.0 / steps
    x = noise
    record = {"t": [], "x": [], "v_cond": [], "v_uncond": []} if trace is not None else None
    for i in range(steps, 0, -1):
        t = i / steps
        v = velocity(x, t, False)
        if record is not None:
            record["t"].append(t)
            record["x"].append(x)
            record["v_cond"].append(v)
        if guided:
            scale = guidance_scale(t) if callable(guidance_scale) else float(guidance_scale)
            v_u = velocity(x, t, True)
            if record is not None:
                record["v_uncond"].append(v_u)
            v = combine(v, v_u, scale)
        x = x - dt * v
    if record is not None:
        trace.update({"t": torch.tensor(record["t"]), "x": torch.stack(record["x"]),
                      "v_cond": torch.stack(record["v_cond"])})
        if record["v_uncond"]:
            trace["v_uncond"] = torch.stack(record["v_uncond"])
    return x


def parse_guidance(value: str | float) -> float | Callable[[float], float]:
    """A guidance scale from text: a number ('7.5') or an arithmetic expression in t ('1+6.5*t', 't**2*3'),
    read without eval (numbers, t, + - * / ** and parentheses only)."""
    import ast
    import operator

    if not isinstance(value, str):
        return float(value)
    try:
        return float(value)
    except ValueError:
        pass
    ops = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.Pow: operator.pow, ast.USub: operator.neg, ast.UAdd: operator.pos}
    try:
        tree = ast.parse(value, mode="eval").body
    except SyntaxError:
        tree = None

    def check(node) -> None:
        if isinstance(node, ast.BinOp) and type(node.op) in ops:
            check(node.left), check(node.right)
        elif isinstance(node, ast.UnaryOp) and type(node.op) in ops:
            check(node.operand)
        elif not (isinstance(node, ast.Name) and node.id == "t") and not (
                isinstance(node, ast.Constant) and isinstance(node.value, (int, float))):
            raise ConfigError(f"guidance schedule {value!r}: only numbers, t, + - * / ** and parentheses are allowed")

    if tree is None:
        raise ConfigError(f"guidance schedule {value!r} is not an expression in t (e.g. '1+6.5*t')")
    check(tree)

    def evaluate(node, t: float) -> float:
        if isinstance(node, ast.BinOp):
            return ops[type(node.op)](evaluate(node.left, t), evaluate(node.right, t))
        if isinstance(node, ast.UnaryOp):
            return ops[type(node.op)](evaluate(node.operand, t))
        return t if isinstance(node, ast.Name) else node.value

    def schedule(t: float) -> float:
        return evaluate(tree, t)

    schedule.expression = value
    return schedule
