"""scripts/ship_pipeline.py --half-weights: parameters stored in float16, buffers and metadata untouched, and the
file loads back into the float32 model."""
import importlib.util
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from vision_ar.io import load_state_dict_strict

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "ship_pipeline.py"


def _script():
    spec = importlib.util.spec_from_file_location("ship_pipeline", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 3)
        self.register_buffer("freqs", torch.tensor([1.0, 1e-6, 7e4]))  # fp16 would round / overflow these
        self.register_buffer("steps", torch.arange(3))


def test_parameters_become_half_buffers_and_metadata_stay(tmp_path):
    torch.manual_seed(0)
    model = Tiny()
    path = tmp_path / "model.safetensors"
    save_file(model.state_dict(), str(path), metadata={"config": "{\"a\": 1}"})
    _script().store_parameters_in_half(model, path)
    with safe_open(str(path), "pt") as f:
        assert f.metadata() == {"config": "{\"a\": 1}"}
        dtypes = {k: f.get_tensor(k).dtype for k in f.keys()}
        freqs = f.get_tensor("freqs")
    assert dtypes == {"lin.weight": torch.float16, "lin.bias": torch.float16, "freqs": torch.float32,
                      "steps": torch.int64}
    assert torch.equal(freqs, model.freqs)
    fresh = Tiny()
    from safetensors.torch import load_file

    load_state_dict_strict(fresh, load_file(str(path)))
    assert fresh.lin.weight.dtype == torch.float32
    assert torch.allclose(fresh.lin.weight, model.lin.weight, atol=1e-3)
