"""top-k followed by top-p without sorting the whole vocabulary.

The nucleus filter sorts every row of logits (V entries) each step. After a top-k filter only k entries are
finite and the rest are -inf, so the full sort is known without doing it: the k survivors in order (one partial
`topk`, which the top-k filter needs anyway), then the -inf entries, which carry zero probability. This function
builds that sorted row (length V, the survivors where the full sort puts them), runs the nucleus rule's
softmax and cumulative sum over it exactly as the full-sort code does, and writes the result back through the
survivors' indices: the same numbers in the same order, so the same tokens for the same seed (the parity tests
run through it), at O(V log k) instead of O(V log V) per row.

It does not apply (returns False, logits untouched) when it could differ from the full sort:
  * no top-k (k = 0 or k >= V) or no top-p;
  * a row where ties with the k-th value keep more than k entries (or where fewer than k were finite).
Entries with EQUAL logits inside the nucleus may be ordered differently by `topk` and `sort` (neither is
stable); the survivors and their probabilities are the same, only which of two equal tokens sits first can
differ, as it can between two torch versions of the full sort.

Rules (the two official conventions):
  "var": ascending order, drop the entries whose cumulative mass is <= 1 - top_p, never the largest (VAR)
  "hf":  descending order, drop the entries after the cumulative mass exceeds top_p, shifted right by one so
         the entry crossing it stays (Hugging Face `top_k_top_p_filtering`, LlamaGen)
"""
from __future__ import annotations

import torch

NEG_INF = float("-inf")
RULES = ("var", "hf")


def top_k_top_p_sortless_(logits: torch.Tensor, top_k: int, top_p: float, rule: str) -> bool:
    """Apply top-k then top-p (rule "var" or "hf") in place on logits (..., V); False = not applied."""
    if rule not in RULES:
        raise ValueError(f"unknown nucleus rule {rule!r}; one of {RULES}")
    V = logits.shape[-1]
    top_p_on = 0.0 < top_p if rule == "var" else top_p < 1.0
    if not (0 < top_k < V and top_p_on) or logits.numel() == 0:
        return False
    flat = logits.reshape(-1, V)
    vals, idx = flat.topk(int(top_k), dim=-1, largest=True, sorted=True)  # descending
    kth = vals[:, -1:]
    keep = flat >= kth
    if not bool((keep.sum(-1) == top_k).all()) or not bool(torch.isfinite(kth).all()):
        return False  # ties at the k-th value (more than k survive) or -inf among the top k: full sort
    row = flat.new_full(flat.shape, NEG_INF)
    if rule == "var":
        row[:, V - top_k:] = vals.flip(-1)  # ascending: the -inf entries first, the survivors last
        remove_sorted = row.softmax(dim=-1).cumsum_(dim=-1)[:, V - top_k:] <= (1 - top_p)
        remove_sorted[:, -1] = False  # the most likely token always survives
        remove = remove_sorted.flip(-1)  # back to the descending order of `idx`
    else:
        row[:, :top_k] = vals
        crossed = row.softmax(dim=-1).cumsum(dim=-1)[:, :top_k] > top_p
        remove = torch.zeros_like(crossed)
        remove[:, 1:] = crossed[:, :-1]  # shifted right: the token that crosses the threshold stays
    flat.masked_fill_(~keep, NEG_INF)
    flat.scatter_(-1, idx, vals.masked_fill(remove, NEG_INF))
    if flat.data_ptr() != logits.data_ptr():  # reshape copied (non-contiguous input)
        logits.copy_(flat.view_as(logits))
    return True
