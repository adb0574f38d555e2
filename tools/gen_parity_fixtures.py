#!/usr/bin/env python3
"""Writes the parity fixtures in tests/fixtures/ that the C Llama forward/backward is checked against.

A plain PyTorch Llama decoder (Hugging Face LlamaForCausalLM semantics, no transformers import needed)
is run in float64 on float32-drawn weights; each file stores the weights (F32, HF names), input_ids and
targets (I32), the expected logits and loss (F64) and every parameter's gradient (F64, "grad.<name>"),
with the config in the safetensors metadata.

usage: python3 tools/gen_parity_fixtures.py [--out tests/fixtures]
"""
import argparse
import math
import os

import torch
from safetensors.torch import save_file

CASES = {
    "parity_gqa": dict(
        vocab_size=67, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
        num_attention_heads=6, num_key_value_heads=2, rms_norm_eps=1e-5, rope_theta=10000.0,
        tie_word_embeddings=False, batch=2, seq=11, seed=1234, n_ignored=4),
    "parity_tied": dict(
        vocab_size=53, hidden_size=32, intermediate_size=72, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, rms_norm_eps=1e-6, rope_theta=500000.0,
        tie_word_embeddings=True, batch=1, seq=9, seed=5678, n_ignored=0),
}
MAX_POS = 64


def param_shapes(c):
    d, f, v = c["hidden_size"], c["intermediate_size"], c["vocab_size"]
    hd = d // c["num_attention_heads"]
    qd, kvd = c["num_attention_heads"] * hd, c["num_key_value_heads"] * hd
    shapes = {"model.embed_tokens.weight": (v, d)}
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes[p + "input_layernorm.weight"] = (d,)
        shapes[p + "self_attn.q_proj.weight"] = (qd, d)
        shapes[p + "self_attn.k_proj.weight"] = (kvd, d)
        shapes[p + "self_attn.v_proj.weight"] = (kvd, d)
        shapes[p + "self_attn.o_proj.weight"] = (d, qd)
        shapes[p + "post_attention_layernorm.weight"] = (d,)
        shapes[p + "mlp.gate_proj.weight"] = (f, d)
        shapes[p + "mlp.up_proj.weight"] = (f, d)
        shapes[p + "mlp.down_proj.weight"] = (d, f)
    shapes["model.norm.weight"] = (d,)
    if not c["tie_word_embeddings"]:
        shapes["lm_head.weight"] = (v, d)
    return shapes


def draw_weights(c, gen):
    # Scales well above HF's 0.02 init so that every term (attention mixing, SwiGLU gating, norm
    # weights) moves the logits and gradients visibly; a bug in any one of them must show.
    w = {}
    for name, shape in param_shapes(c).items():
        if name == "model.embed_tokens.weight":
            w[name] = torch.randn(shape, generator=gen, dtype=torch.float32) * 0.5
        elif len(shape) == 1:
            w[name] = 1.0 + 0.1 * torch.randn(shape, generator=gen, dtype=torch.float32)
        else:
            w[name] = torch.randn(shape, generator=gen, dtype=torch.float32) * 0.15
    return w


def rms_norm(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def rope_cos_sin(T, hd, theta):
    inv_freq = 1.0 / (theta ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))
    angle = torch.arange(T, dtype=torch.float64)[:, None] * inv_freq[None, :]
    emb = torch.cat((angle, angle), dim=-1)  # (T, hd)
    return emb.cos(), emb.sin()


