#!/usr/bin/env bash
# The exact commands that train the Fashion-MNIST FlexTok (tokenizer + 1D GPT, `--model fmnist-flextok`), on a
# 2-core CPU. One OpenMP thread per process (two threads per job on a shared machine spin-wait).
# Re-running a command after a kill resumes it exactly from OUT/latest.pt.
#
# Cost at one fp32 thread of a 2-core AVX2 CPU beside another job: the tokenizer trains at ~17-25 images/s
# (batch 64: 2.6-3.8 s a step; 2000 steps took 90 minutes), the GPT at ~60-70 images/s (1200 steps: ~20 minutes,
# after ~3 minutes of caching the tokens of the 60k training images). Decoding runs 25 Euler steps x 2 (CFG)
# decoder calls per image: ~1 image/s per thread, so the benchmarks below use a few hundred images.
set -euo pipefail
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
TOK_STEPS=${TOK_STEPS:-2000}
TOK2_STEPS=${TOK2_STEPS:-1500}
GPT_STEPS=${GPT_STEPS:-1200}

# 1. FlexTok tokenizer (grey pixel space, 4x4 patches, 32 registers, FSQ 1000 codes): rectified-flow decoder,
#    nested dropout over powers of two (1, 2, 4, ..., 32 kept tokens), 10% null-condition dropout for CFG.
vision-ar train tokenizer --model flextok-fmnist --data fashion-mnist --out runs/fm_flextok --steps "$TOK_STEPS" \
  --set batch_size=64 --set lr=1e-3 --set 'betas=[0.9,0.99]' --set warmup_steps=200 --set weight_decay=0.0 \
  --set ema_decay=0.999 --set ema_warmup=true --set progress=false --set log_every=25 --set ckpt_every=100

# 1b. a second schedule on top (the first one's EMA weights, a new optimizer, lr schedule and EMA): the decoder
#     was still learning to read the registers beyond the first when the first schedule's lr had decayed
vision-ar train tokenizer --model flextok-fmnist --init runs/fm_flextok/final --data fashion-mnist \
  --out runs/fm_flextok2 --steps "$TOK2_STEPS" \
  --set batch_size=64 --set lr=6e-4 --set 'betas=[0.9,0.99]' --set warmup_steps=100 --set weight_decay=0.0 \
  --set ema_decay=0.999 --set ema_warmup=true --set progress=false --set log_every=25 --set ckpt_every=100

# 2. reconstruction versus token count (the README table and picture; 1000 test images, 25 flow steps)
python benchmarks/flextok_recon.py runs/fm_flextok2/final --n 200 --grid docs/fmnist_flextok_recon.png \
  | tee runs/fm_flextok2/recon.jsonl

# 3. next-token GPT over the 1D token sequence (1D positions), class-conditional (10% class dropout for CFG)
vision-ar train generator --model gpt-flextok-fmnist --tokenizer runs/fm_flextok2/final --data fashion-mnist \
  --out runs/fm_flextok2_gpt --steps "$GPT_STEPS" --set batch_size=64 --set lr=8e-4 --set warmup_steps=100 \
  --set weight_decay=0.05 --set ema_decay=0.999 --set ema_warmup=true \
  --set progress=false --set log_every=25 --set ckpt_every=100

# 4. ship it: the pipeline folder (tokenizer + EMA generator + sampling defaults) into the package; then declare it
#    in vision_ar/families/flextok.py: shipped={"fmnist-flextok": "fmnist_flextok"} (`--model fmnist-flextok`)
python scripts/ship_pipeline.py runs/fm_flextok2_gpt/pipeline vision_ar/weights/fmnist_flextok --half-weights \
  --set guidance_scale=${CFG:-3.0}

# 5. generation versus token count (class accuracy, classifier-feature FID; 1000 samples each) and SJD on the 1D GPT
for K in 1 2 4 8 16 32; do
  python benchmarks/fmnist_quality.py --model runs/fm_flextok2_gpt/pipeline --n 1000 --pipe-arg num_tokens=$K \
    --out runs/fm_flextok2_gpt/quality.jsonl
done
python benchmarks/sjd_speed.py --model runs/fm_flextok2_gpt/pipeline --images 64 --cfg ${CFG:-3.0} \
  --inits random horizontal horizontal-argmax
