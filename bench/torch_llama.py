#!/usr/bin/env python3
"""PyTorch peer benchmark for ounce: trains the same plain Llama decoder in float32 with AdamW on
uniform random tokens and prints one JSON line (median ms/step, tokens/s, peak RSS, final loss).

usage: python3 bench/torch_llama.py --preset 60m --batch 4 --seq 256 --steps 5 --warmup-steps 2 --threads 2
"""
import argparse
import json
import math
import resource
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

PRESETS = {
    # name: (vocab, hidden, intermediate, layers, heads, kv_heads)
    "tiny": (258, 32, 64, 2, 4, 2),
    "demo": (258, 256, 688, 4, 4, 2),
    "60m": (32000, 512, 1376, 8, 8, 8),
    "130m": (32000, 768, 2048, 12, 12, 12),
    "350m": (32000, 1024, 2736, 24, 16, 16),
    "1b": (32000, 2048, 5461, 24, 32, 32),
}
ROPE_THETA = 10000.0
RMS_EPS = 1e-5


def rms_norm(x, w, eps):
    if hasattr(F, "rms_norm"):  # one fused op where available instead of five elementwise kernels
        return F.rms_norm(x, (x.shape[-1],), w, eps)
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


class RMSNorm(nn.Module):
    def __init__(self, d, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x):
        return rms_norm(x, self.weight, self.eps)


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


class Block(nn.Module):
    def __init__(self, d, f, heads, kv_heads):
        super().__init__()
        self.h, self.hkv, self.hd = heads, kv_heads, d // heads
        self.input_layernorm = RMSNorm(d, RMS_EPS)
        self.q_proj = nn.Linear(d, heads * self.hd, bias=False)
        self.k_proj = nn.Linear(d, kv_heads * self.hd, bias=False)
        self.v_proj = nn.Linear(d, kv_heads * self.hd, bias=False)
        self.o_proj = nn.Linear(heads * self.hd, d, bias=False)
        self.post_attention_layernorm = RMSNorm(d, RMS_EPS)
        self.gate_proj = nn.Linear(d, f, bias=False)
        self.up_proj = nn.Linear(d, f, bias=False)
        self.down_proj = nn.Linear(f, d, bias=False)

    def forward(self, x, cos, sin):
        B, T, _ = x.shape
        h = self.input_layernorm(x)
        q = self.q_proj(h).view(B, T, self.h, self.hd).transpose(1, 2)
        k = self.k_proj(h).view(B, T, self.hkv, self.hd).transpose(1, 2)
        v = self.v_proj(h).view(B, T, self.hkv, self.hd).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        if self.hkv != self.h:
            k = k.repeat_interleave(self.h // self.hkv, dim=1)
            v = v.repeat_interleave(self.h // self.hkv, dim=1)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.o_proj(a.transpose(1, 2).reshape(B, T, self.h * self.hd))
        h = self.post_attention_layernorm(x)
        return x + self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h))


