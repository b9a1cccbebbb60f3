#!/usr/bin/env bash
# The exact commands that trained the shipped Fashion-MNIST VAR (vision_ar/weights/fmnist_var), on a 2-core CPU.
# One OpenMP thread per process: two jobs ran side by side (2 threads per job on a shared machine spin-wait).
# Re-running a command after a kill resumes it exactly from OUT/latest.pt.
set -euo pipefail
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

# 1. multi-scale VQ-VAE tokenizer (1.0M params, 8x8 latent, scales 1,2,3,4,6,8, V=1024)
vision-ar train tokenizer --model var-vqvae-fmnist --data fashion-mnist --out runs/fm_var_vae --steps 2000 \
  --set batch_size=32 --set lr=3e-4 --set 'betas=[0.9,0.95]' --set warmup_steps=100 \
  --set ema_decay=0.999 --set ema_warmup=true --set progress=false --set log_every=25 --set ckpt_every=100

# 2. VAR transformer on the cached codes of that tokenizer (teacher forcing, 10% class dropout for CFG)
vision-ar train generator --model var-fmnist --tokenizer runs/fm_var_vae/final --data fashion-mnist \
  --out runs/fm_var --steps 1100 --set batch_size=64 --set lr=8e-4 --set warmup_steps=100 \
  --set weight_decay=0.05 --set ema_decay=0.999 --set ema_warmup=true \
  --set progress=false --set log_every=25 --set ckpt_every=100

# 3. decoder fine-tuning on the frozen codes (the generator stays valid): L1 + PatchGAN from step 300.
#    Run as `--steps 2000`, stopped at step 1200 and closed with `--steps 1200 --allow-changed-settings`
#    (which only writes final/ from the step-1200 checkpoint); exact resume makes that sequence reproducible.
vision-ar train tokenizer --model var-vqvae-fmnist --init runs/fm_var_vae/final --decoder-only \
  --disc-weight 0.05 --disc-start 300 --data fashion-mnist --out runs/fm_var_decft --steps ${DECFT_STEPS:-1200} \
  --set batch_size=32 --set lr=1e-4 --set warmup_steps=100 --set ema_decay=0.999 --set ema_warmup=true \
  --set progress=false --set log_every=25 --set ckpt_every=100 --allow-changed-settings

# 4. ship it: the pipeline folder (fine-tuned tokenizer + EMA generator + sampling defaults) into the package
python scripts/ship_pipeline.py runs/fm_var/pipeline vision_ar/weights/fmnist_var --tokenizer runs/fm_var_decft/final \
  --set guidance_scale=${CFG:-3.0}
