"""FlexTok configuration: the official hydra config, read into typed specs, and written for new models.

Official FlexTok checkpoints carry their configuration in the safetensors `__metadata__`: one entry per top-level
key (`_target_`, `vae`, `encoder`, `regularizer`, `decoder`, `flow_matching_noise_module`, `pipeline`), each a
Python-literal string. The encoder and decoder are `SequentialModuleDictWrapper`s: ordered dicts of named modules
that read and write keys of a shared data dict. The module names become state_dict prefixes
(`encoder.module_dict.<name>.*`), so they are read from the config, never assumed.

`parse_flextok_config(cfg)` walks that description, checks every option against what vision-ar implements
(an option it does not know, or a value it does not support, is an error naming the module and the option, not
silently ignored), follows the data-dict keys to find which stream each module works on, and returns a
`FlexTokSpec`. `flextok_config(...)` writes the same layout for a new model from a few sizes (the presets).

Map: reading metadata | option tables | specs | the encoder walk | the decoder walk | writing configs.
"""
from __future__ import annotations

import ast
import copy
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from ..errors import CheckpointError, ConfigError

TOP_LEVEL_KEYS = ("vae", "encoder", "regularizer", "decoder", "flow_matching_noise_module", "pipeline")
IDENTITY_VAE_TARGET = "vision_ar.tokenizers.flextok_vae.IdentityVAE"  # vision-ar's pixel-space "VAE" (no weights)

# The official VAE_BASE_CFG (vae_wrapper.py): the AutoencoderKL built when a config names no hf_hub_path.
VAE_BASE_CFG = {
    "_class_name": "AutoencoderKL", "act_fn": "silu", "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
    "in_channels": 3, "out_channels": 3, "latent_channels": None, "layers_per_block": 2, "norm_num_groups": 32,
    "sample_size": 1024, "scaling_factor": None,
}


# ----------------------------------------------------------------------------------------------------
# Reading metadata
# ----------------------------------------------------------------------------------------------------
def config_from_metadata(metadata: Mapping[str, str] | None, where: str) -> dict:
    """The hydra config held in a safetensors header (values are Python literals, parsed with literal_eval)."""
    metadata = dict(metadata or {})
    missing = [k for k in TOP_LEVEL_KEYS if k not in metadata]
    if missing:
        have = sorted(metadata) or "none"
        raise CheckpointError(
            f"{where} carries no complete FlexTok configuration in its safetensors metadata: missing "
            f"{missing} (metadata keys: {have}). Official FlexTok checkpoints store one hydra entry per top-level "
            f"key ({', '.join(TOP_LEVEL_KEYS)}); pass the original model.safetensors of the Hub repository "
            f"(or a folder whose config.json holds that configuration).")
    cfg = {}
    for k, v in metadata.items():
        try:
            cfg[k] = ast.literal_eval(v)
        except (ValueError, SyntaxError):
            cfg[k] = v  # a plain string (e.g. `_target_`), as the official parser keeps it
    return cfg


def unwrap_hub_config(cfg: Mapping[str, Any]) -> dict:
    """A Hub config.json (PyTorchModelHubMixin may nest the init argument as {'config': {...}}) -> the hydra dict."""
    cfg = dict(cfg)
    if "config" in cfg and isinstance(cfg["config"], Mapping) and "encoder" in cfg["config"]:
        cfg = dict(cfg["config"])
    return {k: v for k, v in cfg.items() if k in TOP_LEVEL_KEYS or k == "_target_"}


# ----------------------------------------------------------------------------------------------------
# Option tables: every constructor argument of the official modules and its default
# ----------------------------------------------------------------------------------------------------
REQ = object()  # a required argument
DEFAULT_NORM = "Fp32LayerNorm(elementwise_affine=False)"  # the official default norm_layer (a partial in code)

