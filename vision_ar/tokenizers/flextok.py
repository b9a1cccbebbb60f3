"""FlexTok: images <-> ordered 1D token sequences of any length 1..N (Bachmann et al. 2025, apple/ml-flextok).

    images (B,3,H,W) ──VAE──▶ latents (B,C,h,w) ──ViT encoder [patches | N registers]──▶ registers (B,N,d)
        ──FSQ──▶ tokens (B,N)                        (registers attend causally: token k only sees tokens < k,
                                                      so every prefix is a summary of the image by itself)
    tokens[:, :k] ──rectified-flow ViT decoder, conditioned in-context on the k kept registers──▶ latents ──VAE──▶ images

The decoder predicts the velocity v = noise - latents of x_t = t*noise + (1-t)*latents; decoding integrates it
from t=1 to 0 with `sampling.rectified_flow.rf_sample` (Euler, CFG or APG, a constant or t-dependent scale).
Registers past k are replaced by a learned mask token (nested dropout at training time teaches every k); the
unconditional pass of guidance replaces all of them by the null condition.

Configuration is the official hydra config (see flextok_config.py): an official checkpoint builds its model from
its own safetensors metadata and loads with its official key names; new models (the presets) write the same
layout. The VAE is diffusers' AutoencoderKL (frozen), or `IdentityVAE` (pixels are the latents) for small images.

Map: training draws | FlexTok (encode / decode / training forward / files) | presets. The VAEs are in
flextok_vae.py, the encoder and decoder modules in flextok_modules.py, the ViT pieces in flextok_vit.py.
"""
from __future__ import annotations

import json
import os
import tempfile
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError, ConfigError, MissingFileError
from ..io import CONFIG_NAME, WEIGHTS_NAME, check_writable, load_state_dict_strict, plain_file_mode
from ..registry import register_preset
from ..tokens import TokenLayout, image_hw
from .flextok_config import (TOP_LEVEL_KEYS, VAE_BASE_CFG, FlexTokSpec, VAESpec, config_from_metadata,
                             flextok_config, parse_flextok_config, powers_of_two, unwrap_hub_config)
from .flextok_modules import FlexTokDecoder, FlexTokEncoder
from .flextok_vae import build_vae
from .fsq import FSQ

VAE_FOLDER_CONFIG = "config.json"  # a diffusers folder's config
# Decode settings of a FlexTok without its own: the official README's (20 steps, guidance 7.5 with APG)
OFFICIAL_DECODE_DEFAULTS = {"steps": 20, "guidance_scale": 7.5, "apg": True}


# ----------------------------------------------------------------------------------------------------
# Training draws (the randomness of one training forward, drawn up front so it can be injected)
# ----------------------------------------------------------------------------------------------------
@dataclass
class TrainDraws:
    register_sizes: torch.Tensor   # (B,) registers the encoder makes per image
    noise: torch.Tensor            # (B,C,h,w) the flow's x at t=1
    t: torch.Tensor                # (B,) times in (0,1)
    keep_k: torch.Tensor           # (B,) nested dropout: registers the decoder keeps
    null: torch.Tensor             # (B,) bool: condition replaced by the null condition (CFG dropout)


def sample_keep_k(n: int, mode: str, generator: torch.Generator | None = None) -> int:
    """Nested-dropout length for n registers: 'uniform' 1..n, 'pow2' a power of two <= n (n itself one),
    'uniform_pow2' uniform k rounded up to a power of two (the official choices)."""
    if mode == "uniform":
        return int(torch.randint(1, n + 1, (1,), generator=generator))
    if mode == "pow2":
        if n & (n - 1):
            raise ConfigError(f"pow2 nested dropout needs a power-of-two register count, got {n}")
        choices = powers_of_two(1, n)
        return choices[int(torch.randint(len(choices), (1,), generator=generator))]
    if mode == "uniform_pow2":
        k = int(torch.randint(1, n + 1, (1,), generator=generator))
        return k if k & (k - 1) == 0 else 1 << k.bit_length()
    raise ConfigError(f"unknown nested dropout mode {mode!r}; known: 'uniform', 'pow2', 'uniform_pow2'")


