"""The Inception-V3 feature extractor of the FID / IS protocol, loaded from a local file only.

We use torch-fidelity's `FeatureExtractorInceptionV3`: a port of TensorFlow's `inception-2015-12-05` graph
(the one ADM's evaluator and the original FID code run), with the TF1 bilinear resize to 299x299 and the
`(x - 128) / 128` input scaling. Features per image:

- `pool`    pool3, 2048-d (or another layer, `fid_layer`): FID and precision / recall.
- `logits`  the 1008 unbiased logits (pool3 @ W, no bias): Inception Score, as both reference evaluators do.
- `spatial` sFID features as in ADM's evaluator: the first 7 channels of `mixed_6/conv` (torch-fidelity's
            `Mixed_6d.branch1x1`, after its ReLU), 17 x 17 x 7 flattened in TensorFlow's H, W, C order = 2023-d,
            so statistics match ADM reference batches' `mu_s` / `sigma_s`.

The weights are never downloaded: pass a path or set VISION_AR_INCEPTION_WEIGHTS. They are read with
`torch.load(weights_only=True)` (or safetensors) and handed to torch-fidelity through an in-memory buffer, so
torch-fidelity's own full-pickle load never touches the user's file.
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..errors import CheckpointError, ConfigError, MissingFileError
from .images import ImageSource, file_sha256

ENV_WEIGHTS = "VISION_AR_INCEPTION_WEIGHTS"
WEIGHTS_NAME = "weights-inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/" + WEIGHTS_NAME
FID_LAYERS = ("64", "192", "768", "2048")
SPATIAL_CHANNELS = 7  # ADM: spatial[..., :7]


# ----------------------------------------------------------------------------------------------------
# Weights
# ----------------------------------------------------------------------------------------------------
def resolve_inception_weights(path: str | os.PathLike | None = None) -> Path:
    """The Inception weights file from the argument, else from VISION_AR_INCEPTION_WEIGHTS; else a clear error."""
    chosen = path if path else os.environ.get(ENV_WEIGHTS)
    if not chosen:
        raise MissingFileError(
            "FID / IS / precision-recall need the Inception-V3 weights (torch-fidelity's port of TensorFlow's inception-2015-12-05). "
            f"Download {WEIGHTS_NAME} once from {WEIGHTS_URL} and pass --inception-weights PATH "
            f"(or set {ENV_WEIGHTS}=PATH). Nothing is downloaded at run time."
        )
    p = Path(chosen).expanduser()
    if not p.is_file():
        origin = "--inception-weights" if path else ENV_WEIGHTS
        raise MissingFileError(f"Inception weights file {p} (from {origin}) does not exist. Download "
                               f"{WEIGHTS_NAME} from {WEIGHTS_URL} and point {origin} at it.")
    return p


def _read_state_dict(path: Path) -> dict:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path))
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"cannot read Inception weights {path}: {e}. Expected torch-fidelity's "
                              f"{WEIGHTS_NAME} (a plain state_dict).") from e
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{path} is not a state_dict of tensors; expected torch-fidelity's {WEIGHTS_NAME}")
    return sd


def build_torch_fidelity_inception(weights: str | os.PathLike, features: list[str]):
    """torch-fidelity's FeatureExtractorInceptionV3 with our safely-read weights (strict key check)."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    sd = _read_state_dict(Path(weights))
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    try:
        return FeatureExtractorInceptionV3("inception-v3-compat", features, feature_extractor_weights_path=buf)
    except RuntimeError as e:  # load_state_dict(strict=True) lists missing / unexpected keys
        raise CheckpointError(f"{weights} does not fit torch-fidelity's InceptionV3: {e}") from e


def tf1_resize(images: torch.Tensor, size: int = 299) -> torch.Tensor:
    """The protocol's only resize: TensorFlow 1.x ResizeBilinear (align_corners=False), on float B,3,H,W."""
    from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

    return interpolate_bilinear_2d_like_tensorflow1x(images, size=(size, size), align_corners=False)


# ----------------------------------------------------------------------------------------------------
# Features
# ----------------------------------------------------------------------------------------------------
@dataclass
class Features:
    """Per-image features of one image set, float32 numpy arrays (N x D)."""

    pool: np.ndarray
    logits: Optional[np.ndarray] = None
    spatial: Optional[np.ndarray] = None

    def __len__(self) -> int:
        return self.pool.shape[0]


def check_finite(arr: np.ndarray, what: str) -> None:
    bad = ~np.isfinite(arr)
    if bad.any():
        rows = np.unique(np.nonzero(bad)[0])
        raise ConfigError(f"{what}: {len(rows)} images gave NaN/inf features (first indices {rows[:5].tolist()}); "
                          f"check those images (and the Inception weights) instead of dropping them")


