"""Vector quantizers: the nearest-code lookup every VQ tokenizer shares, and VAR's multi-scale residual quantizer.

Multi-scale residual quantization (VAR, "next-scale prediction"): a latent f (B,C,h,w) is explained scale by scale,
from a 1x1 token map up to h x w. At scale si with side pn:

    r   = area-downsample(f - f_hat, pn)          # what is still unexplained, seen at this scale
    idx = nearest code of each of the pn*pn vectors of r
    h   = Phi_k(bicubic-upsample(codebook[idx], h))   # Phi: 3x3 conv blended with identity by quant_resi
    f_hat += h

The last scale (pn == h) skips both resamplings. Phi convs may be one per scale (share_quant_resi=0), one for all
(=1) or K shared ones (=K >= 2) spread evenly over the scales; `phi_index_per_scale` says which one each scale
uses, computed the official way so every float64 tie is resolved identically.

Attribute and buffer names follow FoundationVision/VAR `models/quant.py` so official state_dicts load as they are.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.distributed as tdist
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError


# ----------------------------------------------------------------------------------------------------
# Nearest code (shared by every VQ quantizer)
# ----------------------------------------------------------------------------------------------------
def nearest_code(z_flat: torch.Tensor, codebook: torch.Tensor, cosine: bool = False) -> torch.LongTensor:
    """Index of the closest codebook row for each row of `z_flat` (N,C); `codebook` is (V,C).

    Euclidean: argmin_v |z|^2 + |e_v|^2 - 2 z.e_v, evaluated in that order (norms summed first, then one
    addmm with alpha=-2) like the official VAR/taming code, so near-ties fall the same way.
    Cosine (VAR's `using_znorm`): argmax of normalized z . normalized e.
    """
    codebook = codebook.detach()
    z_flat = z_flat.detach()
    if cosine:
        return torch.argmax(F.normalize(z_flat, dim=-1) @ F.normalize(codebook.T, dim=0), dim=1)
    d = torch.sum(z_flat.square(), dim=1, keepdim=True) + torch.sum(codebook.square(), dim=1, keepdim=False)
    d.addmm_(z_flat, codebook.T, alpha=-2, beta=1)  # (N, V)
    return torch.argmin(d, dim=1)


# ----------------------------------------------------------------------------------------------------
# Phi: which conv each scale uses
# ----------------------------------------------------------------------------------------------------
def phi_ticks(num_phis: int) -> np.ndarray:
    """Positions in [0,1] of K Phi convs: K evenly spaced ticks (1/(3K) margins for K == 4, else 1/(2K))."""
    K = num_phis
    # 1/3/K and 1/2/K exactly as written in the official code: float64 rounding decides the exact ties.
    return np.linspace(1 / 3 / K, 1 - 1 / 3 / K, K) if K == 4 else np.linspace(1 / 2 / K, 1 - 1 / 2 / K, K)


def phi_index(si: int, num_scales: int, num_phis: int) -> int:
    """Phi used at scale si of num_scales: the tick nearest to si/(S-1) (numpy float64 abs/argmin, first wins)."""
    if num_phis == 1:
        return 0
    at = si / (num_scales - 1)
    return int(np.argmin(np.abs(phi_ticks(num_phis) - at)).item())


def num_phi_convs(num_scales: int, share_quant_resi: int, default_qresi_counts: int = 0) -> int:
    """How many Phi convs a quantizer holds: one per scale (0), one (1), or share_quant_resi of them."""
    if share_quant_resi == 0:
        return default_qresi_counts or num_scales
    return 1 if share_quant_resi == 1 else share_quant_resi


def phi_index_per_scale(num_scales: int, share_quant_resi: int, default_qresi_counts: int = 0) -> list[int]:
    K = num_phi_convs(num_scales, share_quant_resi, default_qresi_counts)
    return [phi_index(si, num_scales, K) for si in range(num_scales)]


class Phi(nn.Conv2d):
    """h -> (1 - r) * h + r * conv3x3(h), r = |quant_resi|: a refinement that starts close to identity."""

    def __init__(self, channels: int, quant_resi: float):
        super().__init__(channels, channels, kernel_size=3, stride=1, padding=1)
        self.resi_ratio = abs(quant_resi)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h.mul(1 - self.resi_ratio) + super().forward(h).mul_(self.resi_ratio)


def _make_phi(channels: int, quant_resi: float) -> nn.Module:
    return Phi(channels, quant_resi) if abs(quant_resi) > 1e-6 else nn.Identity()


# Three containers only because the official state_dict names them differently:
#   non-shared -> quant_resi.{k}.weight, shared -> quant_resi.qresi.weight, partially shared -> quant_resi.qresi_ls.{k}.weight
class PhiNonShared(nn.ModuleList):
    def phi(self, k: int) -> nn.Module:
        return self[k]


class PhiShared(nn.Module):
    def __init__(self, qresi: nn.Module):
        super().__init__()
        self.qresi = qresi

    def phi(self, k: int) -> nn.Module:
        return self.qresi


class PhiPartiallyShared(nn.Module):
    def __init__(self, qresi_ls: nn.ModuleList):
        super().__init__()
        self.qresi_ls = qresi_ls

    def phi(self, k: int) -> nn.Module:
        return self.qresi_ls[k]


# ----------------------------------------------------------------------------------------------------
# Multi-scale residual quantizer
# ----------------------------------------------------------------------------------------------------
class MultiScaleResidualQuantizer(nn.Module):
    """VAR's VectorQuantizer2. Latents are (B,Cvae,pn_last,pn_last); tokens are one (B, pn*pn) LongTensor per scale."""

    def __init__(self, vocab_size: int, Cvae: int, patch_nums: Sequence[int], using_znorm: bool = False,
                 beta: float = 0.25, quant_resi: float = 0.5, share_quant_resi: int = 4,
                 default_qresi_counts: int = 0, dead_code_restart: int = 0):
        super().__init__()
        self.vocab_size, self.Cvae = int(vocab_size), int(Cvae)
        self.patch_nums = tuple(int(p) for p in patch_nums)
        self.using_znorm, self.beta, self.quant_resi_ratio = bool(using_znorm), float(beta), float(quant_resi)
        if len(self.patch_nums) < 2:
            raise ConfigError(f"patch_nums needs at least 2 scales (Phi placement divides by S-1), got {self.patch_nums}")
        if share_quant_resi < 0:
            raise ConfigError(f"share_quant_resi must be >= 0 (0 = one Phi per scale), got {share_quant_resi}")
        S = len(self.patch_nums)

        K = num_phi_convs(S, share_quant_resi, default_qresi_counts)
        if share_quant_resi == 0:
            self.quant_resi = PhiNonShared([_make_phi(Cvae, quant_resi) for _ in range(K)])
        elif share_quant_resi == 1:
            self.quant_resi = PhiShared(_make_phi(Cvae, quant_resi))
        else:
            self.quant_resi = PhiPartiallyShared(nn.ModuleList([_make_phi(Cvae, quant_resi) for _ in range(K)]))
        self.phi_index_per_scale: list[int] = phi_index_per_scale(S, share_quant_resi, default_qresi_counts)

        # Per-scale EMA of code hits (training statistics; part of the official state_dict).
        self.register_buffer("ema_vocab_hit_SV", torch.full((S, self.vocab_size), fill_value=0.0))
        # Training steps seen (it picks the EMA momentum below). A plain attribute, so the state_dict keeps the
        # official keys; training checkpoints save it through training_state().
        self.record_hit = 0
        self.embedding = nn.Embedding(self.vocab_size, self.Cvae)
        # Dead-code restart (not in the official code, which publishes no tokenizer training): every
        # `dead_code_restart` training steps, codes that no scale picked since the last restart are moved onto
        # random residual vectors of the current batch (Jukebox / SoundStream practice). Without it a freshly
        # initialised codebook collapses to a few codes. The counters are saved only when the option is on,
        # so official configurations keep the official state_dict keys; with it on, resume stays exact.
        if dead_code_restart < 0:
            raise ConfigError(f"dead_code_restart must be >= 0 (0 = off), got {dead_code_restart}")
        self.dead_code_restart = int(dead_code_restart)
        if self.dead_code_restart:
            self.register_buffer("restart_hits_V", torch.zeros(self.vocab_size))
            self.register_buffer("restart_step", torch.zeros((), dtype=torch.long))

    def extra_repr(self) -> str:
        return (f"patch_nums={self.patch_nums}, znorm={self.using_znorm}, beta={self.beta}, "
                f"quant_resi={self.quant_resi_ratio}, phi_index_per_scale={self.phi_index_per_scale}")

    # ---- small pieces ------------------------------------------------------------------------------
    @property
    def num_scales(self) -> int:
        return len(self.patch_nums)

    def phi(self, si: int) -> nn.Module:
        return self.quant_resi.phi(self.phi_index_per_scale[si])

    def _scale_residual(self, f_rest: torch.Tensor, si: int) -> torch.Tensor:
        """(B*pn*pn, C) residual vectors seen at scale si (area-downsampled except at the last), row-major."""
        C, pn = f_rest.shape[1], self.patch_nums[si]
        r = f_rest if si == self.num_scales - 1 else F.interpolate(f_rest, size=(pn, pn), mode="area")
        return r.permute(0, 2, 3, 1).reshape(-1, C)

    def _scale_codes(self, f_rest: torch.Tensor, si: int) -> torch.LongTensor:
        """(B*pn*pn,) nearest codes of the residual seen at scale si."""
        return nearest_code(self._scale_residual(f_rest, si), self.embedding.weight, cosine=self.using_znorm)

    def _codes_to_h(self, idx_Bhw: torch.LongTensor, si: int, H: int, W: int) -> torch.Tensor:
        """Phi(upsampled embedding) of one scale's (B,pn,pn) codes: this scale's addition to f_hat."""
        h = self.embedding(idx_Bhw).permute(0, 3, 1, 2)
        if si != self.num_scales - 1:
            h = F.interpolate(h, size=(H, W), mode="bicubic")
        return self.phi(si)(h.contiguous())

    def _check_latent(self, f: torch.Tensor) -> None:
        last = self.patch_nums[-1]
        if f.ndim != 4 or f.shape[1] != self.Cvae or tuple(f.shape[2:]) != (last, last):
            raise ConfigError(f"the quantizer expects latents (B,{self.Cvae},{last},{last}) (last patch_num "
                              f"{last}), got {tuple(f.shape)}.")

    # ---- training path -----------------------------------------------------------------------------
    def forward(self, f: torch.Tensor, ret_usages: bool = False):
        """Quantize f for VQ-VAE training -> (f_hat_straight_through, usages or None, vq_loss).

        vq_loss = mean over scales of beta*mse(f_hat.detach(), f) + mse(f_hat, f.detach()): the first term (commitment)
        trains the encoder, the second (codebook) trains the embedding and the Phi convs. The returned f_hat has
        f_hat's values and f's gradient (straight-through), so the decoder's loss reaches the encoder.
        """
        self._check_latent(f)
        if f.dtype != torch.float32:
            f = f.float()
        B, C, H, W = f.shape
        f_no_grad = f.detach()
        f_rest = f_no_grad.clone()
        f_hat = torch.zeros_like(f_rest)
        loss = f.new_zeros(())
        restart = self.training and self.dead_code_restart > 0
        pool = []  # residual vectors the codes were matched against (dead-code restart candidates)
        with torch.autocast(device_type=f.device.type, enabled=False):
            for si, pn in enumerate(self.patch_nums):
                rest_N = self._scale_residual(f_rest, si)
                idx_N = nearest_code(rest_N, self.embedding.weight, cosine=self.using_znorm)
                self._record_hits(si, idx_N)
                if restart:
                    self.restart_hits_V += idx_N.bincount(minlength=self.vocab_size).float()
                    pool.append(rest_N)
                h = self._codes_to_h(idx_N.view(B, pn, pn), si, H, W)
                f_hat = f_hat + h
                f_rest = f_rest - h.detach()
                loss = loss + F.mse_loss(f_hat.detach(), f).mul(self.beta) + F.mse_loss(f_hat, f_no_grad)
            loss = loss / self.num_scales
            f_hat_st = (f_hat.detach() - f_no_grad).add_(f)
        if self.training:
            self.record_hit += 1
        if restart:
            self._maybe_restart_dead_codes(torch.cat(pool))
        return f_hat_st, (self.usages(B * H * W) if ret_usages else None), loss

    @torch.no_grad()
    def _maybe_restart_dead_codes(self, pool: torch.Tensor) -> None:
        self.restart_step += 1
        if int(self.restart_step) % self.dead_code_restart:
            return
        hits = self.restart_hits_V.clone()
        if tdist.is_available() and tdist.is_initialized():
            tdist.all_reduce(hits)
        dead = (hits == 0).nonzero().flatten()
        if dead.numel():
            pick = torch.randint(pool.shape[0], (dead.numel(),), device=pool.device)
            new = pool[pick]
            if tdist.is_available() and tdist.is_initialized():
                tdist.broadcast(new, src=0)  # every rank restarts to the same vectors
            self.embedding.weight.data[dead] = new.to(self.embedding.weight.dtype)
        self.restart_hits_V.zero_()

    @torch.no_grad()
    def _record_hits(self, si: int, idx_N: torch.LongTensor) -> None:
        """Update the per-scale EMA of code hits (training mode only; summed over ranks under DDP).

        The first training step copies the hits, the next 99 use momentum 0.9, later ones 0.99. The official code
        advances its step counter once per *scale*, so its scales > 0 never get the initial copy; here it advances
        once per training step (forward), which only changes these usage statistics, never the loss or tokens.
        """
        if not self.training:
            return
        hit_V = idx_N.bincount(minlength=self.vocab_size).float()
        if tdist.is_available() and tdist.is_initialized():
            tdist.all_reduce(hit_V)
        ema = self.ema_vocab_hit_SV[si]
        if self.record_hit == 0:
            ema.copy_(hit_V)
        elif self.record_hit < 100:
            ema.mul_(0.9).add_(hit_V.mul(0.1))
        else:
            ema.mul_(0.99).add_(hit_V.mul(0.01))

    def training_state(self) -> dict:
        """What training reads besides the state_dict (saved in training checkpoints for an exact resume)."""
        return {"record_hit": self.record_hit}

    def load_training_state(self, state: dict) -> None:
        self.record_hit = int(state["record_hit"])

    def usages(self, vectors_per_batch: int) -> list[float]:
        """Per scale, % of codes whose EMA hit count reaches 8% of a uniform share of one (global) batch."""
        world = tdist.get_world_size() if tdist.is_available() and tdist.is_initialized() else 1
        margin = world * vectors_per_batch / self.vocab_size * 0.08
        return [(self.ema_vocab_hit_SV[si] >= margin).float().mean().item() * 100 for si in range(self.num_scales)]

    # ---- inference paths ---------------------------------------------------------------------------
    def f_to_idx_or_fhat(self, f: torch.Tensor, to_fhat: bool) -> list[torch.Tensor]:
        """Per scale: the cumulative f_hat (B,C,h,w) after that scale if to_fhat, else its codes (B, pn*pn)."""
        self._check_latent(f)
        B, C, H, W = f.shape
        f_rest = f.detach().clone()
        f_hat = torch.zeros_like(f_rest)
        out: list[torch.Tensor] = []
        for si, pn in enumerate(self.patch_nums):
            idx_N = self._scale_codes(f_rest, si)
            h = self._codes_to_h(idx_N.view(B, pn, pn), si, H, W)
            f_hat.add_(h)
            f_rest.sub_(h)
            out.append(f_hat.clone() if to_fhat else idx_N.reshape(B, pn * pn))
        return out

    def embed_to_fhat(self, ms_h: Sequence[torch.Tensor], all_to_max_scale: bool = True, last_one: bool = False):
        """Accumulate per-scale code embeddings ms_h[si] (B,C,pn,pn) into f_hat (list per scale, or the last one).

        all_to_max_scale=True is the real path (every scale upsampled to the latent size before Phi).
        False is the official experimental path: f_hat is carried at each scale's own size (bicubic between scales).
        """
        B, S, last = ms_h[0].shape[0], self.num_scales, self.patch_nums[-1]
        out: list[torch.Tensor] = []
        if all_to_max_scale:
            f_hat = ms_h[0].new_zeros(B, self.Cvae, last, last, dtype=torch.float32)
            for si in range(S):
                h = ms_h[si]
                if si != S - 1:
                    h = F.interpolate(h, size=(last, last), mode="bicubic")
                f_hat.add_(self.phi(si)(h))
                out.append(f_hat.clone())
        else:
            pn0 = self.patch_nums[0]
            f_hat = ms_h[0].new_zeros(B, self.Cvae, pn0, pn0, dtype=torch.float32)
            for si, pn in enumerate(self.patch_nums):
                f_hat = F.interpolate(f_hat, size=(pn, pn), mode="bicubic")
                f_hat.add_(self.phi(si)(ms_h[si]))
                out.append(f_hat)
        return out[-1] if last_one else out

    def idx_to_var_input(self, idx_list_Bl: Sequence[torch.Tensor]) -> torch.Tensor:
        """Teacher-forcing input of the VAR transformer: (B, L - pn0^2, Cvae).

        For each scale si < S-1, f_hat after scales 0..si, area-downsampled to the next scale's side and flattened
        row-major; the concatenation is what the transformer sees when predicting scales 1..S-1.
        """
        B, C, S, last = idx_list_Bl[0].shape[0], self.Cvae, self.num_scales, self.patch_nums[-1]
        f_hat = idx_list_Bl[0].new_zeros(B, C, last, last, dtype=torch.float32)
        next_inputs = []
        for si in range(S - 1):
            pn, pn_next = self.patch_nums[si], self.patch_nums[si + 1]
            h = self.embedding(idx_list_Bl[si].reshape(B, pn * pn)).transpose(1, 2).reshape(B, C, pn, pn)
            f_hat.add_(self.phi(si)(F.interpolate(h, size=(last, last), mode="bicubic")))
            next_inputs.append(F.interpolate(f_hat, size=(pn_next, pn_next), mode="area").view(B, C, -1).transpose(1, 2))
        return torch.cat(next_inputs, dim=1)

    def next_ar_input(self, si: int, f_hat: torch.Tensor, h_BChw: torch.Tensor):
        """One VAR sampling step: add scale si's embedded codes h (B,C,pn,pn) to f_hat (in place).

        Returns (f_hat, next token map): f_hat area-downsampled to scale si+1, or f_hat itself at the last scale.
        """
        S, last = self.num_scales, self.patch_nums[-1]
        if si != S - 1:
            f_hat.add_(self.phi(si)(F.interpolate(h_BChw, size=(last, last), mode="bicubic")))
            pn_next = self.patch_nums[si + 1]
            return f_hat, F.interpolate(f_hat, size=(pn_next, pn_next), mode="area")
        f_hat.add_(self.phi(si)(h_BChw))
        return f_hat, f_hat