# ----------------------------------------------------------------------------------------------------
# FlexTok
# ----------------------------------------------------------------------------------------------------
TokenInput = torch.Tensor | Sequence[torch.Tensor]


class FlexTok(nn.Module):
    """The FlexTok tokenizer. `config` is the official hydra config (a dict); `vae_config` the diffusers
    AutoencoderKL config when the VAE is one; `decode_defaults` the sampling settings `decode` uses by default."""

    def __init__(self, config: dict, vae_config: dict | None = None, decode_defaults: dict | None = None):
        super().__init__()
        self.config = {k: v for k, v in config.items() if k in TOP_LEVEL_KEYS or k == "_target_"}
        self.spec: FlexTokSpec = parse_flextok_config(self.config)
        self.vae_config = dict(vae_config) if vae_config is not None else None
        self.decode_defaults = {**OFFICIAL_DECODE_DEFAULTS, **(decode_defaults or {})}
        self.vae = build_vae(self.spec.vae, self.vae_config)
        self.encoder = FlexTokEncoder(self.spec.encoder)
        f = self.spec.fsq
        self.regularizer = FSQ(f.levels, f.drop_quant_p, f.corrupt_tokens_p, f.min_corrupt_tokens_p,
                               f.apply_corrupt_tokens_p)
        self.decoder = FlexTokDecoder(self.spec.decoder)

    # ---- facts -------------------------------------------------------------------------------------
    @property
    def n_registers(self) -> int:
        """N: the longest token sequence (every prefix 1..N decodes)."""
        return self.spec.n_registers

    @property
    def codebook_size(self) -> int:
        return self.regularizer.codebook_size

    @property
    def downsample_factor(self) -> int:
        return self.vae.downsample_factor

    @property
    def latent_channels(self) -> int:
        return self.spec.latent_channels

    def default_image_size(self) -> tuple[int, int]:
        h, w = self.spec.default_latent_size()
        return h * self.downsample_factor, w * self.downsample_factor

    def train(self, mode: bool = True):
        super().train(mode)
        if getattr(self.vae, "frozen", False):
            self.vae.eval()  # the official VAE is frozen and always in eval mode
        return self

    # ---- images -> tokens ----------------------------------------------------------------------------
    def _check_images(self, images) -> None:
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or not images.is_floating_point() \
                or images.shape[1] != 3:
            raise ConfigError(f"images must be a float tensor (B, 3, H, W) in [-1, 1], got "
                              f"{getattr(images, 'shape', type(images).__name__)} {getattr(images, 'dtype', '')}")
        f = self.downsample_factor * self.spec.encoder.patch.patch_sizes[0]
        if images.shape[2] % f or images.shape[3] % f:
            raise ConfigError(f"image size {tuple(images.shape[2:])} must be a multiple of {f} (VAE downsampling "
                              f"{self.downsample_factor} x patch size); resize or crop the images")

    def encode_latents(self, images, sample_posterior: bool | None = None, generator=None, eps=None) -> dict:
        self._check_images(images)
        with torch.no_grad():
            return self.vae.encode(images, sample_posterior=sample_posterior, generator=generator, eps=eps)

    def _register_sizes(self, b: int, device) -> torch.Tensor:
        return torch.full((b,), self.spec.encoder.registers.n_eval, dtype=torch.long, device=device)

    def encode_with_intermediates(self, images, sample_posterior: bool | None = None, generator=None,
                                  eps=None) -> dict:
        """images -> {'latents', 'registers' (pre-FSQ), 'quants', 'tokens'} (+ 'mean', 'logvar' of a KL VAE)."""
        out = self.encode_latents(images, sample_posterior, generator, eps)
        sizes = self._register_sizes(images.shape[0], images.device)
        z = self.encoder(out["latents"], sizes)
        quants, tokens = self.regularizer(z)
        return {**out, "registers": z, "quants": quants, "tokens": tokens}

    def tokenize(self, images, sample_posterior: bool | None = None, generator=None) -> torch.LongTensor:
        """images (B,3,H,W) in [-1,1] -> tokens (B, N) int64, coarse to fine (the official `tokenize`, as one
        tensor). sample_posterior None = the config's choice; a posterior sample draws from `generator`."""
        return self.encode_with_intermediates(images, sample_posterior, generator)["tokens"]

    def encode(self, images) -> torch.LongTensor:
        return self.tokenize(images)

    # ---- tokens -> images ----------------------------------------------------------------------------
    def prepare_tokens(self, tokens: TokenInput) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens as a (B, k) tensor (k tokens per image) or a list of (1, k_i) / (k_i,) tensors (a prefix per
        image) -> (FSQ codes (B, N, d) zero-token padded, keep_k (B,)); counts must be in 1..N."""
        n = self.n_registers
        rows = list(tokens.unbind(0)) if isinstance(tokens, torch.Tensor) and tokens.ndim == 2 else list(tokens)
        if isinstance(tokens, torch.Tensor) and tokens.ndim != 2:
            raise ConfigError(f"tokens must be a (B, k) tensor or a list of per-image sequences, got shape "
                              f"{tuple(tokens.shape)}")
        if not rows:
            raise ConfigError("no token sequences to decode (empty batch)")
        flat, keep = [], []
        for i, r in enumerate(rows):
            if not isinstance(r, torch.Tensor):
                raise ConfigError(f"token sequence {i} is a {type(r).__name__}, expected an integer tensor")
            r = r.reshape(-1) if r.ndim == 2 and r.shape[0] == 1 else r
            if r.ndim != 1:
                raise ConfigError(f"token sequence {i} has shape {tuple(r.shape)}; expected (k,) or (1, k)")
            k = r.shape[0]
            if not 1 <= k <= n:
                raise ConfigError(f"image {i}: {k} tokens, but FlexTok decodes 1..{n} tokens per image (its "
                                  f"number of registers N={n}); pass a prefix of 1 to {n} tokens")
            flat.append(F.pad(r, (0, n - k)))  # padding is masked by nested dropout: its value never counts
            keep.append(k)
        ids = torch.stack(flat)
        return self.regularizer.indices_to_codes(ids), torch.tensor(keep, device=ids.device)

    def velocity(self, x_t, t, quants, keep_k, uncond=False, return_layers: Sequence[int] = ()):
        """One decoder call: velocity (B,C,h,w); t a float or (B,) tensor; uncond True/(B,) bool = null condition."""
        b = x_t.shape[0]
        t = torch.as_tensor(t, dtype=torch.float32, device=x_t.device)
        t = t.expand(b) if t.ndim == 0 else t
        null = torch.as_tensor(uncond, device=x_t.device)
        null = null.expand(b) if null.ndim == 0 else null
        return self.decoder(x_t, t, quants, keep_k, null.bool(), return_layers=return_layers)

    def _latent_size(self, latent_size=None, image_size=None) -> tuple[int, int]:
        if latent_size is not None and image_size is not None:
            raise ConfigError("give latent_size or image_size, not both")
        if image_size is not None:
            h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
            f = self.downsample_factor
            if h % f or w % f:
                raise ConfigError(f"image size {(h, w)} must be a multiple of the VAE downsampling {f}")
            return h // f, w // f
        if latent_size is not None:
            return (latent_size, latent_size) if isinstance(latent_size, int) else tuple(latent_size)
        return self.spec.default_latent_size()

    @torch.no_grad()
    def detokenize_latents(self, tokens: TokenInput, steps: int | None = None,
                           guidance_scale: float | Callable | None = None, apg: bool | None = None,
                           generator: torch.Generator | None = None, latent_size=None, image_size=None,
                           trace: dict | None = None) -> torch.Tensor:
        """Rectified-flow decoding to latents (B,C,h,w); see `detokenize`."""
        from ..sampling.rectified_flow import rf_sample

        steps = self.decode_defaults["steps"] if steps is None else steps
        guidance_scale = self.decode_defaults["guidance_scale"] if guidance_scale is None else guidance_scale
        apg = self.decode_defaults["apg"] if apg is None else apg
        quants, keep_k = self.prepare_tokens(tokens)
        h, w = self._latent_size(latent_size, image_size)
        device = next(self.decoder.parameters()).device
        quants, keep_k = quants.to(device), keep_k.to(device)
        # one (1,C,h,w) draw per image, in image order (the official noise), so a prefix of the batch keeps its noise
        noise = torch.cat([torch.randn((1, self.spec.out_channels, h, w), generator=generator, device=device)
                           for _ in range(quants.shape[0])])

        def velocity(x, t, uncond):
            return self.velocity(x, t, quants, keep_k, uncond)

        return rf_sample(velocity, noise, steps, guidance_scale=guidance_scale, apg=apg, trace=trace)

    @torch.no_grad()
    def detokenize(self, tokens: TokenInput, steps: int | None = None,
                   guidance_scale: float | Callable | None = None, apg: bool | None = None,
                   generator: torch.Generator | None = None, latent_size=None, image_size=None,
                   trace: dict | None = None) -> torch.Tensor:
        """Tokens -> images (B,3,H,W) (not clamped). Each image keeps its own prefix length (a list of sequences),
        so short and long prefixes decode in one batch. guidance_scale: a number or a function of t (1 = no
        unconditional pass); apg: adaptive projected guidance instead of plain CFG. Defaults: `decode_defaults`.
        latent_size / image_size: the output size (default: the size the position table was built for)."""
        latents = self.detokenize_latents(tokens, steps, guidance_scale, apg, generator, latent_size, image_size,
                                          trace)
        return self.vae.decode(latents)

    def decode(self, tokens: TokenInput, **sampling) -> torch.Tensor:
        return self.detokenize(tokens, **sampling)

    def token_layout(self, image_size) -> TokenLayout:
        """A 1D sequence of N codes for images of `image_size` (an int or (H, W)); the size must fit the patch
        grid (a multiple of VAE downsampling x patch size, within the position table)."""
        h, w = image_hw(image_size)
        f = self.downsample_factor * self.spec.encoder.patch.patch_sizes[0]
        mh, mw = self.default_image_size()
        if h % f or w % f or h > mh or w > mw:
            raise ConfigError(f"FlexTok {self.n_registers}-token model: image size {(h, w)} must be a multiple of "
                              f"{f} and at most {(mh, mw)} (its position table)")
        return TokenLayout.sequence(self.n_registers, vocab_size=self.codebook_size)

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor, num_tokens: int | None = None, decode_steps: int | None = None,
                    decode_guidance=None, decode_apg=None, generator: torch.Generator | None = None) -> torch.Tensor:
        """images -> tokens -> the first `num_tokens` (default N) -> images of the same size."""
        from ..sampling.rectified_flow import parse_guidance

        k = self.n_registers if num_tokens is None else int(num_tokens)
        if not 1 <= k <= self.n_registers:
            raise ConfigError(f"--num-tokens {k}: this FlexTok decodes 1..{self.n_registers} tokens per image")
        tokens = self.encode(images)[:, :k]
        guidance = None if decode_guidance is None else parse_guidance(decode_guidance)
        size = tuple(images.shape[2:])
        return self.detokenize(tokens, steps=decode_steps, guidance_scale=guidance, apg=parse_switch(decode_apg),
                               generator=generator, image_size=size)

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.vae.decode(latents)

    # ---- training ------------------------------------------------------------------------------------
    def sample_train_draws(self, latents: torch.Tensor, generator: torch.Generator | None = None) -> TrainDraws:
        """Every random choice of one training forward (from `generator`, default the global torch RNG):
        register counts (the encoder's size sampling), noise, t (logit-normal / stratified / uniform with SD3
        mode scale, per the config), nested-dropout lengths and null-condition dropout."""
        b, dev = latents.shape[0], latents.device
        reg = self.spec.encoder.registers
        sizes = torch.tensor([reg.valid_sizes[int(i)] for i in
                              torch.randint(len(reg.valid_sizes), (b,), generator=generator)], dtype=torch.long)
        noise = torch.randn(latents.shape, generator=generator).to(latents)
        ns = self.spec.noise
        if ns.ln and ns.stratified:
            u = (torch.arange(b) + torch.rand(b, generator=generator)) / b
            t = torch.sigmoid(torch.erfinv(2 * u - 1) * 2 ** 0.5)
        elif ns.ln:
            t = torch.sigmoid(torch.randn(b, generator=generator))
        else:
            t = torch.rand(b, generator=generator)
            if ns.mode_scale:
                t = 1 - t - ns.mode_scale * (torch.cos(torch.pi * t / 2) ** 2 - 1 + t)
        nd = self.spec.decoder.op("nested_dropout")
        keep = torch.tensor([sample_keep_k(int(n), nd.options["mode"], generator) if nd else int(n) for n in sizes])
        nc = self.spec.decoder.op("nullcond")
        p_null = nc.options["dropout_prob"] if nc else 0.0
        null = torch.rand(b, generator=generator) < p_null
        return TrainDraws(sizes.to(dev), noise, t.to(dev), keep.to(dev), null.to(dev))

    def training_forward(self, images: torch.Tensor, draws: TrainDraws | None = None, latents=None,
                         return_layers: Sequence[int] = ()) -> dict:
        """One rectified-flow training forward: VAE (frozen) -> encoder -> FSQ (straight-through) -> decoder.

        Returns {'v_pred', 'target' (= noise - latents), 'latents', 'noised', 'tokens', 'quants', 'draws'}
        (+ 'hidden': patch tokens after `return_layers`, for REPA). Pass `latents` to skip the VAE.
        """
        if latents is None:
            latents = self.encode_latents(images)["latents"]
        draws = draws or self.sample_train_draws(latents)
        z = self.encoder(latents, draws.register_sizes)
        quants, tokens = self.regularizer(z)
        t = draws.t.to(latents)
        noised = t[:, None, None, None] * draws.noise + (1.0 - t)[:, None, None, None] * latents
        out = self.decoder(noised, t, quants, draws.keep_k, draws.null, lengths=draws.register_sizes,
                           return_layers=return_layers)
        v, hidden = out if return_layers else (out, None)
        res = {"v_pred": v, "target": draws.noise - latents, "latents": latents, "noised": noised,
               "tokens": tokens, "quants": quants, "draws": draws}
        if return_layers:
            res["hidden"] = hidden
        return res

    def forward(self, images: torch.Tensor, draws: TrainDraws | None = None, latents=None,
                return_layers: Sequence[int] = ()) -> dict:
        """The training pass (as the official FlexTok.forward): see `training_forward`."""
        return self.training_forward(images, draws, latents, return_layers)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for t in (self.encoder.module_dict[self.spec.encoder.vit.name],
                  self.decoder.module_dict[self.spec.decoder.vit.name]):
            t.grad_checkpointing = enable

    # ---- files ---------------------------------------------------------------------------------------
    def save_pretrained(self, folder: str | os.PathLike) -> Path:
        """The official Hub layout: model.safetensors (weights + the hydra config in its metadata) and
        config.json (the same config, plus vision-ar's decode defaults); a diffusers VAE's config goes to vae/."""
        from safetensors.torch import save_file

        folder = Path(folder)
        check_writable(folder / CONFIG_NAME)
        config = json.loads(json.dumps(self.config))
        if self.spec.vae.kind == "diffusers":
            config["vae"]["hf_hub_path"] = "vae"  # the saved folder is self-contained
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
        try:
            metadata = {k: (v if isinstance(v, str) else repr(v)) for k, v in config.items()}
            save_file({k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()},
                      str(tmp / WEIGHTS_NAME), metadata=metadata)
            (tmp / CONFIG_NAME).write_text(json.dumps({"_class": "FlexTok", "_decode_defaults": self.decode_defaults,
                                                       **config}, indent=2))
            names = [CONFIG_NAME, WEIGHTS_NAME]
            if self.vae_config is not None:
                (tmp / "vae").mkdir()
                (tmp / "vae" / VAE_FOLDER_CONFIG).write_text(json.dumps(self.vae_config, indent=2))
            folder.mkdir(parents=True, exist_ok=True)
            moves = [(tmp / name, folder / name) for name in names]
            if self.vae_config is not None:
                (folder / "vae").mkdir(exist_ok=True)
                moves.insert(0, (tmp / "vae" / VAE_FOLDER_CONFIG, folder / "vae" / VAE_FOLDER_CONFIG))
            for src, dst in moves:  # file by file: an existing folder keeps its other files
                os.chmod(src, plain_file_mode())
                os.replace(src, dst)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return folder

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, vae_folder: str | os.PathLike | None = None,
                        map_location: str = "cpu") -> "FlexTok":
        """A local FlexTok folder in the official Hub layout (EPFL-VILAB/flextok_*: model.safetensors with the
        config in its metadata; config.json) or written by save_pretrained. The VAE's diffusers config comes from
        vae_folder, else FOLDER/<the config's vae.hf_hub_path>; its weights are in model.safetensors."""
        folder = Path(folder)
        weights = folder / WEIGHTS_NAME
        if not weights.is_file():
            raise MissingFileError(f"{weights} not found: a FlexTok folder holds {WEIGHTS_NAME} (download the Hub "
                                   f"repository, e.g. EPFL-VILAB/flextok_d18_d28_in1k, to a local folder)")
        extras = {}
        if (folder / CONFIG_NAME).is_file():
            try:
                extras = json.loads((folder / CONFIG_NAME).read_text())
            except json.JSONDecodeError as e:
                raise CheckpointError(f"{folder / CONFIG_NAME} is not valid JSON: {e}") from e
        return cls.from_checkpoint(weights, vae_folder=vae_folder, fallback_config=extras,
                                   map_location=map_location)

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, vae_folder: str | os.PathLike | None = None,
                        fallback_config: dict | None = None, map_location: str = "cpu") -> "FlexTok":
        """One official model.safetensors: the model is built from the config in its own metadata (or, for a
        file without it, from `fallback_config`, e.g. the Hub config.json), then loaded strictly."""
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise MissingFileError(f"FlexTok checkpoint not found: {path}")
        try:
            with safe_open(str(path), "pt") as f:
                metadata = f.metadata()
        except Exception as e:
            raise CheckpointError(f"cannot read {path}: {e}. The file may be truncated or not a safetensors file.") \
                from e
        fallback = unwrap_hub_config(fallback_config or {})
        if metadata and any(k in metadata for k in TOP_LEVEL_KEYS) or not all(k in fallback for k in TOP_LEVEL_KEYS):
            config = config_from_metadata(metadata, str(path))
        else:
            config = fallback
        vae_config = _find_vae_config(parse_flextok_config(config).vae, path.parent, vae_folder)
        model = cls(config, vae_config, (fallback_config or {}).get("_decode_defaults"))
        from safetensors.torch import load_file

        load_state_dict_strict(model, load_file(str(path)), what=f"FlexTok checkpoint {path}")
        return model.to(map_location).eval()


