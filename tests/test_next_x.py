"""xAR beyond the official cell model: the five entity types on one mechanism, teacher forcing, the KV-cached
inference path, and the bad inputs of issue 9 (tiny configs, CPU)."""

import pytest
import torch

from vision_ar.errors import CheckpointError, ConfigError
from vision_ar.models.entities import EntityLayout, EntitySpec
from vision_ar.models.next_x import XAR, XARConfig
from vision_ar.sampling.flow import sample_flow

GRID = 8
SPECS = {
    "token": EntitySpec("token"),
    "cell": EntitySpec("cell", 4),
    "subsample": EntitySpec("subsample", 4),
    "scale": EntitySpec("scale"),
    "image": EntitySpec("image"),
}
# entities and tokens per entity on an 8x8 grid
EXPECTED = {"token": [1] * 64, "cell": [16] * 4, "subsample": [16] * 4, "scale": [1, 4, 16, 64], "image": [64]}


def tiny(entity: str, **overrides) -> XAR:
    spec = SPECS[entity]
    cfg = XARConfig(latent_channels=4, grid_size=GRID, num_classes=3, encoder_embed_dim=32, encoder_depth=1,
                    encoder_num_heads=2, decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2,
                    label_drop_prob=0.0, entity=spec.kind, entity_size=spec.size, scales=spec.scales)
    torch.manual_seed(0)
    model = XAR(cfg.replace(**overrides))
    with torch.no_grad():  # random biases/gains so that every path (incl. the zero-initialised scale context) matters
        for p in model.parameters():
            if p.ndim == 1 or p is getattr(model.context_proj, "weight", None):
                p.add_(0.1 * torch.randn_like(p))
    return model


# ----------------------------------------------------------------------------------------------------
# Layouts
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("entity", sorted(SPECS))
def test_layout_sizes_and_block_causal_mask(entity):
    lay = EntityLayout(SPECS[entity], (GRID, GRID))
    assert lay.entity_sizes == EXPECTED[entity]
    L = lay.seq_len
    mask = lay.attention_mask()
    assert mask.shape == (L, L)
    e = lay.entity_index
    allowed = mask == 0
    assert torch.equal(allowed, e[None, :] <= e[:, None])  # own and earlier entities, nothing later
    assert torch.isinf(mask[~allowed]).all() and (mask[~allowed] < 0).all()
    tf = lay.teacher_forcing_mask()
    assert tf.shape == (2 * L, 2 * L)
    assert torch.isinf(tf[:L, L:]).all()  # clean never sees noisy
    assert torch.equal(tf[L:, L:] == 0, e[None, :] == e[:, None])  # a noisy entity sees only itself ...
    assert torch.equal(tf[L:, :L] == 0, e[None, :] < e[:, None])   # ... and the clean entities before it


@pytest.mark.parametrize("entity", sorted(SPECS))
def test_sequence_round_trip(entity):
    lay = EntityLayout(SPECS[entity], (GRID, GRID))
    x = torch.randn(2, 3, GRID, GRID)
    seq = lay.to_sequence(x)
    assert seq.shape == (2, lay.seq_len, 3)
    torch.testing.assert_close(lay.from_sequence(seq), x)
    if lay.order is not None:
        assert sorted(lay.order.tolist()) == list(range(GRID * GRID))  # a permutation of the grid


def test_cell_and_subsample_groups():
    h = w = GRID
    cell = EntityLayout(EntitySpec("cell", 4), (h, w))
    first = cell.positions[: 16].long()
    assert set(map(tuple, first.tolist())) == {(r, c) for r in range(4) for c in range(4)}  # top-left block
    sub = EntityLayout(EntitySpec("subsample", 4), (h, w))
    first = sub.positions[: 16].long()
    assert set(map(tuple, first.tolist())) == {(r, c) for r in range(0, 8, 2) for c in range(0, 8, 2)}  # stride 2
    second = sub.positions[16: 32].long()
    assert set(map(tuple, second.tolist())) == {(r, c) for r in range(0, 8, 2) for c in range(1, 8, 2)}


def test_scale_layout_pyramid_and_positions():
    lay = EntityLayout(EntitySpec("scale"), (GRID, GRID))
    x = torch.randn(1, 2, GRID, GRID)
    parts = lay.split(lay.to_sequence(x))
    torch.testing.assert_close(parts[0][0, 0], x[0].mean(dim=(1, 2)))  # 1x1 scale = the mean latent
    assert lay.positions[0].tolist() == [3.5, 3.5]  # the centre of the whole grid
    ctx = lay.scale_context(lay.to_sequence(x))
    assert torch.equal(ctx[:, :1], torch.zeros_like(ctx[:, :1]))  # nothing before the first scale
    torch.testing.assert_close(ctx[:, 1:5], parts[0].expand(-1, 4, -1))  # 1x1 upsampled to 2x2


