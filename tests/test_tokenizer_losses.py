"""Optional tokenizer losses: LPIPS from local weight files (never downloaded) and the PatchGAN phase."""
import pytest
import torch

from vision_ar.errors import ConfigError, MissingFileError
from vision_ar.registry import create
from vision_ar.train.tokenizer_losses import LPIPS, PatchDiscriminator, hinge_d_loss
from vision_ar.train.task import frozen
from vision_ar.train.tokenizer_task import TokenizerLossConfig, TokenizerTask


@pytest.fixture(scope="module")
def lpips_files(tmp_path_factory):
    from torchvision.models import vgg16

    d = tmp_path_factory.mktemp("lpips")
    torch.manual_seed(0)
    torch.save(vgg16(weights=None).state_dict(), d / "vgg16.pth")
    torch.save({f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) for i, c in enumerate((64, 128, 256, 512, 512))},
               d / "vgg.pth")
    return d / "vgg16.pth", d / "vgg.pth"


def test_lpips_loads_local_weights_and_measures_distance(lpips_files):
    m = LPIPS.from_local(*map(str, lpips_files))
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    same, other = m(x, x), m(x, torch.rand(2, 3, 32, 32) * 2 - 1)
    assert same.shape == (2,) and torch.allclose(same, torch.zeros(2)) and (other > 0).all()
    assert not any(p.requires_grad for p in m.parameters())


def test_lpips_errors_name_the_missing_file(tmp_path, lpips_files):
    with pytest.raises(MissingFileError, match="nothing is downloaded"):
        LPIPS.from_local(str(tmp_path / "nope.pth"), str(lpips_files[1]))
    torch.save({"wrong": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(ConfigError, match="lin0.model.1.weight"):
        LPIPS.from_local(str(lpips_files[0]), str(tmp_path / "bad.pth"))
    with pytest.raises(ConfigError, match="--lpips-vgg"):
        TokenizerTask(create("vq-fmnist"), TokenizerLossConfig(lpips_weight=1.0))


def test_task_with_lpips_and_gan_trains_both_players(lpips_files):
    torch.manual_seed(0)
    tok = create("var-vqvae-fmnist").train()
    cfg = TokenizerLossConfig(lpips_weight=0.5, lpips_vgg_path=str(lpips_files[0]),
                              lpips_lin_path=str(lpips_files[1]), disc_weight=0.1, disc_start=1)
    task = TokenizerTask(tok, cfg)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    loss0, m0 = task.loss(tok, (x, torch.zeros(2)), step=0)
    assert "lpips" in m0 and "g_adv" not in m0  # before disc_start: no adversarial term
    assert task.disc_loss(tok, task.discriminator, (x,), step=0) == (None, {})
    with frozen(task.discriminator):  # as the training loop runs the generator's step
        loss1, m1 = task.loss(tok, (x, torch.zeros(2)), step=1)
        # the task leaves the freezing to the loop: it does not turn D's gradients back on inside the block
        assert not any(p.requires_grad for p in task.discriminator.parameters())
    loss1.backward()
    assert "g_adv" in m1 and tok.encoder.conv_in.weight.grad is not None
    assert all(p.grad is None for p in task.discriminator.parameters())  # the generator step leaves D alone
    d_loss, md = task.disc_loss(tok, task.discriminator, (x,), step=1)
    d_loss.backward()
    assert md["d_loss"] > 0 and task.discriminator.net[0].weight.grad is not None


def test_hinge_loss_and_patch_logits():
    d = PatchDiscriminator(n_layers=2)
    assert d(torch.rand(2, 3, 32, 32)).shape[:2] == (2, 1)
    assert hinge_d_loss(torch.full((4,), 2.0), torch.full((4,), -2.0)) == 0