def forward(c, p, ids):
    """Logits (B,T,V) of the plain Llama decoder; p maps HF names to float64 tensors."""
    B, T = ids.shape
    d = c["hidden_size"]
    H, Hkv = c["num_attention_heads"], c["num_key_value_heads"]
    hd = d // H
    eps = c["rms_norm_eps"]
    cos, sin = rope_cos_sin(T, hd, c["rope_theta"])
    causal = torch.ones(T, T, dtype=torch.bool).tril()

    x = p["model.embed_tokens.weight"][ids.long()]
    for i in range(c["num_hidden_layers"]):
        pre = f"model.layers.{i}."
        h = rms_norm(x, p[pre + "input_layernorm.weight"], eps)
        q = (h @ p[pre + "self_attn.q_proj.weight"].T).view(B, T, H, hd).transpose(1, 2)
        k = (h @ p[pre + "self_attn.k_proj.weight"].T).view(B, T, Hkv, hd).transpose(1, 2)
        v = (h @ p[pre + "self_attn.v_proj.weight"].T).view(B, T, Hkv, hd).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        # kv head j serves the contiguous group of q heads j*(H/Hkv) .. (j+1)*(H/Hkv)-1.
        k = k.repeat_interleave(H // Hkv, dim=1)
        v = v.repeat_interleave(H // Hkv, dim=1)
        s = (q @ k.transpose(-1, -2)) / math.sqrt(hd)
        s = s.masked_fill(~causal, float("-inf"))
        a = torch.softmax(s, dim=-1) @ v  # (B,H,T,hd)
        a = a.transpose(1, 2).reshape(B, T, H * hd)
        x = x + a @ p[pre + "self_attn.o_proj.weight"].T
        h = rms_norm(x, p[pre + "post_attention_layernorm.weight"], eps)
        g = h @ p[pre + "mlp.gate_proj.weight"].T
        u = h @ p[pre + "mlp.up_proj.weight"].T
        x = x + (torch.nn.functional.silu(g) * u) @ p[pre + "mlp.down_proj.weight"].T
    x = rms_norm(x, p["model.norm.weight"], eps)
    head = p["model.embed_tokens.weight"] if c["tie_word_embeddings"] else p["lm_head.weight"]
    return x @ head.T


def loss_fn(logits, targets):
    V = logits.shape[-1]
    return torch.nn.functional.cross_entropy(logits.reshape(-1, V), targets.reshape(-1).long(),
                                             ignore_index=-1, reduction="mean")


def make_batch(c, gen):
    B, T, V = c["batch"], c["seq"], c["vocab_size"]
    stream = torch.randint(0, V, (B, T + 1), generator=gen)
    ids = stream[:, :T].to(torch.int32).contiguous()
    targets = stream[:, 1:].to(torch.int32).clone()
    if c["n_ignored"]:
        # Ignored targets at the first, last and some interior positions, so a kernel that masks
        # the wrong end of the sequence or counts the wrong denominator is caught.
        flat = targets.view(-1)
        picks = [0, flat.numel() - 1]
        rest = torch.randperm(flat.numel() - 2, generator=gen)[: c["n_ignored"] - 2] + 1
        picks += rest.tolist()
        flat[torch.tensor(picks)] = -1
    return ids, targets


def hf_crosscheck(c, w32, ids, targets, logits, grads):
    """Compares against transformers.LlamaForCausalLM when it is importable; skipped otherwise."""
    try:
        import transformers
    except ImportError:
        print("  transformers not importable: cross-check skipped")
        return
    cfg = transformers.LlamaConfig(
        vocab_size=c["vocab_size"], hidden_size=c["hidden_size"],
        intermediate_size=c["intermediate_size"], num_hidden_layers=c["num_hidden_layers"],
        num_attention_heads=c["num_attention_heads"], num_key_value_heads=c["num_key_value_heads"],
        rms_norm_eps=c["rms_norm_eps"], rope_theta=c["rope_theta"],
        tie_word_embeddings=c["tie_word_embeddings"], max_position_embeddings=MAX_POS,
        hidden_act="silu", attention_bias=False, mlp_bias=False, attn_implementation="eager")
    model = transformers.LlamaForCausalLM(cfg).double()
    sd = {k: v.double() for k, v in w32.items()}
    if c["tie_word_embeddings"]:
        sd["lm_head.weight"] = sd["model.embed_tokens.weight"]
    model.load_state_dict(sd, strict=False)
    out = model(input_ids=ids.long()).logits
    # HF shifts labels internally; our targets are already aligned, so take the loss on its logits.
    loss_fn(out, targets).backward()
    # HF computes the RoPE tables in float32 even in a float64 model, hence the loose tolerance.
    err = (out.detach() - logits).abs().max().item()
    named = dict(model.named_parameters())
    gerr = max((named[k].grad - g).abs().max().item() for k, g in grads.items())
    print(f"  transformers cross-check: max |dlogits| {err:.3e}, max |dgrad| {gerr:.3e}")
    assert err < 1e-4 and gerr < 1e-4, "plain model disagrees with transformers"


def build_case(name, c, out_dir):
    gen = torch.Generator().manual_seed(c["seed"])
    w32 = draw_weights(c, gen)
    ids, targets = make_batch(c, gen)
    p = {k: v.double().requires_grad_(True) for k, v in w32.items()}
    logits = forward(c, p, ids)
    loss = loss_fn(logits, targets)
    loss.backward()
    grads = {k: v.grad.detach().clone() for k, v in p.items()}

    tensors = dict(w32)
    tensors["input_ids"] = ids
    tensors["targets"] = targets
    tensors["logits"] = logits.detach().contiguous()
    tensors["loss"] = loss.detach().reshape(())
    for k, g in grads.items():
        tensors["grad." + k] = g.contiguous()

    meta = {k: str(c[k]) for k in ("vocab_size", "hidden_size", "intermediate_size",
                                   "num_hidden_layers", "num_attention_heads",
                                   "num_key_value_heads", "batch", "seq")}
    meta["head_dim"] = str(c["hidden_size"] // c["num_attention_heads"])
    meta["rms_norm_eps"] = repr(c["rms_norm_eps"])
    meta["rope_theta"] = repr(c["rope_theta"])
    meta["tie_word_embeddings"] = "true" if c["tie_word_embeddings"] else "false"
    meta["max_position_embeddings"] = str(MAX_POS)

    path = os.path.join(out_dir, name + ".safetensors")
    save_file(tensors, path, metadata=meta)
    gmax = max(g.abs().max().item() for g in grads.values())
    gmin = min(g.abs().max().item() for g in grads.values())
    print(f"{path}: {os.path.getsize(path)} bytes, loss {loss.item():.6f}, "
          f"max|logits| {logits.abs().max().item():.4f}, valid targets "
          f"{int((targets != -1).sum())}/{targets.numel()}")
    print(f"  per-tensor max|grad| ranges {gmin:.3e} .. {gmax:.3e}")
    for k, g in grads.items():
        print(f"    grad.{k}: max|g| {g.abs().max().item():.3e}")
    hf_crosscheck(c, w32, ids, targets, logits.detach(), grads)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                  "..", "tests", "fixtures"))
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.set_num_threads(1)  # deterministic reduction order, so regenerated files are identical
    for name, c in CASES.items():
        build_case(name, c, os.path.normpath(args.out))


if __name__ == "__main__":
    main()
