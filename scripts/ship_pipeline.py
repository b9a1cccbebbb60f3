"""Copy a trained pipeline folder into the package (vision_ar/weights/<name>) with its sampling defaults.

    python scripts/ship_pipeline.py runs/fm_var/pipeline vision_ar/weights/fmnist_var --set guidance_scale=2.0
    # the same generator with a decoder-fine-tuned tokenizer (same codes: `vision-ar train tokenizer --decoder-only`)
    python scripts/ship_pipeline.py runs/fm_var/pipeline vision_ar/weights/fmnist_var --tokenizer runs/fm_var_decft/final

Weights are re-saved through save_pretrained (config.json + model.safetensors per component), so what ships is
exactly what `load_pipeline` reads back. `--half-weights` stores the parameters (not the buffers: RoPE tables,
masks) in float16, half the size in the repository; loading casts them back to the model's float32 (measure
the shipped model's quality after shipping, as for any weights).

    python scripts/ship_pipeline.py runs/fm_flextok2_gpt/pipeline vision_ar/weights/fmnist_flextok --half-weights
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from vision_ar.pipelines import load_pipeline


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src")
    ap.add_argument("dst")
    ap.add_argument("--tokenizer", metavar="FOLDER", help="replace the pipeline's tokenizer by this one (e.g. a "
                    "decoder fine-tuned on the same codes); the pair is checked like any pipeline's")
    ap.add_argument("--set", action="append", default=[], metavar="K=V", help="sampling default (JSON value)")
    ap.add_argument("--half-weights", action="store_true", help="store float32 parameters as float16 (see above)")
    args = ap.parse_args()
    pipe = load_pipeline(args.src)
    if args.tokenizer:
        from vision_ar.train.recipes import load_model_folder

        pipe = type(pipe)(load_model_folder(args.tokenizer), pipe.generator, pipe.defaults, pipe.class_names)
    for pair in args.set:
        k, v = pair.split("=", 1)
        try:
            pipe.defaults[k] = json.loads(v)
        except json.JSONDecodeError:
            pipe.defaults[k] = v
    pipe.save_pretrained(args.dst)
    if args.half_weights:
        for name, module in (("tokenizer", pipe.tokenizer), ("generator", pipe.generator)):
            store_parameters_in_half(module, Path(args.dst) / name / "model.safetensors")
    print(json.dumps({"shipped": args.dst, "defaults": pipe.defaults, "half_weights": args.half_weights}))


def store_parameters_in_half(module, path: Path) -> None:
    """Rewrite `path` (a save_pretrained model.safetensors, metadata kept) with the module's float32
    parameters in float16; buffers and anything fp16 cannot hold finitely stay as they are."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    from vision_ar.io import atomic_path

    params = {n for n, _ in module.named_parameters()}
    with safe_open(str(path), "pt") as f:
        metadata = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    for k, t in tensors.items():
        if k in params and t.dtype == torch.float32 and bool(torch.isfinite(t.half()).all()):
            tensors[k] = t.half()
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


if __name__ == "__main__":
    main()
