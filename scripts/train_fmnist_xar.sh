#!/usr/bin/env bash
# The exact commands that trained the shipped Fashion-MNIST xAR (vision_ar/weights/fmnist_xar): kl-fmnist tokenizer
# + xar-fmnist generator, on a 2-core CPU, one OpenMP thread per process (two jobs side by side). Re-running a
# command after a kill resumes it exactly from OUT/latest.pt. Timings: one thread of an AVX512-BF16 CPU (bf16
# autocast chosen by precision=auto; fp32 on AVX2-only CPUs), sharing the machine with a second job.
set -euo pipefail
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

# 1. KL-VAE tokenizer (1.0M params, 32x32 -> 8x8x16 latents): L1 reconstruction + KL (kl_weight 1e-2, LDM units);
#    2000 steps x 32 images, ~75 images/s: 15 minutes
vision-ar train tokenizer --model kl-fmnist --data fashion-mnist --out runs/fm_kl --steps 2000 \
  --set batch_size=32 --set lr=3e-4 --set 'betas=[0.9,0.95]' --set warmup_steps=100 \
  --set ema_decay=0.999 --set ema_warmup=true --set progress=false --set log_every=100 --set ckpt_every=250

# 2. latent scale = 1 / std of posterior samples on 10k training images (MAR's 0.2325 for KL-16 is this number)
python scripts/calibrate_kl_scale.py runs/fm_kl/final --n 10000

# 3. xAR on the cached KL posterior of that tokenizer (a fresh latent sample every step, as official):
#    4 cells of 4x4 tokens, Noisy Context Learning, flow matching per entity, 10% class dropout for CFG.
#    The shipped run was started for 3000 steps and extended to 4500 at step 1400 (resume_log.jsonl); these two
#    commands replay that exactly (~65 images/s: 75 minutes).
XAR="vision-ar train generator --model xar-fmnist --tokenizer runs/fm_kl/final --data fashion-mnist --out runs/fm_xar
  --set batch_size=64 --set lr=5e-4 --set warmup_steps=200 --set weight_decay=0.02 --set ema_decay=0.999
  --set ema_warmup=true --set progress=false --set log_every=25 --set ckpt_every=100"
$XAR --steps 3000 --set pause_at_step=1400
$XAR --steps 4500

# 4. the KL decoder fine-tuned on posterior samples of the frozen encoder (the generator's latents stay valid):
#    L1 + PatchGAN from step 300, 1200 steps x 32 images
vision-ar train tokenizer --model kl-fmnist --init runs/fm_kl/final --decoder-only --disc-weight 0.05 --disc-start 300 \
  --data fashion-mnist --out runs/fm_kl_decft --steps 1200 --set batch_size=32 --set lr=1e-4 --set warmup_steps=100 \
  --set ema_decay=0.999 --set ema_warmup=true --set progress=false --set log_every=25 --set ckpt_every=100

# 5. a second schedule on top of the finished generator (`--init` the EMA generator of step 3: its weights, a new optimizer, warmup + cosine
#    and EMA), on the same cached latents: started for 1500 steps x 64 and closed at step 800 with
#    `--steps 800 --allow-changed-settings` (writes final/ and pipeline/ from the step-800 checkpoint; the session
#    ran out). fp32 on an AVX2 CPU, ~38 images/s at one thread: 23 minutes. N = 1,000, CFG 4.0, 20 steps:
#    81.3% / FID 5.68 -> 83.2% / 5.34.
XARCONT="vision-ar train generator --model xar-fmnist --tokenizer runs/fm_kl_decft/final --init runs/fm_xar/pipeline/generator
  --data fashion-mnist --out runs/fm_xar_cont --set batch_size=64 --set lr=2e-4 --set warmup_steps=100
  --set weight_decay=0.02 --set ema_decay=0.999 --set ema_warmup=true --set progress=false --set log_every=25
  --set ckpt_every=100"
$XARCONT --steps 1500 --set pause_at_step=800
$XARCONT --steps 800 --allow-changed-settings

# 6. ship it: the pipeline folder (fine-tuned tokenizer + EMA generator + sampling defaults) into the package
python scripts/ship_pipeline.py runs/fm_xar_cont/pipeline vision_ar/weights/fmnist_xar --tokenizer runs/fm_kl_decft/final \
  --set guidance_scale=${CFG:-4.0} --set num_steps=${FLOW_STEPS:-20}
