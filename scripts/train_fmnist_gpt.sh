#!/usr/bin/env bash
# The exact commands that trained the shipped Fashion-MNIST GPT (vision_ar/weights/fmnist_gpt), on a 2-core CPU.
# One OpenMP thread per process: two jobs ran side by side (2 threads per job on a shared machine spin-wait).
# Re-running a command after a kill resumes it exactly from OUT/latest.pt.
set -euo pipefail
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

# 1. LlamaGen-style VQ tokenizer (8x8 codes, 1024 x 8 l2-normalised codebook)
vision-ar train tokenizer --model vq-fmnist --data fashion-mnist --out runs/fm_vq --steps 1200 \
  --set batch_size=32 --set lr=3e-4 --set 'betas=[0.9,0.95]' --set warmup_steps=100 \
  --set ema_decay=0.999 --set ema_warmup=true --set progress=false --set log_every=25 --set ckpt_every=100

# 2. GPT on the cached codes (raster order) of that tokenizer (teacher forcing, 10% class dropout for CFG)
vision-ar train generator --model gpt-fmnist --tokenizer runs/fm_vq/final --data fashion-mnist \
  --out runs/fm_gpt --steps 2800 --set batch_size=64 --set lr=8e-4 --set warmup_steps=100 \
  --set weight_decay=0.05 --set ema_decay=0.999 --set ema_warmup=true \
  --set progress=false --set log_every=25 --set ckpt_every=100

# 3. decoder fine-tuning on the frozen codes (the GPT stays valid): L1 + PatchGAN from step 300.
#    Run as `--steps 2000`, stopped at step 1100 and closed with `--steps 1100 --allow-changed-settings`
#    (which only writes final/ from the step-1100 checkpoint); exact resume makes that sequence reproducible.
vision-ar train tokenizer --model vq-fmnist --init runs/fm_vq/final --decoder-only \
  --disc-weight 0.05 --disc-start 300 --data fashion-mnist --out runs/fm_vq_decft --steps ${DECFT_STEPS:-1100} \
  --set batch_size=32 --set lr=1e-4 --set warmup_steps=100 --set ema_decay=0.999 --set ema_warmup=true \
  --set progress=false --set log_every=25 --set ckpt_every=100 --allow-changed-settings

# 4. ship it: the pipeline folder (fine-tuned tokenizer + EMA generator + sampling defaults) into the package
python scripts/ship_pipeline.py runs/fm_gpt/pipeline vision_ar/weights/fmnist_gpt --tokenizer runs/fm_vq_decft/final \
  --set guidance_scale=${CFG:-2.0}
