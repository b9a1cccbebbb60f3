#!/usr/bin/env bash
# The commands that train the Fashion-MNIST xAR (kl-fmnist tokenizer + xar-fmnist generator) on a 2-core CPU.
# One OpenMP thread per process (2 threads per job on a shared machine spin-wait). Re-running a command after a
# kill resumes it exactly from OUT/latest.pt. Timings measured on the shared 2-core machine (loaded):
# kl-fmnist ~2 s/step at batch 32, xar-fmnist ~6.5 s/step at batch 64 in bf16 (about 8.5 in fp32).
set -euo pipefail
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
KL_STEPS=${KL_STEPS:-2000}
XAR_STEPS=${XAR_STEPS:-3000}

# 1. KL-VAE tokenizer (1.0M params, 32x32 -> 8x8x16 latents): L1 reconstruction + KL (kl_weight 1e-2, LDM units)
vision-ar train tokenizer --model kl-fmnist --data fashion-mnist --out runs/fm_kl --steps "$KL_STEPS" \
  --set batch_size=32 --set lr=3e-4 --set 'betas=[0.9,0.95]' --set warmup_steps=100 \
  --set ema_decay=0.999 --set ema_warmup=true --set progress=false --set log_every=25 --set ckpt_every=100

# 2. latent scale = 1 / std of posterior samples on 10k training images (MAR's 0.2325 for KL-16 is this number)
python scripts/calibrate_kl_scale.py runs/fm_kl/final --n 10000

# 3. xAR on the cached KL posterior of that tokenizer (a fresh latent sample every step, as official):
#    4 cells of 4x4 tokens, Noisy Context Learning, flow matching per entity, 10% class dropout for CFG
vision-ar train generator --model xar-fmnist --tokenizer runs/fm_kl/final --data fashion-mnist \
  --out runs/fm_xar --steps "$XAR_STEPS" --set batch_size=64 --set lr=5e-4 --set warmup_steps=200 \
  --set weight_decay=0.02 --set ema_decay=0.999 --set ema_warmup=true \
  --set progress=false --set log_every=25 --set ckpt_every=100

# 4. ship it: the pipeline folder (tokenizer + EMA generator + sampling defaults) into the package
python scripts/ship_pipeline.py runs/fm_xar/pipeline vision_ar/weights/fmnist_xar \
  --set guidance_scale=${CFG:-2.0} --set num_steps=${FLOW_STEPS:-20}
