import pytest
import torch
from torch import nn

from vision_ar.errors import CheckpointError, ConfigError
from vision_ar.io import atomic_torch_save, load_checkpoint, load_state_dict_strict
from vision_ar.registry import get_preset


def test_strict_load_lists_every_problem():
    m = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 4))
    sd = m.state_dict()
    sd.pop("0.bias")
    sd["extra.weight"] = torch.zeros(1)
    sd["1.weight"] = torch.zeros(5, 3)
    with pytest.raises(CheckpointError) as e:
        load_state_dict_strict(m, sd)
    msg = str(e.value)
    assert "0.bias" in msg and "extra.weight" in msg and "1.weight" in msg


def test_atomic_save_roundtrip_and_corrupt_file(tmp_path):
    p = tmp_path / "x.pt"
    atomic_torch_save({"a": torch.ones(2)}, p)
    assert torch.equal(load_checkpoint(p)["a"], torch.ones(2))
    assert [f.name for f in tmp_path.iterdir()] == ["x.pt"]  # no temporary left behind
    p.write_bytes(p.read_bytes()[:10])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(p)


def test_unknown_preset_lists_known():
    with pytest.raises(ConfigError, match="unknown preset"):
        get_preset("no-such-model")
