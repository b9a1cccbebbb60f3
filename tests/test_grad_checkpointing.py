"""Activation checkpointing changes memory, never the gradients."""
import pytest
import torch

from vision_ar.registry import create


@pytest.mark.parametrize("name, overrides", [
    ("var-fmnist", dict(depth=2, embed_dim=64, num_heads=2, cond_drop_rate=0.0)),
    ("gpt-fmnist", dict(n_layer=2, dim=64, n_head=2, class_dropout_prob=0.0)),
])
def test_same_gradients_with_and_without_checkpointing(name, overrides):
    torch.manual_seed(0)
    model = create(name, **overrides).train()
    labels = torch.tensor([1, 3])
    if name.startswith("var"):
        x = torch.randn(2, model.config.L - 1, model.config.Cvae)
        run = lambda: model(labels, x).square().mean()  # noqa: E731
    else:
        idx = torch.randint(0, model.config.vocab_size, (2, 10))
        run = lambda: model(idx, labels)[0].square().mean()  # noqa: E731
    run().backward()
    ref = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    model.zero_grad()
    model.set_grad_checkpointing(True)
    run().backward()
    got = [p.grad for p in model.parameters() if p.grad is not None]
    assert len(ref) == len(got) and all(torch.allclose(a, b, atol=1e-6) for a, b in zip(ref, got))