OPTIONS: dict[str, dict[str, Any]] = {
    "StableDiffusionVAE": dict(images_read_key=REQ, vae_latents_read_key=REQ, vae_latents_write_key=REQ,
                               images_reconst_write_key=REQ, vae_kl_loss_write_key=None, latent_channels=16,
                               scaling_factor=None, dtype_override="fp32", hf_hub_path=None, sample_posterior=True,
                               learnable_logvar=False, logvar_init=0.0, compile_encode_fn=False,
                               force_vae_encode=True, frozen=False),
    "IdentityVAE": dict(images_read_key="rgb", vae_latents_read_key="vae_latents_reconst",
                        vae_latents_write_key="vae_latents", images_reconst_write_key="rgb_reconst",
                        latent_channels=3, scaling_factor=1.0),
    "SequentialModuleDictWrapper": dict(module_dict=REQ),
    "PerSampleOp": dict(read_key=REQ, write_key=REQ, per_sample_op=REQ),
    "PatchEmbedder": dict(input_tensor_list_read_key=REQ, patches_list_write_key=REQ, n_patches_write_key=REQ,
                          patch_sizes=REQ, channels_in=REQ, dim=None, flatten_patches=True,
                          weight_init_style="xavier"),
    "PositionalEmbeddingAdder": dict(read_key=REQ, write_key=REQ, dim=REQ, max_sizes=REQ, posemb_type="sincos",
                                     posemb_scaling="absolute", posemb_write_key=None),
    "Registers1D": dict(input_tensor_list_read_key=REQ, register_sizes_read_write_key=REQ, registers_write_key=REQ,
                        dim=REQ, n_min=REQ, n_max=REQ, n_eval=None, size_sampling_mode="uniform",
                        ordering_mode="nested", extra_registers_write_key=None, extra_registers_dim=None),
    "BlockWiseSequencePacker": dict(input_list_read_keys=REQ, packed_seq_write_key=REQ, block_mask_write_key=REQ,
                                    inner_packed_shapes_write_key=REQ, outer_packed_shapes_write_key=REQ,
                                    mask_mode="full", max_seq_len=None, pad_to_multiple=None,
                                    emb_packing_fn_write_key=None, per_subseq_embs=False, compile_block_mask=True,
                                    return_materialized_mask=False),
    "FlexTransformer": dict(input_seq_read_key=REQ, output_seq_write_key=REQ, dim=768, depth=12, head_dim=64,
                            mlp_ratio=4.0, qkv_bias=False, proj_bias=False, mlp_bias=False, drop=0.0,
                            drop_path_rate=0.0, act_layer=None, norm_layer=DEFAULT_NORM, gated_mlp=True, qk_norm=True,
                            use_act_checkpoint=False, weight_init_style="xavier", zero_init_query_proj=False,
                            block_mask_read_key=None, score_mod_read_key=None, adaLN_emb_read_key=None,
                            adaLN_packing_fn_read_key=None, adaLN_expansion=1, rope_forward_read_key=None,
                            intermediate_layer_write_key=None, intermediate_layers=[]),
    "SequenceUnpacker": dict(packed_seq_read_key=REQ, inner_seq_write_keys=REQ, inner_packed_shapes_read_key=REQ,
                             outer_packed_shapes_read_key=REQ),
    "LinearHead": dict(read_key=REQ, write_key=REQ, dim=REQ, dim_out=REQ, use_mup_readout=REQ,
                       weight_init_style="zero", norm_layer=DEFAULT_NORM, dtype_override=None, adaLN_emb_read_key=None,
                       adaLN_packing_fn_read_key=None, adaLN_bias=True, proj_bias=True),
    "ToPatchesLinearHead": dict(read_key=REQ, write_key=REQ, dim=REQ, channels_out=REQ, patch_sizes=REQ,
                                use_mup_readout=REQ, weight_init_style="zero", norm_layer=DEFAULT_NORM, dtype_override=None,
                                adaLN_emb_read_key=None, adaLN_packing_fn_read_key=None, adaLN_bias=True,
                                proj_bias=True),
    "FSQ": dict(latents_read_key=REQ, quants_write_key=REQ, tokens_write_key=REQ, levels=REQ, drop_quant_p=0.0,
                corrupt_tokens_p=0.0, min_corrupt_tokens_p=None, apply_corrupt_tokens_p=0.2, packed_call=True),
    "LinearLayer": dict(read_key=REQ, write_key=REQ, dim_in=REQ, dim=REQ, weight_init_style="xavier",
                        dtype_override=None, proj_bias=True),
    "MaskedNestedDropout": dict(read_write_key=REQ, dim=REQ, eval_keep_k_read_key="eval_keep_k",
                                train_keep_k_write_key="train_keep_k", size_sampling_mode="uniform"),
    "LearnedNullCond": dict(read_write_key=REQ, dim=REQ, eval_drop_flag_read_key="eval_dropout_mask",
                            dropout_prob=0.0, replace_with_single_token=False),
    "ZeroNullCond": dict(read_write_key=REQ, eval_drop_flag_read_key="eval_dropout_mask", dropout_prob=0.0),
    "TimestepEmbedder": dict(timesteps_read_key=REQ, time_embedding_write_key=REQ, dim=REQ,
                             frequency_embedding_size=256, weight_init_style="xavier", max_timestep=1000.0,
                             temb_as_tokens=False),
    "MinRFNoiseModule": dict(clean_images_read_key=REQ, noised_images_write_key=REQ, timesteps_write_key=REQ,
                             sigmas_write_key=REQ, ln=True, stratisfied=False, mode_scale=0.0,
                             noise_write_key="flow_noise", noise_read_key=None),
    "MinRFPipeline": dict(noise_read_key=None, target_sizes_read_key=None, latents_read_key=None,
                          timesteps_read_key=None, noised_images_read_key=None, reconst_write_key=None,
                          out_channels=None),
}


def _class_name(entry: Any, where: str) -> str:
    if not isinstance(entry, Mapping) or not isinstance(entry.get("_target_"), str):
        raise ConfigError(f"FlexTok config: {where} must be a dict with a '_target_', got {type(entry).__name__}")
    return entry["_target_"].rsplit(".", 1)[-1]


def module_args(entry: Mapping[str, Any], where: str, expect: Sequence[str] | None = None) -> tuple[str, dict]:
    """(official class name, its arguments with defaults filled); unknown classes / options are errors."""
    cls = _class_name(entry, where)
    if expect is not None and cls not in expect:
        raise ConfigError(f"FlexTok config: {where} is a {entry['_target_']}, expected one of {list(expect)}")
    if cls not in OPTIONS:
        raise ConfigError(f"FlexTok config: {where} is a {entry['_target_']}, which vision-ar does not implement "
                          f"(known modules: {sorted(OPTIONS)})")
    table = OPTIONS[cls]
    given = {k: v for k, v in entry.items() if k not in ("_target_", "_partial_")}
    unknown = sorted(set(given) - set(table))
    if unknown:
        raise ConfigError(f"FlexTok config: {where} ({cls}) has option(s) {unknown} that vision-ar does not "
                          f"implement; known options: {sorted(table)}")
    args = {k: copy.deepcopy(v) for k, v in table.items()}
    args.update(given)
    missing = sorted(k for k, v in args.items() if v is REQ)
    if missing:
        raise ConfigError(f"FlexTok config: {where} ({cls}) lacks the required option(s) {missing}")
    return cls, args


def _require(ok: bool, where: str, msg: str) -> None:
    if not ok:
        raise ConfigError(f"FlexTok config: {where}: {msg}")


def _activation(value: Any, where: str) -> str:
    if value is None:
        return "silu"  # FlexTransformer's default act_layer
    name = _class_name(value, where) if isinstance(value, Mapping) else str(value).rsplit(".", 1)[-1]
    acts = {"SiLU": "silu", "GELU": "gelu"}
    _require(name in acts, where, f"act_layer {value!r} is not supported (SiLU or GELU)")
    return acts[name]


def _check_norm_layer(value: Any, where: str, allow_none: bool = False) -> None:
    """Only FlexTok's default norm is implemented: Fp32LayerNorm without weight or bias (or none, for heads)."""
    if value == DEFAULT_NORM or (value is None and allow_none):
        return
    ok = isinstance(value, Mapping) and _class_name(value, where) in ("Fp32LayerNorm", "LayerNorm") and \
        value.get("elementwise_affine", True) is False
    _require(ok, where, f"norm_layer {value!r} is not supported (only a non-affine Fp32LayerNorm)")


