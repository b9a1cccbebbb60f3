"""Training tasks for the AR generators: teacher forcing with cross-entropy on cached tokenizer codes.

Batches come from `vision_ar.data.cached.CachedTokens`: (tokens (B, L) int64, labels (B,) int64), where a
multi-scale tokenizer's codes are the per-scale grids flattened row-major and concatenated coarse to fine.
Class dropout (the null class that CFG needs) happens inside each generator's forward, as in the official code.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class NextScaleTask:
    """VAR: the input of scale k is the upsampled, Phi-refined sum of scales < k (`idx_to_var_input`)."""

    def __init__(self, var: nn.Module, vae: nn.Module, label_smoothing: float = 0.0):
        self.model = var
        self.vae = vae.eval().requires_grad_(False)  # frozen; not part of the trained/EMA'd model
        self.patch_nums = tuple(vae.config.patch_nums)
        self.label_smoothing = label_smoothing

    def settings(self) -> dict:  # compared on resume
        return {"label_smoothing": self.label_smoothing, "patch_nums": list(self.patch_nums)}

    def logits(self, model, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: tokens (B, L) (the pyramid, coarse to fine) -> logits (B, L, V); logits[:, i]
        predicts tokens[:, i] from the class and the coarser scales. Also the editing class inference's scorer."""
        sizes = [p * p for p in self.patch_nums]
        idx_list = list(torch.split(tokens, sizes, dim=1))
        with torch.no_grad():
            x_in = self.vae.quantize.idx_to_var_input(idx_list)
        return model(labels, x_in)

    def loss(self, model, batch, step):
        tokens, labels = batch[0], batch[1]
        logits = self.logits(model, tokens, labels)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), tokens.flatten(), label_smoothing=self.label_smoothing)
        with torch.no_grad():
            acc = (logits.argmax(-1) == tokens).float().mean().item()
        return loss, {"token_acc": acc}


class NextTokenTask:
    """LlamaGen GPT: predict token t from the class token and tokens < t (raster order)."""

    def __init__(self, gpt: nn.Module, label_smoothing: float = 0.0):
        self.model = gpt
        self.label_smoothing = label_smoothing

    def settings(self) -> dict:  # compared on resume
        return {"label_smoothing": self.label_smoothing}

    def logits(self, model, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: tokens (B, L) in raster order -> logits (B, L, V); the class token + tokens[:-1] go in,
        so logits[:, i] predicts tokens[:, i]. Also the editing class inference's scorer."""
        logits, _ = model(tokens.flatten(1)[:, :-1], labels)
        return logits

    def loss(self, model, batch, step):
        tokens, labels = batch[0], batch[1]
        tokens = tokens.flatten(1)
        logits = self.logits(model, tokens, labels)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), tokens.flatten(), label_smoothing=self.label_smoothing)
        with torch.no_grad():
            acc = (logits.argmax(-1) == tokens).float().mean().item()
        return loss, {"token_acc": acc}