def _find_vae_config(spec: VAESpec, folder: Path, vae_folder) -> dict | None:
    """The diffusers config.json of the checkpoint's VAE: vae_folder, else FOLDER/<hf_hub_path>, else (no
    hf_hub_path) the official VAE_BASE_CFG; its latent channels are checked before anything is built."""
    if spec.kind != "diffusers":
        return None
    candidates = [Path(vae_folder)] if vae_folder is not None else []
    if spec.hf_hub_path:
        candidates.append(folder / spec.hf_hub_path)
    for c in candidates:
        if (c / VAE_FOLDER_CONFIG).is_file():
            cfg = json.loads((c / VAE_FOLDER_CONFIG).read_text())
            if int(cfg.get("latent_channels") or 0) != spec.latent_channels:
                raise ConfigError(f"the VAE folder {c} has latent_channels={cfg.get('latent_channels')} but the "
                                  f"FlexTok encoder reads {spec.latent_channels}-channel latents; pass the VAE it was "
                                  f"trained with (EPFL-VILAB/flextok_vae_c{spec.latent_channels})")
            return cfg
        if vae_folder is not None and c == Path(vae_folder):
            raise MissingFileError(f"{c / VAE_FOLDER_CONFIG} not found: vae_folder must be a diffusers "
                                   f"AutoencoderKL folder (config.json + diffusion_pytorch_model.safetensors)")
    if not spec.hf_hub_path:
        return {**VAE_BASE_CFG, "latent_channels": spec.latent_channels,
                "scaling_factor": spec.scaling_factor or 1.0}
    raise MissingFileError(
        f"the checkpoint's VAE is {spec.hf_hub_path!r}, not found next to it ({folder / spec.hf_hub_path}); nothing "
        f"is downloaded. Download that diffusers folder (e.g. `huggingface-cli download {spec.hf_hub_path} "
        f"--local-dir VAE_DIR`) and pass vae_folder=VAE_DIR (CLI: --vae VAE_DIR).")