def _check_channels_op(args: dict, direction: str, where: str) -> None:
    op = args["per_sample_op"]
    name = _class_name(op, where) if isinstance(op, Mapping) else str(op)
    _require(name.endswith(direction), where, f"per_sample_op {name!r} is not supported here ({direction} expected)")


# ----------------------------------------------------------------------------------------------------
# Specs: what the model builder needs, with the module names that become state_dict prefixes
# ----------------------------------------------------------------------------------------------------
@dataclass
class VAESpec:
    kind: str                       # 'diffusers' (AutoencoderKL) or 'identity' (pixels are the latents)
    latent_channels: int
    scaling_factor: float | None    # None: the VAE folder's config.scaling_factor
    hf_hub_path: str | None = None
    sample_posterior: bool = False
    dtype: str = "fp32"
    frozen: bool = True
    learnable_logvar: bool = False
    logvar_init: float = 0.0


@dataclass
class PatchSpec:
    name: str
    patch_sizes: tuple
    channels_in: int
    dim: int | None
    flatten: bool


@dataclass
class PosembSpec:
    name: str
    dim: int
    max_sizes: tuple
    kind: str
    scaling: str


@dataclass
class ViTSpec:
    name: str
    dim: int
    depth: int
    head_dim: int
    mask_mode: str
    mlp_ratio: float = 4.0
    gated_mlp: bool = True
    act: str = "silu"
    qkv_bias: bool = False
    proj_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = True
    drop: float = 0.0
    drop_path_rate: float = 0.0
    adaLN_expansion: int | None = None   # None: no adaLN (encoder); 1: one set for all tokens; 2: per subsequence
    init: str = "xavier"                 # weight init of new models: 'xavier' or 'trunc_normal'
    zero_init_query_proj: bool = False

    def block_kwargs(self) -> dict:
        return dict(mlp_ratio=self.mlp_ratio, gated_mlp=self.gated_mlp, act=self.act, qkv_bias=self.qkv_bias,
                    proj_bias=self.proj_bias, mlp_bias=self.mlp_bias, qk_norm=self.qk_norm, drop=self.drop,
                    adaLN_expansion=self.adaLN_expansion)


@dataclass
class HeadSpec:
    name: str
    dim: int
    dim_out: int
    norm: bool
    bias: bool
    adaLN: bool = False
    adaLN_bias: bool = True
    patch_sizes: tuple | None = None     # ToPatchesLinearHead: unpatchify with these
    init: str = "zero"                   # weight init of the projection: 'zero' (official), 'xavier', 'trunc_normal'


@dataclass
class RegistersSpec:
    name: str
    dim: int
    n_min: int
    n_max: int
    n_eval: int
    valid_sizes: tuple
    ordering_mode: str


@dataclass
class RegisterOp:
    """One step on the decoder's register stream, in config order."""
    kind: str                 # 'linear' | 'posemb' | 'nested_dropout' | 'nullcond'
    name: str
    options: dict = field(default_factory=dict)


@dataclass
class EncoderSpec:
    patch: PatchSpec
    posemb: PosembSpec | None
    registers: RegistersSpec
    vit: ViTSpec
    head: HeadSpec


@dataclass
class DecoderSpec:
    register_ops: list
    patch: PatchSpec
    posemb: PosembSpec | None
    time_name: str
    time_dim: int
    frequency_embedding_size: int
    max_timestep: float
    vit: ViTSpec
    head: HeadSpec

    def op(self, kind: str) -> RegisterOp | None:
        return next((o for o in self.register_ops if o.kind == kind), None)


@dataclass
class FSQSpec:
    levels: tuple
    drop_quant_p: float = 0.0
    corrupt_tokens_p: float = 0.0
    min_corrupt_tokens_p: float | None = None
    apply_corrupt_tokens_p: float = 0.2


@dataclass
class NoiseSpec:
    ln: bool = True           # logit-normal t (sigmoid of a standard normal); else uniform
    stratified: bool = False
    mode_scale: float = 0.0


@dataclass
class FlexTokSpec:
    vae: VAESpec
    encoder: EncoderSpec
    fsq: FSQSpec
    decoder: DecoderSpec
    noise: NoiseSpec
    out_channels: int

    @property
    def n_registers(self) -> int:
        return self.encoder.registers.n_max

    @property
    def latent_channels(self) -> int:
        return self.encoder.patch.channels_in

    def default_latent_size(self) -> tuple[int, int]:
        """The latent grid the patch position table was built for (max_sizes x patch size)."""
        pe, p = self.decoder.posemb, self.decoder.patch.patch_sizes
        if pe is None or len(pe.max_sizes) != 2:
            pe, p = self.encoder.posemb, self.encoder.patch.patch_sizes
        if pe is None or len(pe.max_sizes) != 2:
            raise ConfigError("this FlexTok config has no 2D patch position table to infer the latent size from; "
                              "pass the latent (or image) size explicitly")
        return (pe.max_sizes[0] * p[0], pe.max_sizes[1] * p[1])


