"""The fused accept / residual-resample step of Speculative Jacobi Decoding (SJD).

One call verifies, for every row of the batch, its window of draft tokens left to right:

    draft x_i (drawn from q_i) is accepted when  u_i < min(1, p_i(x_i) / q_i(x_i))
    at the first rejection i = a the token is resampled from  normalise(max(0, p_a - q_a))

and returns the number of accepted drafts `a` and the resampled token (or -1 when every draft was accepted).
This is the speculative-sampling rule (Leviathan et al. / Chen et al. 2023) that makes SJD lossless: the
committed tokens are distributed exactly as tokens drawn one by one from p.

Two implementations that consume the SAME random numbers and so make the same choices:
- `accept_resample_torch`: vectorised torch, the reference (CPU and any device);
- `accept_resample_triton`: one Triton program per row (scan + a blocked pass over the vocabulary), chosen
  automatically on CUDA. Tested against the reference on CPU under TRITON_INTERPRET=1.

Random numbers are drawn by the caller from one `torch.Generator` (reproducible runs):
- `uniforms` (B, K) in [0, 1): one acceptance draw per draft;
- `inv_exp` (B, V) = 1 / Exp(1): the residual is sampled by the exponential race
  argmax_v r(v) / E_v, which picks v with probability r(v) / sum(r) (the Gumbel-max trick in another form).
Both comparisons are written as multiplications (u * q < p, r * inv_exp) so that the two implementations
round identically (IEEE multiply); a division may be approximate on the GPU.
"""
from __future__ import annotations

import torch

from ..errors import ConfigError

# ----------------------------------------------------------------------------------------------------------
# torch reference
# ----------------------------------------------------------------------------------------------------------


