"""FlexTok tokenizer training on the one training loop: loss, REPA, exact resume (tiny configs)."""
import pytest
import torch
from safetensors.torch import load_file

from vision_ar.errors import ConfigError, MissingFileError
from vision_ar.tokenizers.flextok import FlexTok, flextok_fmnist
from vision_ar.train import TrainConfig, train
from vision_ar.train.flextok_task import FlexTokLossConfig, FlexTokTask

TINY = dict(enc_dim=32, enc_depth=1, dec_dim=32, dec_depth=2, head_dim=16, n_registers=4)
VQ_TOKENIZER = "vision_ar/weights/fmnist_gpt/tokenizer"  # a reconstruction-trained encoder, not the evaluation's


class Images(torch.utils.data.Dataset):
    def __init__(self, n=16):
        g = torch.Generator().manual_seed(0)
        self.x = torch.rand(n, 3, 32, 32, generator=g) * 2 - 1
        self.x = self.x.mean(1, keepdim=True).expand(-1, 3, -1, -1).contiguous()

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], 0


def _cfg(out, steps, **kw):
    return TrainConfig(out_dir=str(out), max_steps=steps, batch_size=4, lr=2e-3, log_every=1, ckpt_every=2,
                       progress=False, seed=3, ema_decay=0.9, **kw)


def test_trains_and_writes_a_loadable_tokenizer(tmp_path):
    torch.manual_seed(0)
    tok = flextok_fmnist(**TINY)
    result = train(FlexTokTask(tok), Images(), _cfg(tmp_path, 30))
    logs = [line for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    import json

    rf = [json.loads(x)["rf_loss"] for x in logs if "rf_loss" in x]
    assert sum(rf[-8:]) / 8 < sum(rf[:8]) / 8  # the flow loss goes down
    final = FlexTok.from_pretrained(tmp_path / "final")
    assert final.encode(Images()[0][0][None]).shape == (1, 4)
    assert result.step == 30


def test_exact_resume(tmp_path):
    """Stopped after 2 steps and started again (constant lr, so the shorter run is the same run so far)."""
    const = dict(lr_schedule="constant")
    torch.manual_seed(0)
    a = train(FlexTokTask(flextok_fmnist(**TINY)), Images(), _cfg(tmp_path / "a", 4, **const))
    torch.manual_seed(0)
    train(FlexTokTask(flextok_fmnist(**TINY)), Images(), _cfg(tmp_path / "b", 2, **const))
    torch.manual_seed(123)  # the resumed run restores every RNG (draws of t, noise, k, null) from the checkpoint
    b = train(FlexTokTask(flextok_fmnist(**TINY)), Images(), _cfg(tmp_path / "b", 4, **const))
    for k, v in a.model.state_dict().items():
        assert torch.equal(v, b.model.state_dict()[k]), k


def test_repa_trains_a_projector_that_is_not_saved(tmp_path):
    torch.manual_seed(0)
    cfg = FlexTokLossConfig(repa_weight=0.5, repa_network="vq-encoder", repa_weights=VQ_TOKENIZER, repa_layer=1)
    task = FlexTokTask(flextok_fmnist(**TINY), cfg)
    result = train(task, Images(), _cfg(tmp_path, 2))
    assert "repa_loss" in result.last_log and 0 <= result.last_log["repa_loss"] <= 2
    assert any(k.startswith("projector.") for k in result.model.state_dict())
    saved = load_file(str(tmp_path / "final" / "model.safetensors"))
    assert saved and not any("projector" in k for k in saved)
    FlexTok.from_pretrained(tmp_path / "final")


def test_repa_errors():
    with pytest.raises(ConfigError, match="repa_weights=PATH"):
        FlexTokTask(flextok_fmnist(**TINY), FlexTokLossConfig(repa_weight=1.0))
    with pytest.raises(ConfigError, match="repa_layer"):
        FlexTokTask(flextok_fmnist(**TINY), FlexTokLossConfig(repa_weight=1.0, repa_weights=VQ_TOKENIZER,
                                                               repa_layer=5))
    with pytest.raises(ConfigError, match="unknown REPA feature network"):
        FlexTokTask(flextok_fmnist(**TINY), FlexTokLossConfig(repa_weight=1.0, repa_network="dino",
                                                               repa_weights=VQ_TOKENIZER))
    # the evaluation classifier's features are what the Fashion-MNIST metrics measure: never a training target
    with pytest.raises(ConfigError, match="refused"):
        FlexTokTask(flextok_fmnist(**TINY), FlexTokLossConfig(repa_weight=1.0, repa_network="fmnist-classifier",
                                                               repa_weights="vision_ar/weights/fmnist_classifier"))
    with pytest.raises(MissingFileError, match="VQ tokenizer folder"):
        FlexTokTask(flextok_fmnist(**TINY), FlexTokLossConfig(repa_weight=1.0, repa_weights="no/such/folder"))
