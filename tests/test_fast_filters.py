"""top-k + top-p without a full sort (sampling/fast_filters.py) gives bitwise the full-sort result of both
official conventions, and steps aside where it could not."""
from __future__ import annotations

import pytest
import torch

from vision_ar.sampling.fast_filters import top_k_top_p_sortless_
from vision_ar.sampling.logits import VAR_SAMPLING, top_k_mask_, top_p_mask_

NEG_INF = float("-inf")


def full_sort_hf(x: torch.Tensor, k: int, p: float) -> torch.Tensor:
    """HF `top_k_top_p_filtering` written out with its full sort (the LlamaGen convention)."""
    x = x.masked_fill(x < torch.topk(x, k)[0][..., -1:], NEG_INF)
    sorted_x, order = torch.sort(x, descending=True)
    crossed = torch.cumsum(torch.softmax(sorted_x, -1), -1) > p
    crossed = torch.cat([torch.zeros_like(crossed[..., :1]), crossed[..., :-1]], -1)
    return x.masked_fill(crossed.scatter(-1, order, crossed), NEG_INF)


def cases(n=120, seed=0):
    g = torch.Generator().manual_seed(seed)
    for i in range(n):
        V = int(torch.randint(8, 2000, (), generator=g))
        rows = int(torch.randint(1, 5, (), generator=g))
        x = torch.randn(rows, V, generator=g) * (0.1 + 5 * torch.rand((), generator=g))
        k = int(torch.randint(1, V, (), generator=g))
        p = float(torch.rand((), generator=g))
        yield x, k, p


@pytest.mark.parametrize("rule", ["var", "hf"])
def test_same_bits_as_the_full_sort(rule):
    applied = 0
    for x, k, p in cases():
        ref = top_p_mask_(top_k_mask_(x.clone(), k), p, VAR_SAMPLING) if rule == "var" else full_sort_hf(x, k, p)
        got = x.clone()
        if top_k_top_p_sortless_(got, k, p, rule):
            applied += 1
            assert torch.equal(got, ref), (rule, x.shape, k, p)
    assert applied >= 100  # random logits have no ties at the k-th value: the shortcut nearly always applies


def test_works_on_non_contiguous_rows():
    x = torch.randn(50, 3)
    ref = top_p_mask_(top_k_mask_(x.t().contiguous(), 10), 0.7, VAR_SAMPLING)
    got = x.t()  # (3, 50) view, not contiguous
    assert top_k_top_p_sortless_(got, 10, 0.7, "var")
    assert torch.equal(got, ref)


def test_steps_aside_where_it_could_differ():
    x = torch.tensor([[3.0, 2.0, 2.0, 1.0, 0.0]])  # k=2: ties with the 2nd value keep three entries
    assert not top_k_top_p_sortless_(x.clone(), 2, 0.5, "var")
    assert not top_k_top_p_sortless_(x.clone(), 0, 0.5, "hf")      # no top-k
    assert not top_k_top_p_sortless_(x.clone(), 2, 1.0, "hf")      # top-p off (HF: 1)
    assert not top_k_top_p_sortless_(x.clone(), 2, 0.0, "var")     # top-p off (VAR: 0)
    assert not top_k_top_p_sortless_(x.clone(), 5, 0.5, "var")     # k >= V keeps everything
    y = torch.tensor([[1.0, NEG_INF, NEG_INF, 0.0]])               # fewer than k finite entries
    assert not top_k_top_p_sortless_(y.clone(), 3, 0.5, "hf")
    with pytest.raises(ValueError, match="rule"):
        top_k_top_p_sortless_(x.clone(), 2, 0.5, "nucleus")
