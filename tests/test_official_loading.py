"""Every model class loads official weights one way: `Cls.from_official(path_or_state_dict, config, **overrides)`.

Official checkpoints are plain (or {'model': ...}-nested) state dicts, so a state_dict this project wrote with
`torch.save` stands in for one; the parity tests load the real official layouts from the fixtures.
"""
import pytest
import torch

from vision_ar.errors import CheckpointError, ConfigError
from vision_ar.io import atomic_torch_save
from vision_ar.models.next_scale import VAR
from vision_ar.models.next_token import GPT
from vision_ar.registry import create
from vision_ar.tokenizers.multiscale import MultiScaleVQVAE
from vision_ar.tokenizers.vq import VQModel

# class, a small preset of its family, a preset of another family
CASES = [(VQModel, "vq-fmnist", "var-fmnist"), (GPT, "gpt-fmnist", "vq-fmnist"),
         (VAR, "var-fmnist", "gpt-fmnist"), (MultiScaleVQVAE, "var-vqvae-fmnist", "var-fmnist")]


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("cls,preset,other", CASES, ids=[c[0].__name__ for c in CASES])
def test_from_official_takes_a_path_or_a_state_dict(tmp_path, cls, preset, other):
    torch.manual_seed(0)
    source = create(preset)
    path = tmp_path / "official.pth"
    atomic_torch_save({"model": source.state_dict()}, path)  # nested, as LlamaGen ships its files
    from_path = cls.from_official(path, preset)
    from_dict = cls.from_official(source.state_dict(), source.config)  # a config object instead of a preset
    assert type(from_path) is cls and not from_path.training
    assert _same_weights(from_path, source) and _same_weights(from_dict, source)

    with pytest.raises(ConfigError, match=f"not a {cls.__name__} preset"):
        cls.from_official(path, other)
    with pytest.raises(ConfigError, match="unknown .* fields"):
        cls.from_official(path, source.config, no_such_field=1)
    sd = dict(source.state_dict())
    sd.pop(next(iter(sd)))
    with pytest.raises(CheckpointError, match="missing keys"):
        cls.from_official(sd, preset)