# ----------------------------------------------------------------------------------------------------
# Presets
# ----------------------------------------------------------------------------------------------------
FMNIST_DEFAULTS = dict(latent_channels=1, levels=(8, 5, 5, 5), n_registers=32, latent_size=32, patch_size=4,
                       enc_dim=128, enc_depth=4, dec_dim=192, dec_depth=6, head_dim=32, vae="identity",
                       nested_mode="pow2", nullcond="learned", nullcond_p=0.1, adaLN_expansion=2,
                       enc_head_init="trunc_normal")
FMNIST_DECODE_DEFAULTS = {"steps": 25, "guidance_scale": 1.5, "apg": False}


def parse_switch(value) -> bool | None:
    """A yes/no setting from the command line ('on'/'off', 'true'/'false', '1'/'0') or a bool; None stays None."""
    if value is None or isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("on", "true", "1", "yes"):
        return True
    if text in ("off", "false", "0", "no"):
        return False
    raise ConfigError(f"expected on or off, got {value!r}")


def _fmnist_config(overrides: dict) -> dict:
    import inspect

    known = set(inspect.signature(flextok_config).parameters)
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ConfigError(f"flextok-fmnist: unknown setting(s) {unknown}; known: {sorted(known)}")
    return flextok_config(**{**FMNIST_DEFAULTS, **overrides})


@register_preset("flextok-fmnist", family="flextok-tokenizer",
                 description="FlexTok for 32x32 Fashion-MNIST in (grey) pixel space: 4x4 patches, ViT 128x4 "
                             "encoder, 192x6 rectified-flow decoder, 32 registers, FSQ [8,5,5,5] (1000 codes)")
def flextok_fmnist(decode_defaults: dict | None = None, **overrides) -> FlexTok:
    return FlexTok(_fmnist_config(overrides), decode_defaults={**FMNIST_DECODE_DEFAULTS, **(decode_defaults or {})})