class Llama(nn.Module):
    def __init__(self, vocab, d, f, layers, heads, kv_heads, max_seq):
        super().__init__()
        self.embed_tokens = nn.Embedding(vocab, d)
        self.layers = nn.ModuleList(Block(d, f, heads, kv_heads) for _ in range(layers))
        self.norm = RMSNorm(d, RMS_EPS)
        self.lm_head = nn.Linear(d, vocab, bias=False)
        hd = d // heads
        inv_freq = 1.0 / (ROPE_THETA ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
        ang = torch.arange(max_seq, dtype=torch.float32)[:, None] * inv_freq[None, :]
        emb = torch.cat((ang, ang), dim=-1)
        self.register_buffer("cos", emb.cos(), persistent=False)
        self.register_buffer("sin", emb.sin(), persistent=False)
        # Same init as ounce (HF initializer_range) so the loss curves start from the same place.
        for p in self.parameters():
            if p.dim() >= 2:
                nn.init.normal_(p, 0.0, 0.02)

    def forward(self, ids):
        T = ids.shape[1]
        cos, sin = self.cos[:T], self.sin[:T]
        x = self.embed_tokens(ids)
        for blk in self.layers:
            x = blk(x, cos, sin)
        return self.lm_head(self.norm(x))


class HFLogits(nn.Module):
    """transformers' model with this file's interface: token ids in, logits out."""

    def __init__(self, hf):
        super().__init__()
        self.hf = hf

    def forward(self, ids):
        return self.hf(input_ids=ids).logits


def make_optimizer(model, impl):
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}]
    kw = {"fused": {"fused": True}, "foreach": {"foreach": True}, "forloop": {"foreach": False}}[impl]
    return torch.optim.AdamW(groups, lr=1e-3, betas=(0.9, 0.95), eps=1e-8, **kw)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="60m")
    ap.add_argument("--vocab", type=int, default=None)
    ap.add_argument("--ffn", type=int, default=None, help="override the preset's intermediate size")
    ap.add_argument("--impl", choices=["lean", "hf"], default="lean",
                    help="lean: this file's model; hf: transformers' LlamaForCausalLM (SDPA attention), the same shape")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup-steps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--grad-clip", type=float, default=1.0)
    # fused measured fastest on CPU (torch 2.x); the others stay selectable for comparison.
    ap.add_argument("--optim-impl", choices=["fused", "foreach", "forloop"], default="fused")
    ap.add_argument("--seed", type=int, default=0)
    # GPU peer (bench/gpu.sh): the same model on a CUDA device, in fp32 (the precision ounce's
    # CUDA backend computes in; TF32 stays off, torch's default) or bf16 weights and activations
    # (the peers' setup in bench/RESULTS.md: bf16 parameters, fused AdamW on them).
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    vocab, d, f, layers, heads, kv_heads = PRESETS[args.preset]
    if args.ffn:
        f = args.ffn
    vocab = args.vocab or vocab
    if args.impl == "hf":
        from transformers import LlamaConfig, LlamaForCausalLM
        cfg = LlamaConfig(vocab_size=vocab, hidden_size=d, intermediate_size=f, num_hidden_layers=layers,
                          num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=max(args.seq, 2048),
                          rms_norm_eps=1e-6, tie_word_embeddings=False, attn_implementation="sdpa")
        model = HFLogits(LlamaForCausalLM(cfg))
    else:
        model = Llama(vocab, d, f, layers, heads, kv_heads, args.seq)
    dev = torch.device(args.device)
    model = model.to(dev, dtype=torch.bfloat16 if args.dtype == "bf16" else torch.float32)
    model.train()
    opt = make_optimizer(model, args.optim_impl)
    gen = torch.Generator().manual_seed(args.seed + 1)

    times, loss_val = [], float("nan")
    for step in range(args.warmup_steps + args.steps):
        tokens = torch.randint(0, vocab, (args.batch, args.seq + 1), generator=gen).to(dev)
        ids, targets = tokens[:, :-1], tokens[:, 1:]
        t0 = time.perf_counter()
        logits = model(ids)
        loss = F.cross_entropy(logits.view(-1, vocab).float(), targets.reshape(-1))
        loss.backward()
        if args.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss_val = loss.item()  # forces completion inside the timed region
        t1 = time.perf_counter()
        if step >= args.warmup_steps:
            times.append(t1 - t0)

    ms = statistics.median(times) * 1e3 if times else float("nan")
    print(json.dumps({
        "impl": "pytorch" if args.impl == "lean" else "transformers",
        "torch": torch.__version__,
        "preset": args.preset,
        "vocab": vocab,
        "params": sum(p.numel() for p in model.parameters()),
        "optim_impl": args.optim_impl,
        "batch": args.batch,
        "seq": args.seq,
        "threads": torch.get_num_threads(),
        "steps": args.steps,
        "ms_per_step": round(ms, 3),
        "tokens_per_s": round(args.batch * args.seq / (ms / 1e3), 1) if times else None,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "device": args.device,
        "dtype": args.dtype,
        "peak_gpu_bytes": torch.cuda.max_memory_allocated() if dev.type == "cuda" else None,
        "final_loss": None if math.isnan(loss_val) else round(loss_val, 6),
    }))


if __name__ == "__main__":
    main()