@pytest.mark.parametrize("kind", ["cell", "subsample"])
@pytest.mark.parametrize("size", [3, 5, 0])
def test_entity_size_that_does_not_tile(kind, size):
    with pytest.raises(ConfigError, match="does not tile the 8x8 latent grid.*Valid sizes: \\[1, 2, 4, 8\\]"):
        XARConfig(grid_size=8, encoder_embed_dim=32, decoder_embed_dim=32, encoder_num_heads=2,
                  decoder_num_heads=2, entity=kind, entity_size=size)


def test_bad_entity_settings():
    with pytest.raises(ConfigError, match="entity must be one of"):
        XARConfig(grid_size=8, entity="pixel")
    with pytest.raises(ConfigError, match="scales .* must increase strictly and end at the grid side 8"):
        XARConfig(grid_size=8, entity="scale", scales=(1, 2, 4))


# ----------------------------------------------------------------------------------------------------
# Training step for every entity type (+ teacher forcing)
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("noisy_context", [True, False])
@pytest.mark.parametrize("entity", sorted(SPECS))
def test_train_step(entity, noisy_context):
    model = tiny(entity, noisy_context=noisy_context, label_drop_prob=0.5).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, labels = torch.randn(4, 4, GRID, GRID), torch.tensor([0, 1, 2, 0])
    g = torch.Generator().manual_seed(1)
    out = model(x, labels, generator=g)
    assert out.prediction.shape == out.target.shape == (4, model.layout.seq_len, 4)
    assert out.t_int.shape == (model.layout.num_entities * 4,)
    out.loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(gr is not None and torch.isfinite(gr).all() for gr in grads)
    opt.step()
    # same generator seed, same draws, same loss (one random-number story)
    model.eval()
    a = model(x, labels, generator=torch.Generator().manual_seed(3)).loss
    b = model(x, labels, generator=torch.Generator().manual_seed(3)).loss
    assert torch.equal(a, b)


def test_teacher_forcing_context_is_clean():
    """With NCL off, the prediction of entity k depends on the clean earlier entities, not on their noise."""
    model = tiny("cell", noisy_context=False).eval()
    x, labels = torch.randn(2, 4, GRID, GRID), torch.tensor([0, 1])
    d = model.draw(2, generator=torch.Generator().manual_seed(0))
    out = model(x, labels, draws=d)
    d.noise[0] = torch.randn_like(d.noise[0])  # other noise on entity 0 only
    out2 = model(x, labels, draws=d)
    n0 = model.layout.entity_sizes[0]
    torch.testing.assert_close(out.prediction[:, n0:], out2.prediction[:, n0:])
    assert not torch.allclose(out.prediction[:, :n0], out2.prediction[:, :n0])
    # NCL on: the later entities see the (other) noisy entity 0
    ncl = tiny("cell").eval()
    d = ncl.draw(2, generator=torch.Generator().manual_seed(0))
    a = ncl(x, labels, draws=d).prediction
    d.noise[0] = torch.randn_like(d.noise[0])
    assert not torch.allclose(a[:, n0:], ncl(x, labels, draws=d).prediction[:, n0:])


