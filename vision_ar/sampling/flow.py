"""Flow sampling for xAR: entity after entity, integrate the learned velocity from noise (t = 1) to data (t = 0).

For each entity k = 0 .. K-1 (the generator's EntityLayout order):

    x    ~ N(0, I)  (B, n_k, C)                                   one draw per entity, float32, then float64
    for each step (t_cur -> t_next) of the time grid:
        v = model.entity_velocity(x, class, t_cur)                cond rows, then uncond (null class) rows
        Euler-Maruyama (official `euler_maruyama_sampler`, what xAR's sample_tokens uses):
            score s = ((t-1) v - x) / t  (linear path),  drift d = v - (1/2) g^2 s  with g^2 = 2 t
            CFG on the drift: d = d_u + w_k (d_c - d_u)    (when w_k > 1)
            x <- x + d dt + g sqrt(|dt|) eps,  eps ~ N(0, I) float64, drawn before the network call;
            the last step (t = 0.04 -> 0) is the mean update x + d dt (no noise)
            time grid: linspace(1, 0.04, num_steps) then 0
        Euler ODE (official `euler_sampler`): d = CFG(v), x <- x + d dt on linspace(1, 0, num_steps + 1)
    the clean entity becomes context: on the next entity's first step the model runs it along at t = 0 and
    keeps its keys/values (KV cache across entities), so every entity is committed once.

Guidance schedule (official sample_tokens): w_k = 1 + (cfg - 1) * k / (K - 1), i.e. no guidance on the first
entity and the full scale on the last (a single-entity layout uses cfg itself); "constant" uses cfg for all.

Numerics follow the official code (network in float32, integration in float64, the network's time input in
float64 on an entity's first step and float32 after it, which decides floor(t * 1000)), so the same generator
seed on CPU gives the official tokens. One deliberate difference: with num_steps = 2 the official
Euler-Maruyama code takes its last step with the first step's branch (it re-feeds and re-caches the previous
entity, without a mask); here every entity's context is committed exactly once for every num_steps.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from ..conditioning import check_guidance
from ..errors import ConfigError

METHODS = {"euler_maruyama": "euler_maruyama", "sde": "euler_maruyama", "euler": "euler", "ode": "euler"}
SCHEDULES = ("linear", "constant")
SDE_LAST_T = 0.04  # official: the stochastic steps end at t = 0.04, a final deterministic step goes to 0


@dataclass
class FlowNoise:
    """Injected draws (replaces the generator): the initial noise of each entity (B, n_k, C), and for the
    Euler-Maruyama method the noise of each stochastic step, steps[k][i] (B, n_k, C)."""

    initial: Sequence[torch.Tensor]
    steps: Sequence[Sequence[torch.Tensor]] = ()


# ----------------------------------------------------------------------------------------------------
# Settings (checked before any work)
# ----------------------------------------------------------------------------------------------------
def check_flow_args(num_steps, method: str, guidance_scale, guidance_schedule: str) -> str:
    """Validate the sampler settings; returns the canonical method name."""
    if method not in METHODS:
        raise ConfigError(f"flow method must be one of {sorted(METHODS)}, got {method!r}")
    method = METHODS[method]
    if isinstance(num_steps, bool) or not isinstance(num_steps, numbers.Integral) or num_steps < 1:
        raise ConfigError(f"num_steps (flow steps per entity) must be an integer >= 1, got {num_steps!r}")
    if method == "euler_maruyama" and num_steps < 2:
        raise ConfigError(f"the Euler-Maruyama sampler needs num_steps >= 2 (its last step is the deterministic "
                          f"t={SDE_LAST_T} -> 0 update), got {num_steps}; use method='euler' for a single step.")
    check_guidance(guidance_scale, off="1 means no guidance for xAR")
    if guidance_schedule not in SCHEDULES:
        raise ConfigError(f"guidance_schedule must be one of {SCHEDULES}, got {guidance_schedule!r}")
    return method


def time_grid(method: str, num_steps: int) -> torch.Tensor:
    """float64 times from 1 to 0 (num_steps + 1 points; see the module docstring)."""
    if METHODS[method] == "euler_maruyama":
        return torch.cat([torch.linspace(1.0, SDE_LAST_T, num_steps, dtype=torch.float64),
                          torch.zeros(1, dtype=torch.float64)])
    return torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64)


def entity_guidance(cfg: float, entity: int, num_entities: int, schedule: str = "linear") -> float:
    """The CFG scale of entity k (official linear ramp from 1 at the first entity to cfg at the last)."""
    if schedule == "constant" or num_entities == 1:
        return float(cfg)
    return (cfg - 1) * entity / (num_entities - 1.0) + 1


# ----------------------------------------------------------------------------------------------------
# One step of each method
# ----------------------------------------------------------------------------------------------------
def score_from_velocity(v: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Score of the linear path x_t = (1-t) x0 + t eps from its velocity (official get_score_from_velocity)."""
    t = t.view(-1, *([1] * (x.ndim - 1)))
    alpha, d_alpha, sigma, d_sigma = 1 - t, -1.0, t, 1.0
    reverse_alpha_ratio = alpha / d_alpha
    var = sigma ** 2 - reverse_alpha_ratio * d_sigma * sigma
    return (reverse_alpha_ratio * v - x) / var


