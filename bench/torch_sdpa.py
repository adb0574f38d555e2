#!/usr/bin/env python3
"""PyTorch peer for bench/gpu_sdpa.c: times torch.nn.functional.scaled_dot_product_attention in
bf16, causal, grouped-query heads (enable_gqa, or K/V repeated per group where that is missing), on
the same shapes and the same (B, T, H, hd) layout (transposed views, as a Llama layer hands them
over), forward and backward, for PyTorch's default choice of kernel and for each backend asked
for explicitly. One JSON line per shape and backend: ms per call (CUDA events around ITERS calls
after two warm-ups) and TFLOP/s at the causal FLOP count (forward 2*2*B*Hq*T^2*hd/2, backward 2.5x).

usage: python3 bench/torch_sdpa.py [--iters 10] [--backends default,flash,cudnn,efficient] [B,T,Hq,Hkv,hd ...]
"""
import argparse
import json

import torch
import torch.nn.functional as F

SHAPES = ["1,2048,32,8,128", "8,2048,32,8,128", "1,8192,32,8,128", "4,8192,32,8,128",
          "1,32768,32,8,128", "2,32768,32,8,128", "8,2048,32,8,64"]


def backend_ctx(name):
    """A context manager that restricts SDPA to one backend ('default' leaves PyTorch's choice)."""
    import contextlib
    if name == "default":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel
    return sdpa_kernel({"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
                        "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}[name])


def timed(fn, iters):
    fn()
    fn()
    torch.cuda.synchronize()
    e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    e0.record()
    for _ in range(iters):
        fn()
    e1.record()
    e1.synchronize()
    return e0.elapsed_time(e1) / iters


def picked_kernels(attn):
    """Which kernels PyTorch's default choice ran, from its profiler (names cut short)."""
    try:
        from torch.profiler import ProfilerActivity, profile
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            attn()
            torch.cuda.synchronize()
        names = sorted({e.key for e in prof.key_averages() if "CUDA" in str(getattr(e, "device_type", ""))})
        return [n[:80] for n in names][:4]
    except Exception as e:  # the timing stands without it
        return [f"profiler failed: {type(e).__name__}"]


def run(shape, backend, iters):
    B, T, Hq, Hkv, hd = shape
    rec = {"impl": "torch-sdpa", "torch": torch.__version__, "backend": backend, "B": B, "T": T, "Hq": Hq,
           "Hkv": Hkv, "hd": hd, "iters": iters}
    fwd_flop = 2.0 * B * Hq * T * T * hd
    bwd_flop = 2.5 * fwd_flop
    gqa = Hq != Hkv
    # enable_gqa where this PyTorch and backend take it; else K and V repeated per group (the
    # repeat is then part of what is timed, as it is in a model that has to do it).
    modes = ["enable_gqa", "repeat_interleave"] if gqa else ["mha"]
    errors = []
    for mode in modes:
        try:
            gen = torch.Generator(device="cuda").manual_seed(0)
            mk = lambda h: (torch.rand(B, T, h, hd, device="cuda", generator=gen) * 4 - 2).to(torch.bfloat16)
            # Leaves in the (B, T, H, hd) layout ounce's layers hold, seen as (B, H, T, hd).
            qb, kb, vb = (mk(h).requires_grad_() for h in (Hq, Hkv, Hkv))
            dout = mk(Hq).transpose(1, 2)

            def attn():
                q, k, v = qb.transpose(1, 2), kb.transpose(1, 2), vb.transpose(1, 2)
                if mode == "enable_gqa":
                    return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
                if mode == "repeat_interleave":
                    k = k.repeat_interleave(Hq // Hkv, dim=1)
                    v = v.repeat_interleave(Hq // Hkv, dim=1)
                return F.scaled_dot_product_attention(q, k, v, is_causal=True)

            with backend_ctx(backend):
                with torch.no_grad():
                    fwd_ms = timed(attn, iters)
                out = attn()
                bwd_ms = timed(lambda: torch.autograd.grad(out, (qb, kb, vb), dout, retain_graph=True), iters)
                if backend == "default":
                    rec["kernels"] = picked_kernels(attn)
            rec.update(gqa=mode, fwd_ms=round(fwd_ms, 4), bwd_ms=round(bwd_ms, 4),
                       fwd_tflops=round(fwd_flop / fwd_ms * 1e-9, 1), bwd_tflops=round(bwd_flop / bwd_ms * 1e-9, 1),
                       fwd_bwd_tflops=round((fwd_flop + bwd_flop) / (fwd_ms + bwd_ms) * 1e-9, 1),
                       peak_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2))
            break
        except Exception as e:  # a backend that rejects a shape or mode is a result too
            errors.append(f"{mode}: {type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}")
        finally:
            qb = kb = vb = dout = out = None
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
    if errors:
        rec["errors"] = errors
    print(json.dumps(rec), flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--backends", default="default,flash,cudnn")
    ap.add_argument("shapes", nargs="*", default=SHAPES)
    a = ap.parse_args()
    print(json.dumps({"torch": torch.__version__, "cuda": torch.version.cuda,
                      "cudnn": torch.backends.cudnn.version(), "device": torch.cuda.get_device_name()}), flush=True)
    for s in a.shapes:
        shape = tuple(int(x) for x in s.split(","))
        for b in a.backends.split(","):
            run(shape, b, a.iters)


if __name__ == "__main__":
    main()