# ----------------------------------------------------------------------------------------------------
# Inference: KV-cached steps equal the full block-causal forward; sampling runs for every type
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("entity", sorted(SPECS))
@torch.no_grad()
def test_cached_velocity_equals_full_forward(entity):
    model = tiny(entity).eval()
    lay = model.layout
    K = lay.num_entities
    k = min(K - 1, 2)  # an entity with at least one (or two) committed entities before it
    R, C = 2, 4
    labels = torch.tensor([1, 3])  # 3 = null class
    clean = [torch.randn(R, n, C) for n in lay.entity_sizes[:k]]
    n_k = lay.entity_sizes[k]
    x_k, t = torch.randn(R, n_k, C), torch.full((R,), 0.6)
    # full forward over entities 0..k: clean ones at t = 0, the noisy one at t
    end = lay.bounds[k][1]
    seq = torch.cat(clean + [x_k], dim=1)
    t_int = torch.cat([torch.zeros(k * R, dtype=torch.long), model.timestep_index(t)])
    groups = lay.entity_index[:end]
    ctx = None
    if lay.uses_scale_context:
        full = torch.cat([seq, torch.zeros(R, lay.seq_len - end, C)], dim=1)
        ctx = lay.scale_context(full)[:, :end]
    want, _ = model.network(seq, model.condition(labels, t_int), groups, k + 1, torch.arange(end),
                            model.mask[:, :, :end, :end], ctx)
    want = want[:, -n_k:]
    with model.inference(R):
        for j in range(k):  # commit entities 0..k-1 (the velocities of these calls are not used)
            model.entity_velocity(torch.randn(R, lay.entity_sizes[j], C), labels, t, j, clean, commit=True)
        got_first = model.entity_velocity(x_k, labels, t, k, clean, commit=True)
        got_later = model.entity_velocity(x_k, labels, t, k, clean, commit=False)
    torch.testing.assert_close(got_first, want, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(got_later, want, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("method,steps", [("euler_maruyama", 2), ("euler", 1)])
@pytest.mark.parametrize("entity", sorted(SPECS))
def test_sampling_runs(entity, method, steps):
    model = tiny(entity).eval()
    labels = torch.tensor([0, 2])
    calls = []
    a = sample_flow(model, labels, num_steps=steps, guidance_scale=2.0, method=method,
                    generator=torch.Generator().manual_seed(5), on_call=calls.append)
    assert a.shape == (2, 4, GRID, GRID) and torch.isfinite(a).all()
    assert len(calls) == model.layout.num_entities * steps
    assert all(c["x"].shape[0] == 4 for c in calls)  # cond + uncond rows
    b = sample_flow(model, labels, num_steps=steps, guidance_scale=2.0, method=method,
                    generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


def test_no_guidance_runs_conditional_rows_only():
    model = tiny("cell").eval()
    calls = []
    sample_flow(model, torch.tensor([0, 1]), num_steps=2, guidance_scale=1.0,
                generator=torch.Generator().manual_seed(0), on_call=calls.append)
    assert all(c["x"].shape[0] == 2 for c in calls)


def test_out_of_order_entity_calls_are_refused():
    model = tiny("cell").eval()
    with model.inference(2), pytest.raises(ConfigError, match="out of order"):
        model.entity_velocity(torch.randn(2, 16, 4), torch.tensor([0, 1]), torch.ones(2), 1, [], commit=True)
    with pytest.raises(ConfigError, match="start_inference"):
        model.entity_velocity(torch.randn(2, 16, 4), torch.tensor([0, 1]), torch.ones(2), 0, [], commit=True)


# ----------------------------------------------------------------------------------------------------
# Bad input (issue 9)
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("steps", [0, -1, 1.5])
def test_flow_steps_below_one(steps):
    model = tiny("cell").eval()
    with pytest.raises(ConfigError, match="num_steps .* must be an integer >= 1"):
        sample_flow(model, torch.tensor([0]), num_steps=steps, method="euler")


def test_sde_needs_two_steps():
    with pytest.raises(ConfigError, match="Euler-Maruyama sampler needs num_steps >= 2"):
        sample_flow(tiny("cell").eval(), torch.tensor([0]), num_steps=1)


def test_latent_with_wrong_channel_count():
    model = tiny("cell")
    with pytest.raises(ConfigError, match="latents have 16 channels but this generator models 4-channel"):
        model(torch.randn(2, 16, GRID, GRID), torch.tensor([0, 1]))
    with pytest.raises(ConfigError, match="grid is 8x8"):
        model(torch.randn(2, 4, 16, 16), torch.tensor([0, 1]))


def test_class_labels_out_of_range():
    with pytest.raises(ConfigError, match="out of range"):
        sample_flow(tiny("cell").eval(), torch.tensor([0, 7]), num_steps=2)


@pytest.mark.parametrize("trained,asked", [("cell", "token"), ("subsample", "cell"), ("cell", "subsample"),
                                           ("scale", "cell"), ("token", "image")])
def test_checkpoint_of_another_entity_type(tmp_path, trained, asked):
    src = tiny(trained)
    src.save_pretrained(tmp_path / "m")
    dst = tiny(asked)
    from vision_ar.io import load_checkpoint

    sd = load_checkpoint(tmp_path / "m" / "model.safetensors")
    with pytest.raises(CheckpointError, match=f"trained with entity {trained}.*built for {asked}"):
        dst.load_checked_state_dict(sd, what="ckpt")
    # and through a folder whose config.json was edited to another entity type
    import json

    cfg_path = tmp_path / "m" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.update(entity=SPECS[asked].kind, entity_size=SPECS[asked].size)
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=f"trained with entity {trained}"):
        XAR.from_pretrained(tmp_path / "m")


def test_save_load_round_trip(tmp_path):
    model = tiny("subsample").eval()
    model.save_pretrained(tmp_path / "m")
    back = XAR.from_pretrained(tmp_path / "m")
    x, labels = torch.randn(2, 4, GRID, GRID), torch.tensor([0, 1])
    d = model.draw(2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(model(x, labels, draws=d).loss, back(x, labels, draws=d).loss)


def test_grad_checkpointing_keeps_the_gradients():
    model = tiny("cell").train()
    x, labels = torch.randn(2, 4, GRID, GRID), torch.tensor([0, 1])
    d = model.draw(2, generator=torch.Generator().manual_seed(0))
    model(x, labels, draws=d).loss.backward()
    want = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.set_grad_checkpointing(True)
    model(x, labels, draws=d).loss.backward()
    for w, p in zip(want, model.parameters()):
        torch.testing.assert_close(p.grad, w, atol=1e-6, rtol=1e-5)