def _guide(d: torch.Tensor, scale: float, doubled: bool) -> torch.Tensor:
    if not doubled:
        return d
    d_cond, d_uncond = d.chunk(2)
    return d_uncond + scale * (d_cond - d_uncond) if scale > 1.0 else d_cond


def _randn(shape, generator: torch.Generator | None, dtype: torch.dtype, device) -> torch.Tensor:
    gdev = generator.device if generator is not None else "cpu"
    return torch.randn(shape, generator=generator, dtype=dtype, device=gdev).to(device)


# ----------------------------------------------------------------------------------------------------
# The sampler
# ----------------------------------------------------------------------------------------------------
@torch.no_grad()
def sample_flow(model, labels: torch.Tensor, *, num_steps: int, guidance_scale: float = 1.0,
                method: str = "euler_maruyama", guidance_schedule: str = "linear",
                generator: torch.Generator | None = None, noise: FlowNoise | None = None,
                on_call: Callable[[dict], None] | None = None) -> torch.Tensor:
    """Latents (B, C, h, w) for class labels (B,) (model.num_classes = unconditional).

    `generator` drives every draw (initial noise of each entity, then each stochastic step's noise, in the
    official order); `noise` injects them instead. `on_call(record)` sees every network call: entity, step,
    x (R, n_k, C), context (the committed entity's rows or None), t (as passed), velocity."""
    method = check_flow_args(num_steps, method, guidance_scale, guidance_schedule)
    model.check_labels(labels)
    lay, C = model.layout, model.config.latent_channels
    K, B = lay.num_entities, labels.shape[0]
    device = model.mask.device
    if noise is not None:
        want = [(B, n, C) for n in lay.entity_sizes]
        if [tuple(x.shape) for x in noise.initial] != want:
            raise ConfigError(f"injected initial noise must be {want}, got {[tuple(x.shape) for x in noise.initial]}")
    scales = [entity_guidance(guidance_scale, k, K, guidance_schedule) for k in range(K)]
    doubled = any(w > 1.0 for w in scales)  # unconditional rows only when some entity is guided
    labels = labels.to(device)
    rows_labels = torch.cat([labels, torch.full_like(labels, model.num_classes)]) if doubled else labels
    R = rows_labels.shape[0]
    t_steps = time_grid(method, num_steps)
    generated: list[torch.Tensor] = []  # clean entities (B, n_k, C), float32
    with model.inference(R):
        for k in range(K):
            x0 = noise.initial[k] if noise is not None else _randn((B, lay.entity_sizes[k], C), generator,
                                                                    torch.float32, device)
            x = x0.to(device, torch.float64)
            context_rows = [g.repeat(2, 1, 1) if doubled else g for g in generated]
            for i in range(num_steps):
                t_cur, t_next = t_steps[i], t_steps[i + 1]
                dt = t_next - t_cur
                stochastic = method == "euler_maruyama" and i < num_steps - 1
                if stochastic:
                    eps = (noise.steps[k][i].to(device, torch.float64) if noise is not None
                           else _randn(x.shape, generator, torch.float64, device))
                x_rows = torch.cat([x, x]) if doubled else x
                t_rows = torch.full((R,), float(t_cur), dtype=torch.float64, device=device)
                # the official network input time: float32-rounded, promoted back to float64 on the first step
                t_net = t_rows.float().double() if i == 0 else t_rows.float()
                v = model.entity_velocity(x_rows.float(), rows_labels, t_net, k, context_rows, commit=i == 0)
                if on_call is not None:
                    on_call({"entity": k, "step": i, "x": x_rows.float(), "t": t_net, "velocity": v,
                             "context": context_rows[k - 1] if (i == 0 and k > 0) else None})
                v = v.to(torch.float64)
                if method == "euler_maruyama":
                    diffusion = 2 * t_cur
                    d = v - 0.5 * diffusion * score_from_velocity(v, x_rows, t_rows)
                    d = _guide(d, scales[k], doubled)
                    if stochastic:
                        x = x + d * dt + torch.sqrt(diffusion) * (eps * torch.sqrt(torch.abs(dt)))
                    else:
                        x = x + dt * d
                else:
                    x = x + dt * _guide(v, scales[k], doubled)
            generated.append(x.float())
    return lay.from_sequence(torch.cat(generated, dim=1))


def network_calls(model, num_steps: int) -> int:
    """How many network forwards sample_flow makes (one per flow step per entity)."""
    return model.layout.num_entities * num_steps