def accept_resample_torch(target: torch.Tensor, draft_probs: torch.Tensor, drafts: torch.Tensor,
                          num_drafts: torch.Tensor, uniforms: torch.Tensor, inv_exp: torch.Tensor
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """target, draft_probs (B,K,V): p_i and q_i of draft i; drafts (B,K) int; num_drafts (B,) valid drafts per
    row (the rest of the row is padding); uniforms (B,K); inv_exp (B,V).

    Returns num_accepted (B,) int64 and resampled (B,) int64 (-1 where every valid draft was accepted).
    """
    B, K, V = target.shape
    device = target.device
    if K == 0:
        return (torch.zeros(B, dtype=torch.long, device=device), torch.full((B,), -1, dtype=torch.long, device=device))
    idx = drafts.long().unsqueeze(-1)
    p_x = target.gather(-1, idx).squeeze(-1)
    q_x = draft_probs.gather(-1, idx).squeeze(-1)
    valid = torch.arange(K, device=device).unsqueeze(0) < num_drafts.unsqueeze(1)
    ok = (uniforms * q_x < p_x) & valid
    num_accepted = ok.long().cumprod(dim=1).sum(dim=1)  # length of the accepted prefix

    rows = torch.arange(B, device=device)
    at = num_accepted.clamp(max=K - 1)
    p_a, q_a = target[rows, at], draft_probs[rows, at]
    residual = (p_a - q_a).clamp_min(0)
    # p == q leaves no residual mass; then rejection has probability 0 in exact arithmetic, and p is the
    # only sensible fallback for a rounding-level rejection.
    source = torch.where((residual.sum(-1) > 0).unsqueeze(-1), residual, p_a)
    token = (source * inv_exp).argmax(dim=-1)
    resampled = torch.where(num_accepted < num_drafts, token, torch.full_like(token, -1))
    return num_accepted, resampled


# ----------------------------------------------------------------------------------------------------------
# Triton kernel (built on first use: importing triton is slow and the CPU path never needs it)
# ----------------------------------------------------------------------------------------------------------

_TRITON_KERNEL = None


def _build_triton_kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def _accept_resample_kernel(target_ptr, draft_ptr, drafts_ptr, num_drafts_ptr, uniforms_ptr, inv_exp_ptr,
                                num_accepted_ptr, resampled_ptr, K, V, BLOCK_V: tl.constexpr):
        row = tl.program_id(0)
        n = tl.load(num_drafts_ptr + row).to(tl.int32)

        # --- left-to-right scan: length of the accepted prefix --------------------------------------
        accepted = tl.zeros((), dtype=tl.int32)
        alive = tl.full((), 1, dtype=tl.int32)
        for i in range(0, K):
            x = tl.load(drafts_ptr + row * K + i)
            base = (row * K + i).to(tl.int64) * V
            p_x = tl.load(target_ptr + base + x)
            q_x = tl.load(draft_ptr + base + x)
            u = tl.load(uniforms_ptr + row * K + i)
            ok = ((u * q_x < p_x) & (i < n)).to(tl.int32)
            alive = alive * ok
            accepted += alive

        # --- residual resample at the first rejection (exponential race over the vocabulary) ----------
        at = tl.minimum(accepted, K - 1)
        base = (row * K + at).to(tl.int64) * V
        best_r = tl.full((), -1.0, dtype=tl.float32)
        best_r_idx = tl.zeros((), dtype=tl.int32)
        best_p = tl.full((), -1.0, dtype=tl.float32)
        best_p_idx = tl.zeros((), dtype=tl.int32)
        mass = tl.zeros((), dtype=tl.float32)
        for start in range(0, V, BLOCK_V):
            offs = start + tl.arange(0, BLOCK_V)
            m = offs < V
            p = tl.load(target_ptr + base + offs, mask=m, other=0.0)
            q = tl.load(draft_ptr + base + offs, mask=m, other=0.0)
            w = tl.load(inv_exp_ptr + row.to(tl.int64) * V + offs, mask=m, other=0.0)
            r = tl.maximum(p - q, 0.0)
            mass += tl.sum(r, axis=0)
            key_r = tl.where(m, r * w, -1.0)
            key_p = tl.where(m, p * w, -1.0)
            blk_r = tl.max(key_r, axis=0)
            blk_r_idx = tl.argmax(key_r, axis=0).to(tl.int32) + start
            blk_p = tl.max(key_p, axis=0)
            blk_p_idx = tl.argmax(key_p, axis=0).to(tl.int32) + start
            # strict '>' keeps the first maximum, like torch.argmax
            take_r = blk_r > best_r
            best_r_idx = tl.where(take_r, blk_r_idx, best_r_idx)
            best_r = tl.where(take_r, blk_r, best_r)
            take_p = blk_p > best_p
            best_p_idx = tl.where(take_p, blk_p_idx, best_p_idx)
            best_p = tl.where(take_p, blk_p, best_p)

        token = tl.where(mass > 0, best_r_idx, best_p_idx)
        token = tl.where(accepted < n, token, -1)
        tl.store(num_accepted_ptr + row, accepted.to(tl.int64))
        tl.store(resampled_ptr + row, token.to(tl.int64))

    return _accept_resample_kernel


def accept_resample_triton(target: torch.Tensor, draft_probs: torch.Tensor, drafts: torch.Tensor,
                           num_drafts: torch.Tensor, uniforms: torch.Tensor, inv_exp: torch.Tensor
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Same contract as `accept_resample_torch`; one Triton program per row."""
    global _TRITON_KERNEL
    B, K, V = target.shape
    device = target.device
    if K == 0:
        return accept_resample_torch(target, draft_probs, drafts, num_drafts, uniforms, inv_exp)
    if _TRITON_KERNEL is None:
        _TRITON_KERNEL = _build_triton_kernel()
    import triton

    target = target.float().contiguous()
    draft_probs = draft_probs.float().contiguous()
    drafts = drafts.long().contiguous()
    num_drafts = num_drafts.long().contiguous()
    uniforms = uniforms.float().contiguous()
    inv_exp = inv_exp.float().contiguous()
    num_accepted = torch.empty(B, dtype=torch.long, device=device)
    resampled = torch.empty(B, dtype=torch.long, device=device)
    block_v = min(triton.next_power_of_2(V), 4096)
    _TRITON_KERNEL[(B,)](target, draft_probs, drafts, num_drafts, uniforms, inv_exp, num_accepted, resampled,
                         K, V, BLOCK_V=block_v)
    return num_accepted, resampled


# ----------------------------------------------------------------------------------------------------------
# dispatch
# ----------------------------------------------------------------------------------------------------------


def _triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_backend(backend: str, device: torch.device) -> str:
    """'auto' -> 'triton' on CUDA when triton imports, else 'torch'."""
    if backend not in ("auto", "torch", "triton"):
        raise ConfigError(f"unknown accept/resample backend '{backend}'; use 'auto', 'torch' or 'triton'")
    if backend == "auto":
        return "triton" if device.type == "cuda" and _triton_available() else "torch"
    return backend


def accept_resample(target, draft_probs, drafts, num_drafts, uniforms, inv_exp, backend: str = "auto"):
    """The fused step on the chosen backend ('auto', 'torch' or 'triton')."""
    if resolve_backend(backend, target.device) == "triton":
        return accept_resample_triton(target, draft_probs, drafts, num_drafts, uniforms, inv_exp)
    return accept_resample_torch(target, draft_probs, drafts, num_drafts, uniforms, inv_exp)


# ----------------------------------------------------------------------------------------------------------
# self-check: the Triton kernel against the torch reference (tests under TRITON_INTERPRET=1, GPU checks on CUDA)
# ----------------------------------------------------------------------------------------------------------
def random_accept_case(B: int, K: int, V: int, seed: int, sharpness: float = 2.0, edge_cases: bool = False):
    """Random inputs (p, q, x, n, u, w) of `accept_resample` on the CPU. edge_cases: row 0 has q = p (no residual
    mass: rejection impossible), row 1's first draft is one-hot (a freshly initialised draft), the last row has
    no drafts; they need B >= 3."""
    g = torch.Generator().manual_seed(seed)
    p = torch.softmax(torch.randn(B, K, V, generator=g) * sharpness, -1)
    q = torch.softmax(torch.randn(B, K, V, generator=g) * sharpness, -1)
    if edge_cases:
        q[0] = p[0]
        q[1, 0] = 0
        q[1, 0, min(3, V - 1)] = 1
    x = torch.multinomial(q.reshape(-1, V), 1, generator=g).view(B, K)
    n = torch.randint(0, K + 1, (B,), generator=g)
    if edge_cases:
        n[-1] = 0
    u = torch.rand(B, K, generator=g)
    w = torch.empty(B, V).exponential_(generator=g).reciprocal_()
    return p, q, x, n, u, w


def triton_mismatches(shapes, device: str | torch.device, **case_options) -> list[tuple]:
    """The (B, K, V) of `shapes` (seeded by position) where the Triton kernel and the torch reference disagree on
    `device` (on a CPU only under TRITON_INTERPRET=1)."""
    bad = []
    for seed, (B, K, V) in enumerate(shapes):
        args = [t.to(device) for t in random_accept_case(B, K, V, seed, **case_options)]
        ref, tri = accept_resample_torch(*args), accept_resample_triton(*args)
        if not (torch.equal(ref[0], tri[0]) and torch.equal(ref[1], tri[1])):
            bad.append((B, K, V))
    return bad
