#!/usr/bin/env python3
"""Writes the Hugging Face interop fixtures in tests/fixtures/hf/: small randomly initialised
`transformers` LlamaForCausalLM models saved with save_pretrained (so the files are exactly what the
Hugging Face ecosystem produces: config.json in transformers' own spelling, single or sharded
safetensors, f32/bf16/f16), plus expected.safetensors with input ids and the fp32 logits transformers
computes for them. tests/test_hf.c loads each directory with ounce and compares logits.

Cases cover: grouped-query heads, untied and tied embeddings, an explicit head_dim, linear and
Llama-3 rope scaling (with positions beyond original_max_position_embeddings, so the scaling
matters), sharded checkpoints and the three floating dtypes.

Needs torch, transformers and safetensors (development only; the tests read the committed files).
usage: python3 tools/gen_hf_fixtures.py [--out tests/fixtures/hf]
"""
import argparse
import os
import shutil

import torch
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM

BASE = dict(vocab_size=80, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
            rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2)

CASES = {
    # name: (config overrides, save dtype, max_shard_size or None)
    "gqa_linear_f32": (dict(rope_theta=10000.0,
                            rope_scaling={"rope_type": "linear", "factor": 2.0}), torch.float32, None),
    "tied_bf16": (dict(tie_word_embeddings=True, num_key_value_heads=4, rope_theta=500000.0),
                  torch.bfloat16, None),
    "llama3_sharded_f16": (dict(head_dim=16, rope_theta=500000.0,
                                rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                              "high_freq_factor": 4.0,
                                              "original_max_position_embeddings": 8}),
                           torch.float16, "20KB"),
}
BATCH, SEQ = 2, 24


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="tests/fixtures/hf")
    args = ap.parse_args()
    for i, (name, (over, dtype, shard)) in enumerate(CASES.items()):
        torch.manual_seed(100 + i)
        cfg = LlamaConfig(**{**BASE, **over}, attn_implementation="eager")
        model = LlamaForCausalLM(cfg).float().eval()
        # Larger than the 0.02 default so the logits are far from zero and a relative
        # comparison means something; rounded to the saved dtype first, so both sides see the
        # same weights.
        with torch.no_grad():
            for pname, p in model.named_parameters():
                if "norm" in pname:
                    p.copy_(1.0 + 0.1 * torch.randn_like(p))
                else:
                    p.copy_(0.2 * torch.randn_like(p))
                p.copy_(p.to(dtype).float())
        ids = torch.randint(0, cfg.vocab_size, (BATCH, SEQ), dtype=torch.int64)
        with torch.no_grad():
            logits = model(input_ids=ids).logits.float()
        d = os.path.join(args.out, name)
        shutil.rmtree(d, ignore_errors=True)
        kw = {"max_shard_size": shard} if shard else {}
        model.to(dtype).save_pretrained(d, **kw)
        for extra in ("generation_config.json",):
            if os.path.exists(os.path.join(d, extra)):
                os.remove(os.path.join(d, extra))
        save_file({"input_ids": ids.to(torch.int32).contiguous(), "logits": logits.contiguous()},
                  os.path.join(d, "expected.safetensors"))
        print(name, sorted(os.listdir(d)), "logits absmax %.3f" % logits.abs().max().item())


if __name__ == "__main__":
    main()
