"""Copy a trained pipeline folder into the package (vision_ar/weights/<name>) with its sampling defaults.

    python scripts/ship_pipeline.py runs/fm_var/pipeline vision_ar/weights/fmnist_var --set guidance_scale=2.0
    # the same generator with a decoder-fine-tuned tokenizer (same codes: `vision-ar train tokenizer --decoder-only`)
    python scripts/ship_pipeline.py runs/fm_var/pipeline vision_ar/weights/fmnist_var --tokenizer runs/fm_var_decft/final

Weights are re-saved through save_pretrained (config.json + model.safetensors per component), so what ships is
exactly what `load_pipeline` reads back.
"""
from __future__ import annotations

import argparse
import json

from vision_ar.pipelines import load_pipeline


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src")
    ap.add_argument("dst")
    ap.add_argument("--tokenizer", metavar="FOLDER", help="replace the pipeline's tokenizer by this one (e.g. a "
                    "decoder fine-tuned on the same codes); the pair is checked like any pipeline's")
    ap.add_argument("--set", action="append", default=[], metavar="K=V", help="sampling default (JSON value)")
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
    print(json.dumps({"shipped": args.dst, "defaults": pipe.defaults}))


if __name__ == "__main__":
    main()