# ----------------------------------------------------------------------------------------------------
# Parsing: the whole config
# ----------------------------------------------------------------------------------------------------
def parse_flextok_config(cfg: Mapping[str, Any]) -> FlexTokSpec:
    missing = [k for k in TOP_LEVEL_KEYS if k not in cfg]
    if missing:
        raise ConfigError(f"FlexTok config lacks the top-level entries {missing}; it needs {list(TOP_LEVEL_KEYS)}")
    vae, vae_args = _parse_vae(cfg["vae"])
    _, fsq_args = module_args(cfg["regularizer"], "regularizer", ("FSQ",))
    _, noise_args = module_args(cfg["flow_matching_noise_module"], "flow_matching_noise_module",
                                ("MinRFNoiseModule",))
    _, pipe_args = module_args(cfg["pipeline"], "pipeline", ("MinRFPipeline",))
    _require(noise_args["noise_read_key"] is None, "flow_matching_noise_module",
             "noise_read_key (noise supplied by the data) is not supported")
    _require(noise_args["clean_images_read_key"] == vae_args["vae_latents_write_key"], "flow_matching_noise_module",
             f"clean_images_read_key {noise_args['clean_images_read_key']!r} must read the VAE latents "
             f"{vae_args['vae_latents_write_key']!r}")

    encoder = _parse_encoder(cfg["encoder"], vae_args["vae_latents_write_key"])
    _require(fsq_args["latents_read_key"] == encoder[1], "regularizer",
             f"latents_read_key {fsq_args['latents_read_key']!r} must read the encoder output {encoder[1]!r}")
    fsq = FSQSpec(tuple(int(v) for v in fsq_args["levels"]), float(fsq_args["drop_quant_p"]),
                  float(fsq_args["corrupt_tokens_p"]), fsq_args["min_corrupt_tokens_p"],
                  float(fsq_args["apply_corrupt_tokens_p"]))
    _require(encoder[0].head.dim_out == len(fsq.levels), "encoder head",
             f"dim_out {encoder[0].head.dim_out} must equal the number of FSQ levels {len(fsq.levels)}")

    decoder, dec_out_key = _parse_decoder(cfg["decoder"], quants_key=fsq_args["quants_write_key"],
                                          noised_key=noise_args["noised_images_write_key"],
                                          timesteps_key=noise_args["timesteps_write_key"], n_codes=len(fsq.levels))
    for key, expected in (("latents_read_key", fsq_args["quants_write_key"]),
                          ("noised_images_read_key", noise_args["noised_images_write_key"]),
                          ("reconst_write_key", dec_out_key)):
        _require(pipe_args[key] in (None, expected), "pipeline", f"{key} {pipe_args[key]!r} must be {expected!r}")
    out_channels = int(pipe_args["out_channels"] or decoder.head.dim_out // _prod(decoder.head.patch_sizes))
    latent_c = encoder[0].patch.channels_in
    _require(vae.latent_channels == latent_c == decoder.patch.channels_in == out_channels, "channels",
             f"VAE latent_channels {vae.latent_channels}, encoder channels_in {latent_c}, decoder channels_in "
             f"{decoder.patch.channels_in} and pipeline out_channels {out_channels} must agree")
    _require(decoder.head.dim_out == out_channels * _prod(decoder.head.patch_sizes), "decoder head",
             f"channels_out x patch area ({decoder.head.dim_out}) must be out_channels {out_channels} x "
             f"{_prod(decoder.head.patch_sizes)}")
    noise = NoiseSpec(bool(noise_args["ln"]), bool(noise_args["stratisfied"]), float(noise_args["mode_scale"]))
    return FlexTokSpec(vae, encoder[0], fsq, decoder, noise, out_channels)


def _prod(xs) -> int:
    out = 1
    for x in xs:
        out *= int(x)
    return out


def _parse_vae(entry) -> tuple[VAESpec, dict]:
    cls, a = module_args(entry, "vae", ("StableDiffusionVAE", "IdentityVAE"))
    if cls == "IdentityVAE":
        return VAESpec("identity", int(a["latent_channels"]), float(a["scaling_factor"]), sample_posterior=False), a
    _require(not a["compile_encode_fn"], "vae", "compile_encode_fn is not supported (compile the model yourself)")
    _require(a["dtype_override"] in (None, "fp32", "float32", "bf16", "bfloat16", "fp16", "float16"), "vae",
             f"unknown dtype_override {a['dtype_override']!r}")
    spec = VAESpec("diffusers", int(a["latent_channels"]), a["scaling_factor"], a["hf_hub_path"],
                   bool(a["sample_posterior"]), a["dtype_override"] or "fp32", bool(a["frozen"]),
                   bool(a["learnable_logvar"]), float(a["logvar_init"]))
    return spec, a


def _patch_spec(name, a) -> PatchSpec:
    _require(len(a["patch_sizes"]) == 2, name, f"patch_sizes must be 2D, got {a['patch_sizes']}")
    return PatchSpec(name, tuple(int(p) for p in a["patch_sizes"]), int(a["channels_in"]),
                     None if a["dim"] is None else int(a["dim"]), bool(a["flatten_patches"]))


def _posemb_spec(name, a) -> PosembSpec:
    _require(a["posemb_write_key"] is None, name, "posemb_write_key is not supported")
    return PosembSpec(name, int(a["dim"]), tuple(int(s) for s in a["max_sizes"]), a["posemb_type"],
                      a["posemb_scaling"])


def _vit_spec(name, a, mask_mode: str, adaLN_expansion: int | None) -> ViTSpec:
    for opt in ("score_mod_read_key", "rope_forward_read_key"):
        _require(a[opt] is None, name, f"{opt} is not supported")
    _check_norm_layer(a["norm_layer"], name)
    return ViTSpec(name, int(a["dim"]), int(a["depth"]), int(a["head_dim"]), mask_mode, float(a["mlp_ratio"]),
                   bool(a["gated_mlp"]), _activation(a["act_layer"], name), bool(a["qkv_bias"]),
                   bool(a["proj_bias"]), bool(a["mlp_bias"]), bool(a["qk_norm"]), float(a["drop"]),
                   float(a["drop_path_rate"]), adaLN_expansion, _init_style(a["weight_init_style"], name, False),
                   bool(a["zero_init_query_proj"]))


def _init_style(value, where: str, zero_ok: bool) -> str:
    styles = ("zero", "xavier", "trunc_normal") if zero_ok else ("xavier", "trunc_normal")
    _require(value in styles, where, f"weight_init_style must be one of {list(styles)}, got {value!r}")
    return value


def _head_spec(name, cls, a) -> HeadSpec:
    _require(not a["use_mup_readout"], name, "use_mup_readout=True needs muP base shapes that a checkpoint does "
             "not carry; it is not supported")
    _require(a["dtype_override"] in (None, "fp32", "float32"), name, "a head dtype_override is not supported")
    _check_norm_layer(a["norm_layer"], name, allow_none=True)
    norm = a["norm_layer"] is not None  # an explicit None in the config means no norm before the projection
    if cls == "ToPatchesLinearHead":
        patch = tuple(int(p) for p in a["patch_sizes"])
        dim_out = int(a["channels_out"]) * _prod(patch)
    else:
        patch, dim_out = None, int(a["dim_out"])
    return HeadSpec(name, int(a["dim"]), dim_out, norm, bool(a["proj_bias"]), a["adaLN_emb_read_key"] is not None,
                    bool(a["adaLN_bias"]), patch, _init_style(a["weight_init_style"], name, True))


def _named_modules(entry, where) -> list[tuple[str, str, dict]]:
    _, a = module_args(entry, where, ("SequentialModuleDictWrapper",))
    md = a["module_dict"]
    _require(isinstance(md, Mapping) and md, where, "module_dict must be a non-empty dict of modules")
    out = []
    for name, sub in md.items():
        cls, args = module_args(sub, f"{where}.module_dict.{name}")
        out.append((name, cls, args))
    return out


# ----------------------------------------------------------------------------------------------------
# The encoder walk: latents -> [channels last] -> patches (+ positions) ; registers ; pack -> ViT -> head
# ----------------------------------------------------------------------------------------------------
def _parse_encoder(entry, latents_key: str) -> tuple[EncoderSpec, str]:
    patch_key = latents_key
    patch = posemb = registers = vit = head = None
    packed = reg_key = mask_mode = None
    unpacked: dict[str, str] = {}
    for name, cls, a in _named_modules(entry, "encoder"):
        where = f"encoder.{name}"
        if cls == "PerSampleOp":
            _check_channels_op(a, "channels_first_to_last", where)
            _require(a["read_key"] == patch_key, where, f"reads {a['read_key']!r}, expected {patch_key!r}")
            patch_key = a["write_key"]
        elif cls == "PatchEmbedder":
            _require(a["input_tensor_list_read_key"] == patch_key, where, f"reads {a['input_tensor_list_read_key']!r}"
                     f", expected the channels-last latents {patch_key!r}")
            patch, patch_key = _patch_spec(name, a), a["patches_list_write_key"]
        elif cls == "PositionalEmbeddingAdder":
            _require(a["read_key"] == patch_key and patch is not None, where, "must add positions to the patches")
            posemb, patch_key = _posemb_spec(name, a), a["write_key"]
        elif cls == "Registers1D":
            _require(a["extra_registers_write_key"] is None, where, "extra registers are not supported")
            n_min, n_max = int(a["n_min"]), int(a["n_max"])
            mode = a["size_sampling_mode"]
            if mode == "uniform":
                _require(1 <= n_min <= n_max, where, f"needs 1 <= n_min <= n_max, got {n_min}, {n_max}")
                sizes = tuple(range(n_min, n_max + 1))
            elif mode == "powers_of_two":
                _require(_is_pow2(n_min) and _is_pow2(n_max), where, "powers_of_two needs power-of-two n_min/n_max")
                sizes = tuple(powers_of_two(n_min, n_max))
            elif isinstance(mode, str) and mode.startswith("k="):
                sizes = tuple(int(k) for k in mode[2:].split("-"))
            else:
                raise ConfigError(f"FlexTok config: {where}: unknown size_sampling_mode {mode!r}")
            _require(a["ordering_mode"] in ("nested", "avg_pool"), where,
                     f"unknown ordering_mode {a['ordering_mode']!r}")
            registers = RegistersSpec(name, int(a["dim"]), n_min, n_max, int(a["n_eval"] or n_max), sizes,
                                      a["ordering_mode"])
            reg_key = a["registers_write_key"]
        elif cls == "BlockWiseSequencePacker":
            _require(list(a["input_list_read_keys"]) == [patch_key, reg_key], where,
                     f"must pack [patches, registers] = {[patch_key, reg_key]}, got {a['input_list_read_keys']}")
            packed, mask_mode = a["packed_seq_write_key"], a["mask_mode"]
        elif cls == "FlexTransformer":
            _require(a["input_seq_read_key"] == packed, where, "must read the packed sequence")
            _require(a["adaLN_emb_read_key"] is None, where, "an adaLN-conditioned encoder is not supported")
            vit, packed = _vit_spec(name, a, mask_mode, None), a["output_seq_write_key"]
        elif cls == "SequenceUnpacker":
            _require(a["packed_seq_read_key"] == packed, where, "must read the transformer output")
            keys = list(a["inner_seq_write_keys"])
            _require(len(keys) == 2, where, "must unpack [patches, registers]")
            unpacked = {"patches": keys[0], "registers": keys[1]}
        elif cls == "LinearHead":
            _require(a["read_key"] == unpacked.get("registers"), where, "must read the unpacked registers")
            _require(a["adaLN_emb_read_key"] is None, where, "an adaLN encoder head is not supported")
            head, out_key = _head_spec(name, cls, a), a["write_key"]
        else:
            raise ConfigError(f"FlexTok config: {where}: a {cls} does not belong in the encoder")
    for part, value in (("PatchEmbedder", patch), ("Registers1D", registers), ("FlexTransformer", vit),
                        ("LinearHead", head)):
        _require(value is not None, "encoder", f"has no {part}")
    _require(patch.dim == vit.dim == registers.dim == head.dim, "encoder",
             f"widths differ: patches {patch.dim}, registers {registers.dim}, transformer {vit.dim}, head {head.dim}")
    return EncoderSpec(patch, posemb, registers, vit, head), out_key


def _is_pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def powers_of_two(lo: int, hi: int) -> list[int]:
    """Powers of two from the one at or below lo up to hi (the official `powers_of_two`)."""
    return [2 ** i for i in range(int(lo).bit_length() - 1, int(hi).bit_length())]


# ----------------------------------------------------------------------------------------------------
# The decoder walk: register stream ops (config order) ; noised latents -> patches ; t -> temb ; ViT ; head
# ----------------------------------------------------------------------------------------------------
def _parse_decoder(entry, quants_key: str, noised_key: str, timesteps_key: str, n_codes: int):
    reg_key, patch_key = quants_key, noised_key
    ops: list[RegisterOp] = []
    patch = posemb = vit = head = None
    temb_key = time_args = packed = mask_mode = emb_fn_key = per_subseq = None
    unpacked: dict[str, str] = {}
    out_key = None
    for name, cls, a in _named_modules(entry, "decoder"):
        where = f"decoder.{name}"
        if cls == "LinearLayer":
            _require(a["read_key"] == reg_key and int(a["dim_in"]) == n_codes, where,
                     f"must project the {n_codes}-d FSQ codes read from {reg_key!r}")
            _require(a["dtype_override"] in (None, "fp32", "float32"), where, "dtype_override is not supported")
            ops.append(RegisterOp("linear", name, {"dim_in": int(a["dim_in"]), "dim": int(a["dim"]),
                                                   "bias": bool(a["proj_bias"])}))
            reg_key = a["write_key"]
        elif cls == "MaskedNestedDropout":
            _require(a["read_write_key"] == reg_key, where, f"must act on the register stream {reg_key!r}")
            _require(a["size_sampling_mode"] in ("uniform", "pow2", "uniform_pow2"), where,
                     f"unknown size_sampling_mode {a['size_sampling_mode']!r}")
            ops.append(RegisterOp("nested_dropout", name, {"dim": int(a["dim"]), "mode": a["size_sampling_mode"]}))
        elif cls in ("LearnedNullCond", "ZeroNullCond"):
            _require(a["read_write_key"] == reg_key, where, f"must act on the register stream {reg_key!r}")
            single = bool(a.get("replace_with_single_token", False))
            ops.append(RegisterOp("nullcond", name, {"learned": cls == "LearnedNullCond",
                                                     "dim": int(a.get("dim") or 0), "single_token": single,
                                                     "dropout_prob": float(a["dropout_prob"])}))
        elif cls == "PositionalEmbeddingAdder":
            if a["read_key"] == reg_key:
                pe = _posemb_spec(name, a)
                _require(len(pe.max_sizes) == 1, where, "register positions must be 1D")
                ops.append(RegisterOp("posemb", name, {"spec": pe}))
                reg_key = a["write_key"]
            else:
                _require(a["read_key"] == patch_key and patch is not None, where,
                         f"reads {a['read_key']!r}: neither the registers {reg_key!r} nor the patches {patch_key!r}")
                posemb, patch_key = _posemb_spec(name, a), a["write_key"]
        elif cls == "PerSampleOp":
            if a["read_key"] == patch_key and patch is None:
                _check_channels_op(a, "channels_first_to_last", where)
                patch_key = a["write_key"]
            else:
                _require(head is not None and a["read_key"] == out_key, where, "unexpected per-sample op")
                _check_channels_op(a, "channels_last_to_first", where)
                out_key = a["write_key"]
        elif cls == "PatchEmbedder":
            _require(a["input_tensor_list_read_key"] == patch_key, where, f"must read the noised latents {patch_key!r}")
            patch, patch_key = _patch_spec(name, a), a["patches_list_write_key"]
        elif cls == "TimestepEmbedder":
            _require(a["timesteps_read_key"] == timesteps_key, where, f"must read the timesteps {timesteps_key!r}")
            _require(not a["temb_as_tokens"], where, "time embeddings as tokens are not supported")
            temb_key, time_args = a["time_embedding_write_key"], (name, a)
        elif cls == "BlockWiseSequencePacker":
            _require(list(a["input_list_read_keys"]) == [patch_key, reg_key], where,
                     f"must pack [patches, registers] = {[patch_key, reg_key]}, got {a['input_list_read_keys']}")
            packed, mask_mode = a["packed_seq_write_key"], a["mask_mode"]
            emb_fn_key, per_subseq = a["emb_packing_fn_write_key"], bool(a["per_subseq_embs"])
        elif cls == "FlexTransformer":
            _require(a["input_seq_read_key"] == packed, where, "must read the packed sequence")
            _require(a["adaLN_emb_read_key"] == temb_key and temb_key is not None, where,
                     "the decoder transformer must be adaLN-conditioned on the time embedding")
            _require(a["adaLN_packing_fn_read_key"] == emb_fn_key and emb_fn_key is not None, where,
                     "needs the packer's embedding packing function")
            expansion = int(a["adaLN_expansion"])
            _require(expansion == (2 if per_subseq else 1), where,
                     f"adaLN_expansion {expansion} must be {2 if per_subseq else 1} (per_subseq_embs={per_subseq})")
            vit, packed = _vit_spec(name, a, mask_mode, expansion), a["output_seq_write_key"]
        elif cls == "SequenceUnpacker":
            _require(a["packed_seq_read_key"] == packed, where, "must read the transformer output")
            keys = list(a["inner_seq_write_keys"])
            _require(len(keys) == 2, where, "must unpack [patches, registers]")
            unpacked = {"patches": keys[0], "registers": keys[1]}
        elif cls == "ToPatchesLinearHead":
            _require(a["read_key"] == unpacked.get("patches"), where, "must read the unpacked patches")
            _require(a["adaLN_emb_read_key"] in (None, temb_key), where, "adaLN must read the time embedding")
            _require(a["adaLN_packing_fn_read_key"] is None, where, "a head adaLN packing function is not supported")
            head, out_key = _head_spec(name, cls, a), a["write_key"]
        else:
            raise ConfigError(f"FlexTok config: {where}: a {cls} does not belong in the decoder")
    for part, value in (("PatchEmbedder", patch), ("TimestepEmbedder", time_args), ("FlexTransformer", vit),
                        ("ToPatchesLinearHead", head)):
        _require(value is not None, "decoder", f"has no {part}")
    _require(ops and ops[0].kind == "linear", "decoder", "the register stream must start with the code projection")
    kinds = [o.kind for o in ops]
    for kind in ("nested_dropout", "nullcond"):
        _require(kinds.count(kind) <= 1, "decoder", f"has more than one {kind} module")
    name, ta = time_args
    dim = vit.dim
    _require(patch.dim == dim == ops[0].options["dim"] == head.dim == int(ta["dim"]), "decoder",
             "the widths of patches, code projection, time embedding, transformer and head differ")
    dec = DecoderSpec(ops, patch, posemb, name, int(ta["dim"]), int(ta["frequency_embedding_size"]),
                      float(ta["max_timestep"]), vit, head)
    return dec, out_key


# ----------------------------------------------------------------------------------------------------
# Writing configs (new models, saved checkpoints): the official layout and module names
# ----------------------------------------------------------------------------------------------------
def flextok_config(*, latent_channels: int, levels: Sequence[int], n_registers: int, latent_size: int,
                   patch_size: int = 2, enc_dim: int = 64, enc_depth: int = 2, dec_dim: int = 64,
                   dec_depth: int = 2, head_dim: int = 16, vae: str = "identity", vae_path: str | None = None,
                   scaling_factor: float = 1.0, sample_posterior: bool = False, enc_mask: str = "causal_last",
                   register_sampling: str = "uniform", nested_mode: str = "pow2", nullcond: str = "learned",
                   nullcond_p: float = 0.1, adaLN_expansion: int = 2, frequency_embedding_size: int = 256,
                   max_timestep: float = 1.0, mlp_ratio: float = 4.0, drop_path_rate: float = 0.0,
                   enc_head_init: str = "zero") -> dict:
    """A hydra config in the official layout (module names of the released models), for a new FlexTok.

    vae: 'identity' (pixels are the latents: small images, no VAE to train) or 'diffusers' (an AutoencoderKL
    folder at vae_path, frozen, as in every official model). enc_head_init: the official encoder head starts at
    zero (every image gets the same tokens until the decoder learns to read them); 'trunc_normal' (std 0.02)
    makes tokens informative from the first step without saturating FSQ's tanh ('xavier' does saturate it:
    the tokens of a short Fashion-MNIST run then collapse to a few codes).
    """
    grid = latent_size // patch_size
    if grid * patch_size != latent_size:
        raise ConfigError(f"latent_size {latent_size} must be a multiple of patch_size {patch_size}")
    if vae == "identity":
        vae_cfg = {"_target_": IDENTITY_VAE_TARGET, "images_read_key": "rgb",
                   "vae_latents_read_key": "vae_latents_reconst", "vae_latents_write_key": "vae_latents",
                   "images_reconst_write_key": "rgb_reconst", "latent_channels": latent_channels,
                   "scaling_factor": scaling_factor}
    elif vae == "diffusers":
        vae_cfg = {"_target_": "flextok.vae_wrapper.StableDiffusionVAE", "images_read_key": "rgb",
                   "vae_latents_read_key": "vae_latents_reconst", "vae_latents_write_key": "vae_latents",
                   "images_reconst_write_key": "rgb_reconst", "vae_kl_loss_write_key": "vae_kl_loss",
                   "latent_channels": latent_channels, "scaling_factor": scaling_factor, "dtype_override": "fp32",
                   "hf_hub_path": vae_path, "sample_posterior": sample_posterior, "frozen": True}
    else:
        raise ConfigError(f"vae must be 'identity' or 'diffusers', got {vae!r}")

    def mod(target, **kw):
        return {"_target_": target, **kw}

    P = "flextok.model."
    to_last = {"_target_": P + "utils.dict_ops.channels_first_to_last", "_partial_": True}
    to_first = {"_target_": P + "utils.dict_ops.channels_last_to_first", "_partial_": True}
    encoder = {"_target_": P + "utils.wrappers.SequentialModuleDictWrapper", "module_dict": {
        "enc_channels_to_last": mod(P + "utils.dict_ops.PerSampleOp", read_key="vae_latents",
                                    write_key="enc_vae_latents_bhwc", per_sample_op=to_last),
        "enc_patch_emb": mod(P + "preprocessors.patching.PatchEmbedder", input_tensor_list_read_key="enc_vae_latents_bhwc",
                             patches_list_write_key="enc_vae_latents_patched", n_patches_write_key="enc_n_patches",
                             patch_sizes=[patch_size, patch_size], channels_in=latent_channels, dim=enc_dim,
                             flatten_patches=False),
        "enc_posemb_module": mod(P + "utils.posembs.PositionalEmbeddingAdder", read_key="enc_vae_latents_patched",
                                 write_key="enc_vae_latents_patched", dim=enc_dim, max_sizes=[grid, grid],
                                 posemb_type="sincos", posemb_scaling="absolute"),
        "enc_register_module": mod(P + "preprocessors.registers.Registers1D",
                                   input_tensor_list_read_key="enc_vae_latents_patched",
                                   register_sizes_read_write_key="register_sizes", registers_write_key="enc_registers",
                                   dim=enc_dim, n_min=n_registers, n_max=n_registers,
                                   size_sampling_mode=register_sampling, ordering_mode="nested"),
        "enc_seq_packer": mod(P + "preprocessors.flex_seq_packing.BlockWiseSequencePacker",
                              input_list_read_keys=["enc_vae_latents_patched", "enc_registers"],
                              packed_seq_write_key="enc_packed_seq", block_mask_write_key="enc_block_mask",
                              inner_packed_shapes_write_key="enc_ps_inner", outer_packed_shapes_write_key="enc_ps_outer",
                              mask_mode=enc_mask, pad_to_multiple=128),
        "enc_transformer": mod(P + "trunks.transformers.FlexTransformer", input_seq_read_key="enc_packed_seq",
                               output_seq_write_key="enc_packed_seq", dim=enc_dim, depth=enc_depth, head_dim=head_dim,
                               mlp_ratio=mlp_ratio, drop_path_rate=drop_path_rate, block_mask_read_key="enc_block_mask"),
        "enc_unpacker": mod(P + "postprocessors.seq_unpacking.SequenceUnpacker", packed_seq_read_key="enc_packed_seq",
                            inner_seq_write_keys=["enc_vae_latents_patched", "enc_registers"],
                            inner_packed_shapes_read_key="enc_ps_inner", outer_packed_shapes_read_key="enc_ps_outer"),
        "enc_to_latents": mod(P + "postprocessors.heads.LinearHead", read_key="enc_registers", write_key="enc_registers",
                              dim=enc_dim, dim_out=len(levels), use_mup_readout=False, weight_init_style=enc_head_init),
    }}
    null_target = "LearnedNullCond" if nullcond == "learned" else "ZeroNullCond"
    if nullcond not in ("learned", "zero"):
        raise ConfigError(f"nullcond must be 'learned' or 'zero', got {nullcond!r}")
    null = mod(P + "preprocessors.nullcond." + null_target, read_write_key="dec_quants",
               eval_drop_flag_read_key="eval_dropout_mask", dropout_prob=nullcond_p)
    if nullcond == "learned":
        null["dim"] = dec_dim
    per_subseq = adaLN_expansion == 2
    decoder = {"_target_": P + "utils.wrappers.SequentialModuleDictWrapper", "module_dict": {
        "dec_from_latents": mod(P + "preprocessors.linear.LinearLayer", read_key="quants", write_key="dec_quants",
                                dim_in=len(levels), dim=dec_dim),
        "dec_registers_posemb_module": mod(P + "utils.posembs.PositionalEmbeddingAdder", read_key="dec_quants",
                                           write_key="dec_quants", dim=dec_dim, max_sizes=[n_registers],
                                           posemb_type="learnable_sum", posemb_scaling="absolute"),
        "dec_nested_dropout": mod(P + "preprocessors.token_dropout.MaskedNestedDropout", read_write_key="dec_quants",
                                  dim=dec_dim, eval_keep_k_read_key="eval_keep_k", train_keep_k_write_key="train_keep_k",
                                  size_sampling_mode=nested_mode),
        "dec_latent_dropout": null,
        "dec_noise_channels_to_last": mod(P + "utils.dict_ops.PerSampleOp", read_key="vae_latents_noised",
                                          write_key="dec_noised_bhwc", per_sample_op=to_last),
        "dec_noise_patch_emb": mod(P + "preprocessors.patching.PatchEmbedder", input_tensor_list_read_key="dec_noised_bhwc",
                                   patches_list_write_key="dec_patches", n_patches_write_key="dec_n_patches",
                                   patch_sizes=[patch_size, patch_size], channels_in=latent_channels, dim=dec_dim,
                                   flatten_patches=False),
        "dec_patches_posemb_module": mod(P + "utils.posembs.PositionalEmbeddingAdder", read_key="dec_patches",
                                         write_key="dec_patches", dim=dec_dim, max_sizes=[grid, grid],
                                         posemb_type="sincos", posemb_scaling="absolute"),
        "dec_seq_packer": mod(P + "preprocessors.flex_seq_packing.BlockWiseSequencePacker",
                              input_list_read_keys=["dec_patches", "dec_quants"], packed_seq_write_key="dec_packed_seq",
                              block_mask_write_key="dec_block_mask", inner_packed_shapes_write_key="dec_ps_inner",
                              outer_packed_shapes_write_key="dec_ps_outer", mask_mode="full", pad_to_multiple=128,
                              emb_packing_fn_write_key="dec_emb_packing_fn", per_subseq_embs=per_subseq),
        "dec_time_embedder": mod(P + "preprocessors.time_embedding.TimestepEmbedder", timesteps_read_key="timesteps",
                                 time_embedding_write_key="dec_temb", dim=dec_dim,
                                 frequency_embedding_size=frequency_embedding_size, max_timestep=max_timestep),
        "dec_transformer": mod(P + "trunks.transformers.FlexTransformer", input_seq_read_key="dec_packed_seq",
                               output_seq_write_key="dec_packed_seq", dim=dec_dim, depth=dec_depth, head_dim=head_dim,
                               mlp_ratio=mlp_ratio, drop_path_rate=drop_path_rate, block_mask_read_key="dec_block_mask",
                               adaLN_emb_read_key="dec_temb", adaLN_packing_fn_read_key="dec_emb_packing_fn",
                               adaLN_expansion=adaLN_expansion),
        "dec_unpacker": mod(P + "postprocessors.seq_unpacking.SequenceUnpacker", packed_seq_read_key="dec_packed_seq",
                            inner_seq_write_keys=["dec_patches", "dec_quants"], inner_packed_shapes_read_key="dec_ps_inner",
                            outer_packed_shapes_read_key="dec_ps_outer"),
        "dec_to_patches": mod(P + "postprocessors.heads.ToPatchesLinearHead", read_key="dec_patches",
                              write_key="dec_reconst_bhwc", dim=dec_dim, channels_out=latent_channels,
                              patch_sizes=[patch_size, patch_size], use_mup_readout=False, weight_init_style="zero",
                              adaLN_emb_read_key="dec_temb"),
        "dec_channels_to_first": mod(P + "utils.dict_ops.PerSampleOp", read_key="dec_reconst_bhwc",
                                     write_key="vae_latents_reconst", per_sample_op=to_first),
    }}
    return {
        "_target_": "flextok.flextok_wrapper.FlexTok",
        "vae": vae_cfg,
        "encoder": encoder,
        "regularizer": {"_target_": "flextok.regularizers.quantize_fsq.FSQ", "latents_read_key": "enc_registers",
                        "quants_write_key": "quants", "tokens_write_key": "tokens", "levels": list(levels)},
        "decoder": decoder,
        "flow_matching_noise_module": {"_target_": "flextok.flow_matching.noise_modules.MinRFNoiseModule",
                                       "clean_images_read_key": "vae_latents",
                                       "noised_images_write_key": "vae_latents_noised",
                                       "timesteps_write_key": "timesteps", "sigmas_write_key": "sigmas", "ln": True,
                                       "stratisfied": False, "mode_scale": 0.0, "noise_write_key": "flow_noise"},
        "pipeline": {"_target_": "flextok.flow_matching.pipelines.MinRFPipeline", "_partial_": True,
                     "latents_read_key": "quants", "timesteps_read_key": "timesteps",
                     "noised_images_read_key": "vae_latents_noised", "reconst_write_key": "vae_latents_reconst",
                     "out_channels": latent_channels},
    }