class InceptionFeatures:
    """Callable: uint8 images B x 3 x H x W -> {'pool', 'logits', 'spatial'} float32 tensors."""

    def __init__(self, weights: str | os.PathLike | None = None, device: str | torch.device | None = None,
                 fid_layer: str = "2048", spatial: bool = True, batch_size: int = 64):
        if fid_layer not in FID_LAYERS:
            raise ConfigError(f"fid_layer must be one of {FID_LAYERS}, got {fid_layer!r}")
        self.weights_path = resolve_inception_weights(weights)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.fid_layer, self.batch_size = fid_layer, int(batch_size)
        self.with_spatial = spatial
        self._model = None  # built on first use: cached references and statistics files never need it
        self._weights_sha256 = None
        self._spatial = None

    @property
    def model(self):
        if self._model is None:
            model = build_torch_fidelity_inception(self.weights_path, [self.fid_layer, "logits_unbiased"])
            if self.with_spatial:
                model.Mixed_6d.branch1x1.register_forward_hook(self._keep_spatial)
            self._model = model.to(self.device)
        return self._model

    def _keep_spatial(self, module, inputs, output):
        # B x 192 x 17 x 17 -> first 7 channels, TF's H, W, C order, flattened to B x 2023.
        self._spatial = output[:, :SPATIAL_CHANNELS].permute(0, 2, 3, 1).reshape(output.shape[0], -1).float()

    @property
    def weights_sha256(self) -> str:
        if self._weights_sha256 is None:
            self._weights_sha256 = file_sha256(self.weights_path)
        return self._weights_sha256

    @property
    def tag(self) -> str:
        """Identifies what the features depend on (weights, layer), for cache keys and reports."""
        return f"inception-{self.weights_sha256[:12]}-pool{self.fid_layer}"

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor) -> dict:
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ConfigError(f"Inception expects uint8 images B x 3 x H x W, got {images.dtype} {tuple(images.shape)}")
        self._spatial = None
        pool, logits = self.model(images.to(self.device))
        out = {"pool": pool.float(), "logits": logits.float()}
        if self._spatial is not None:
            out["spatial"] = self._spatial
        return out

    def extract(self, source: ImageSource, limit: int | None = None, progress: bool = True) -> Features:
        """Features of the first `limit` images of `source` (all when None); fewer images than `limit` is an error."""
        n = len(source) if limit is None else int(limit)
        if n > len(source):
            raise ConfigError(f"{source.description} holds {len(source)} images but {n} were requested; "
                              f"generate more samples or lower the number")
        parts: dict[str, list[np.ndarray]] = {}
        from tqdm.auto import tqdm

        with tqdm(total=n, desc=f"inception {source.description}", unit="img", disable=not progress) as bar:
            for batch in source.batches(self.batch_size, limit=n):
                for k, v in self(batch).items():
                    parts.setdefault(k, []).append(v.cpu().numpy())
                bar.update(batch.shape[0])
        feats = {k: np.concatenate(v) for k, v in parts.items()}
        for k, v in feats.items():
            check_finite(v, f"{k} features of {source.description}")
        return Features(pool=feats["pool"], logits=feats.get("logits"), spatial=feats.get("spatial"))


# ----------------------------------------------------------------------------------------------------
# Random weights (tests, smoke runs without the real file)
# ----------------------------------------------------------------------------------------------------
def save_random_inception_weights(path: str | os.PathLike, seed: int = 0) -> Path:
    """Write a torch-fidelity InceptionV3 state_dict with random weights to `path` (never for real numbers).

    Convolutions get He-normal weights and BatchNorm identity statistics, so activations neither vanish nor
    explode through the 90-odd layers and the features are O(1), which keeps metric comparisons meaningful.
    """
    from torch import nn
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    from ..io import atomic_torch_save

    class _Skeleton(FeatureExtractorInceptionV3):  # the architecture without loading any weights
        def load_state_dict(self, *args, **kwargs):
            return None

    empty = io.BytesIO()
    torch.save({}, empty)
    empty.seek(0)
    model = _Skeleton("inception-v3-compat", ["2048"], feature_extractor_weights_path=empty)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / m.weight[0].numel()) ** 0.5)
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.fill_(1.0)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
                m.running_mean.zero_()
                m.running_var.fill_(1.0)
        model.fc.weight.copy_(torch.randn(model.fc.weight.shape, generator=g) * 0.5)
        model.fc.bias.copy_(torch.randn(model.fc.bias.shape, generator=g) * 0.1)  # IS uses unbiased logits
    state = {k: v.clone() for k, v in nn.Module.state_dict(model).items()}
    atomic_torch_save(state, path)
    return Path(path)
