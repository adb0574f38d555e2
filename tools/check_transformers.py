#!/usr/bin/env python3
"""Loads a model directory written by ounce with Hugging Face transformers (LlamaForCausalLM.
from_pretrained, unchanged) and, when present, its tokenizer with `tokenizers`, then compares the
fp32 logits transformers computes with ounce's (build/tools/logits) on random token ids.

Prints one JSON line {"model", "max_abs_diff", "rel_error", "ok"}; exits 1 if the relative error
(max |ounce - transformers| / max |transformers|) exceeds --tol.
usage: python3 tools/check_transformers.py MODEL_DIR [--logits build/tools/logits] [--tol 1e-4]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import torch
from safetensors.torch import load_file, save_file
from transformers import LlamaForCausalLM


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--logits", default="build/tools/logits")
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--seq", type=int, default=32)
    args = ap.parse_args()
    model = LlamaForCausalLM.from_pretrained(args.model, torch_dtype=torch.float32,
                                             attn_implementation="eager").eval()
    if os.path.exists(os.path.join(args.model, "tokenizer.json")):
        from tokenizers import Tokenizer
        Tokenizer.from_file(os.path.join(args.model, "tokenizer.json"))  # must load unchanged
    torch.manual_seed(0)
    seq = min(args.seq, model.config.max_position_embeddings)
    ids = torch.randint(0, model.config.vocab_size, (2, seq), dtype=torch.int64)
    with torch.no_grad():
        ref = model(input_ids=ids).logits.float()
    with tempfile.TemporaryDirectory() as tmp:
        save_file({"input_ids": ids.to(torch.int32)}, os.path.join(tmp, "ids.safetensors"))
        subprocess.run([args.logits, args.model, os.path.join(tmp, "ids.safetensors"),
                        os.path.join(tmp, "out.safetensors")], check=True)
        ours = load_file(os.path.join(tmp, "out.safetensors"))["logits"]
    diff = (ours - ref).abs().max().item()
    rel = diff / ref.abs().max().item()
    ok = rel <= args.tol
    print(json.dumps({"model": args.model, "max_abs_diff": diff, "rel_error": rel, "ok": ok}))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
