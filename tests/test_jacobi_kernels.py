"""The fused accept / residual-resample step: torch reference semantics, and the Triton kernel against it.

The Triton kernel runs on CPU through Triton's interpreter (TRITON_INTERPRET=1), in a subprocess because the
variable must be set before triton builds the kernel.
"""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from scipy import stats as sps

from vision_ar.errors import ConfigError
from vision_ar.sampling.jacobi_kernels import (accept_resample, accept_resample_torch, random_accept_case,
                                               resolve_backend)


def test_reference_rule_by_hand():
    V = 4
    p = torch.tensor([[[0.1, 0.2, 0.3, 0.4], [0.25, 0.25, 0.25, 0.25]]])
    q = torch.tensor([[[0.0, 0.0, 1.0, 0.0], [0.25, 0.25, 0.25, 0.25]]])  # one-hot draft, then q == p
    x = torch.tensor([[2, 1]])
    w = torch.ones(1, V)
    # u = 0.29 < p(2)/q(2) = 0.3 -> accept; second draft has p == q -> always accepted
    a, r = accept_resample_torch(p, q, x, torch.tensor([2]), torch.tensor([[0.29, 0.99]]), w)
    assert a.tolist() == [2] and r.tolist() == [-1]
    # u = 0.31 -> reject the first draft; residual max(0, p - onehot(2)) = [0.1, 0.2, 0, 0.4] -> argmax with w = 1
    a, r = accept_resample_torch(p, q, x, torch.tensor([2]), torch.tensor([[0.31, 0.0]]), w)
    assert a.tolist() == [0] and r.tolist() == [3]
    # only one valid draft: the second slot is padding and never counted
    a, r = accept_resample_torch(p, q, x, torch.tensor([1]), torch.tensor([[0.0, 0.0]]), w)
    assert a.tolist() == [1] and r.tolist() == [-1]


def test_one_draft_step_commits_tokens_distributed_as_p():
    """Draft ~ q, then accept or resample: the committed token must follow p (speculative sampling)."""
    B, V = 20_000, 5
    g = torch.Generator().manual_seed(0)
    p = torch.tensor([0.05, 0.4, 0.3, 0.0, 0.25])
    q = torch.tensor([0.3, 0.1, 0.1, 0.4, 0.1])
    x = torch.multinomial(q.expand(B, V), 1, replacement=True, generator=g)
    u = torch.rand(B, 1, generator=g)
    w = torch.empty(B, V).exponential_(generator=g).reciprocal_()
    a, r = accept_resample_torch(p.expand(B, 1, V), q.expand(B, 1, V), x, torch.ones(B, dtype=torch.long), u, w)
    token = torch.where(a == 1, x[:, 0], r)
    counts = np.bincount(token.numpy(), minlength=V)
    assert counts[3] == 0
    keep = p.numpy() > 0
    assert sps.chisquare(counts[keep], p.numpy()[keep] * B).pvalue > 0.01


def test_backend_choice_and_errors():
    assert resolve_backend("auto", torch.device("cpu")) == "torch"
    with pytest.raises(ConfigError, match="backend"):
        resolve_backend("cuda-magic", torch.device("cpu"))
    p, q, x, n, u, w = random_accept_case(3, 2, 7, 0)
    a, r = accept_resample(p, q, x, n, u, w, backend="torch")
    assert a.shape == r.shape == (3,)


_TRITON_SCRIPT = textwrap.dedent("""
    from vision_ar.sampling.jacobi_kernels import triton_mismatches
    bad = triton_mismatches([(9, 5, 10), (4, 1, 333), (3, 3, 5000), (6, 15, 64)], "cpu", edge_cases=True)
    assert not bad, bad
    print("triton-ok")
""")


def test_triton_kernel_matches_reference_under_interpreter():
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1")
    out = subprocess.run([sys.executable, "-c", _TRITON_SCRIPT], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0 and "triton-ok" in out.stdout, out.stdout + out.stderr
