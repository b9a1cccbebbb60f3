"""GPU checks in one run (called by benchmarks/gpu_check.sh): parity on CUDA, the Triton SJD kernel against its
torch reference, throughput, and the batch-1 decode step against the memory-bandwidth roofline.

    python benchmarks/gpu_check.py --sections parity kernel speed roofline
    python benchmarks/gpu_check.py --sections speed --batch 1 16 64 --precision bf16 --compile

Sections (each prints JSON lines and a PASS/FAIL or a number; the script exits 1 if a check FAILs):
  parity    the official fixtures (../shared/fixtures) on CUDA in fp32 with TF32 off: VQ-16 decode, GPT
            teacher-forced and KV-cached logits, VAR teacher-forced logits, the multi-scale VQ-VAE decode,
            within the CPU tests' tolerances. (Sampled tokens are not compared: CUDA draws other random numbers
            than the CPU the fixtures were made on.)
  kernel    accept_resample_triton == accept_resample_torch on random cases (same accepted counts and tokens)
  speed     images/s and tokens/s of VAR-d16, GPT-B plain and GPT-B SJD at each --batch (random weights; SJD's
            acceptance on random weights is meaningless, its forwards per image are printed beside it)
  roofline  the batch-1 GPT-B decode step (CFG: 2 rows): bytes it must read (weights in the run's precision +
            the KV cache) / step time, against the peak bandwidth measured by a device copy and the spec sheet

Everything here is untested on a GPU until this script has run on one (the project's CPU sessions had none).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

# Spec-sheet HBM bandwidth (bytes/s) by device-name fragment; the measured copy bandwidth is reported beside it.
SPEC_BANDWIDTH = {"H200": 4.8e12, "H100 SXM": 3.35e12, "H100 PCIe": 2.0e12, "H100": 3.35e12,
                  "A100-SXM4-80GB": 2.04e12, "A100": 1.56e12, "L40S": 8.64e11, "A10": 6.0e11}
FAILED: list[str] = []


def emit(**row):
    print(json.dumps(row), flush=True)
    if row.get("result") == "FAIL":
        FAILED.append(row.get("check", "?"))


DEVICE = "cuda"  # --device cpu: a dry run of the same code on a machine without a GPU


def sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def timed(fn, repeats=3):
    fn()  # warm-up (and compilation / graph capture)
    sync()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


# ----------------------------------------------------------------------------------------------------
# parity on CUDA
# ----------------------------------------------------------------------------------------------------
def _diff(a, b) -> float:
    return (a.float().cpu() - b.float().cpu()).abs().max().item()


def check(name, diff, tol):
    emit(check=name, max_abs_diff=diff, tol=tol, result="PASS" if diff <= tol else "FAIL")


@torch.no_grad()
def section_parity():
    from safetensors.torch import load_file

    from conftest import fixtures_root
    from vision_ar.models.next_token import GPT, GPTConfig
    from vision_ar.tokenizers.vq import VQConfig, VQModel

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    dev = DEVICE
    root = fixtures_root()
    lg = root / "llamagen"
    if lg.is_dir():
        meta = json.loads((lg / "vq_config.json").read_text())
        body = meta["encoder_decoder"]
        vq = VQModel(VQConfig(**meta["vq_model_args"], ch=body["ch"], num_res_blocks=body["num_res_blocks"]))
        vq.load_state_dict(load_file(lg / "vq_state_dict.safetensors"), strict=True)
        vq = vq.eval().to(dev)
        vio = load_file(lg / "vq_io.safetensors")
        h, w = vio["quant"].shape[2:]
        rec = vq.decode(vio["codes"].view(-1, h, w).to(dev))
        check("llamagen vq decode", _diff(rec, vio["recon_from_codes"]), 1e-4)
        gmeta = json.loads((lg / "gpt_config.json").read_text())
        gpt = GPT(GPTConfig.from_official_args(gmeta["model_args"]))
        sd = {k: v for k, v in load_file(lg / "gpt_state_dict.safetensors").items()
              if k not in ("freqs_cis", "causal_mask") and ".kv_cache." not in k}  # rebuilt, not weights
        gpt.load_state_dict(sd, strict=True)
        gpt = gpt.eval().to(dev)
        gio = load_file(lg / "gpt_io.safetensors")
        idx, labels = gio["tf_idx"].to(dev), gio["tf_cond_idx"].to(dev)
        check("llamagen gpt teacher-forced logits", _diff(gpt(idx, labels)[0], gio["tf_logits"]), 1e-4)
        gpt.setup_cache(idx.shape[0])
        gpt.prefill(labels)
        steps = [gpt.decode(idx[:, t:t + 1], t + 1) for t in range(idx.shape[1] - 1)]
        check("llamagen gpt kv-cached logits", _diff(torch.cat(steps, 1), gio["tf_logits"][:, 1:idx.shape[1]]), 1e-4)
    else:
        emit(check="llamagen fixtures", result="SKIP", reason=f"{lg} not found")
    vr = root / "var"
    if vr.is_dir():
        from test_var_parity import VAR_FOLDERS, build_vae, build_var

        for name in VAR_FOLDERS:
            var, cfg = build_var(vr / name)
            tf = load_file(vr / name / "teacher_forcing.safetensors")
            var = var.to(dev)
            args = [tf[k].to(dev) for k in ("label_B", "x_BLCv_wo_first_l")]
            check(f"var {name} teacher-forced logits", _diff(var(*args), tf["logits_BLV"]), 1e-4)
        vae = build_vae(vr / VAR_FOLDERS[0], json.loads((vr / VAR_FOLDERS[0] / "config.json").read_text())).to(dev)
        vio = load_file(vr / "vqvae" / "io.safetensors")
        last = max(int(k.split(".")[1]) for k in vio if k.startswith("f_hat."))
        check("var vq-vae fhat_to_img", _diff(vae.fhat_to_img(vio[f"f_hat.{last}"].to(dev)), vio["fhat_to_img"]), 1e-4)
    else:
        emit(check="var fixtures", result="SKIP", reason=f"{vr} not found")


# ----------------------------------------------------------------------------------------------------
# Triton SJD kernel vs torch reference
# ----------------------------------------------------------------------------------------------------
def section_kernel():
    import os

    from vision_ar.sampling.jacobi_kernels import resolve_backend, triton_mismatches

    chosen = resolve_backend("auto", torch.device(DEVICE))
    emit(check=f"sjd backend chosen on {DEVICE}", backend=chosen,
         result="PASS" if chosen == ("triton" if DEVICE == "cuda" else "torch") else "FAIL")
    if DEVICE != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        emit(check="triton accept/resample == torch reference", result="SKIP",
             reason="no GPU: run with TRITON_INTERPRET=1 (tests/test_jacobi_kernels.py does)")
        return
    shapes = [(1, 15, 16384), (16, 15, 16384), (64, 15, 4096), (3, 1, 7), (8, 31, 1000)]
    bad = len(triton_mismatches(shapes, DEVICE, sharpness=3.0))
    emit(check="triton accept/resample == torch reference", cases=5, mismatches=bad,
         result="PASS" if bad == 0 else "FAIL")


# ----------------------------------------------------------------------------------------------------
# throughput
# ----------------------------------------------------------------------------------------------------
def _gpt_pipe(precision, compile_mode):
    from vision_ar.pipelines.gpt import GPTPipeline
    from vision_ar.precision import apply_precision
    from vision_ar.registry import create

    torch.manual_seed(0)
    gpt = create("gpt-b").eval()
    torch.nn.init.normal_(gpt.output.weight, std=0.02)
    pipe = GPTPipeline(create("vq-16").eval(), gpt).to(DEVICE)
    chosen = apply_precision(pipe, precision, batch_size=1, verbose=False)
    if compile_mode:
        gpt.compile_decode(mode=compile_mode)
    return pipe, chosen


def section_speed(args):
    from vision_ar.pipelines.var import VARPipeline
    from vision_ar.precision import apply_precision
    from vision_ar.registry import create

    torch.manual_seed(0)
    if "var" in args.models:
        var = create("var-d16").eval()
        vpipe = VARPipeline(create("var-vqvae-f16").eval(), var).to(DEVICE)
        vprec = apply_precision(vpipe, args.precision, batch_size=max(args.batch), verbose=False)
        if args.compile:
            var.compile_scales(mode=args.compile)
    gpipe, gprec = _gpt_pipe(args.precision, args.compile)
    samplers = [s for s, m in (("loop", "gpt"), ("sjd", "gpt-sjd")) if m in args.models]
    with torch.inference_mode():
        for b in args.batch:
            labels = [i % 1000 for i in range(b)]
            g = lambda: torch.Generator(DEVICE).manual_seed(0)  # noqa: E731
            if "var" in args.models:
                s = timed(lambda: vpipe(labels, guidance_scale=1.5, generator=g(), output_type="pt"), args.repeats)
                emit(check="speed", model="var-d16", batch=b, precision=vprec.describe(), compile=args.compile,
                     seconds=round(s, 4), images_per_s=round(b / s, 2))
            for sampler in samplers:
                out = {}

                def run():
                    out["r"] = gpipe(labels, guidance_scale=2.0, top_k=2000, generator=g(), sampler=sampler,
                                     output_type="pt")

                s = timed(run, args.repeats)
                emit(check="speed", model=f"gpt-b {sampler}", batch=b, precision=gprec.describe(),
                     compile=args.compile, seconds=round(s, 4), images_per_s=round(b / s, 2),
                     tokens_per_s=round(b * 256 / s, 1), forward_passes=out["r"].stats.get("forward_passes"))


# ----------------------------------------------------------------------------------------------------
# roofline of the batch-1 decode step
# ----------------------------------------------------------------------------------------------------
def measured_copy_bandwidth() -> float:
    x = torch.empty(2 * 2**30 if DEVICE == "cuda" else 2**28, dtype=torch.uint8, device=DEVICE)
    y = torch.empty_like(x)
    s = timed(lambda: y.copy_(x), 5)
    return 2 * x.numel() / s  # read + write


def section_roofline(args):
    from vision_ar.nn.quantized_linear import CastLinear, Int8Linear

    name = torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu"
    spec = next((v for k, v in SPEC_BANDWIDTH.items() if k in name), None)
    copy_bw = measured_copy_bandwidth()
    for compile_mode in [None] + ([args.compile or "reduce-overhead"] if DEVICE == "cuda" or args.compile else []):
        pipe, prec = _gpt_pipe(args.precision, compile_mode)
        gpt = pipe.gpt
        weight_bytes = 0
        for m in gpt.modules():
            if isinstance(m, torch.nn.Linear):
                weight_bytes += m.weight.numel() * m.weight.element_size()
            elif isinstance(m, CastLinear):
                weight_bytes += m.weight.numel() * m.weight.element_size()
            elif isinstance(m, Int8Linear):
                weight_bytes += m.weight_int8.numel() + m.scales.numel() * m.scales.element_size()
        cond = torch.tensor([1, 1000], device=DEVICE)  # one image, CFG: conditional + null row
        n = args.tokens
        with torch.inference_mode():
            gpt.setup_cache(2)
            gpt.prefill(cond)
            tok = torch.zeros(2, 1, dtype=torch.long, device=DEVICE)

            def steps():
                gpt.truncate_cache(1)
                for i in range(n - 1):
                    gpt.decode(tok, 1 + i)

            s = timed(steps, 3) / (n - 1)
        cache = gpt._caches[0]
        kv_bytes = len(gpt._caches) * 2 * cache.k[:, :, : 1 + n // 2].numel() * cache.k.element_size()  # mean prefix
        bw = (weight_bytes + kv_bytes) / s
        emit(check="roofline", device=name, precision=prec.describe(), compile=compile_mode,
             step_ms=round(s * 1e3, 4), bytes_per_step=weight_bytes + kv_bytes, achieved_GBps=round(bw / 1e9, 1),
             copy_GBps=round(copy_bw / 1e9, 1), spec_GBps=None if spec is None else spec / 1e9,
             fraction_of_copy=round(bw / copy_bw, 3),
             fraction_of_spec=None if spec is None else round(bw / spec, 3), target_fraction=0.6)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sections", nargs="+", default=["parity", "kernel", "speed", "roofline"],
                    choices=["parity", "kernel", "speed", "roofline"])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 16, 64])
    ap.add_argument("--precision", default="bf16")
    ap.add_argument("--compile", default=None, help="compile mode for the speed section (e.g. reduce-overhead)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=256, help="roofline: decode steps timed")
    ap.add_argument("--models", nargs="+", default=["var", "gpt", "gpt-sjd"], choices=["var", "gpt", "gpt-sjd"],
                    help="speed section: which jobs")
    ap.add_argument("--device", default="cuda", help="cuda; cpu = a dry run of the same code")
    args = ap.parse_args(argv)
    global DEVICE
    DEVICE = args.device
    if DEVICE == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA device: this script checks the GPU path (--device cpu runs it as a dry run)")
    for s in args.sections:
        t0 = time.perf_counter()
        if s == "parity":
            section_parity()
        elif s == "kernel":
            section_kernel()
        else:
            {"speed": section_speed, "roofline": section_roofline}[s](args)
        emit(section=s, seconds=round(time.perf_counter() - t0, 1))
    if FAILED:
        sys.exit(f"FAILED: {', '.join(FAILED)}")


if __name__ == "__main__":
    main()
