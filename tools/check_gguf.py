#!/usr/bin/env python3
"""Checks a GGUF file ounce wrote with the `gguf` package's reader (the one llama.cpp's tools use):
the keys llama.cpp's Llama loader reads are present with the value types it insists on, and every
tensor, dequantized by the package and with llama.cpp's q/k permutation undone, equals the weights
of the Hugging Face directory it came from (exactly for F32, within the type's rounding otherwise).

usage: python3 tools/check_gguf.py FILE.gguf HF_DIR [--type f32|f16|bf16|q8_0|q4_0]
Needs numpy and gguf (pip install gguf numpy); tests/e2e.sh skips it where they are missing.
"""
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gen_gguf_fixtures import gguf_name, permute, read_safetensors  # noqa: E402

import gguf  # noqa: E402
from gguf import GGUFValueType as V  # noqa: E402

REQUIRED = {
    "general.architecture": V.STRING, "general.alignment": V.UINT32, "llama.context_length": V.UINT32,
    "llama.embedding_length": V.UINT32, "llama.block_count": V.UINT32, "llama.feed_forward_length": V.UINT32,
    "llama.attention.head_count": V.UINT32, "llama.attention.head_count_kv": V.UINT32,
    "llama.rope.dimension_count": V.UINT32, "llama.attention.layer_norm_rms_epsilon": V.FLOAT32,
    "llama.rope.freq_base": V.FLOAT32,
}
TOKENIZER = {
    "tokenizer.ggml.model": V.STRING, "tokenizer.ggml.tokens": V.ARRAY, "tokenizer.ggml.token_type": V.ARRAY,
}
# The step of each type relative to a block's largest magnitude.
TOL = {"F32": 0.0, "F16": 1 / 1024, "BF16": 1 / 128, "Q8_0": 1 / 127, "Q4_0": 1 / 7}


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    path, hf = sys.argv[1], sys.argv[2]
    r = gguf.GGUFReader(path)
    problems = []
    fields = r.fields
    for key, vt in list(REQUIRED.items()) + (list(TOKENIZER.items()) if "tokenizer.ggml.model" in fields else []):
        f = fields.get(key)
        if f is None:
            problems.append("missing key %s" % key)
        elif f.types[0] != vt:
            problems.append("key %s has type %s, llama.cpp reads %s" % (key, f.types[0].name, vt.name))
    if "tokenizer.ggml.token_type" in fields and fields["tokenizer.ggml.token_type"].types[-1] != V.INT32:
        problems.append("tokenizer.ggml.token_type must be an array of INT32")
    cfg = json.load(open(os.path.join(hf, "config.json")))
    heads, kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    weights = {}
    for f in sorted(os.listdir(hf)):
        if f.startswith("model") and f.endswith(".safetensors"):
            weights.update(read_safetensors(os.path.join(hf, f)))
    tensors = {t.name: t for t in r.tensors}
    for name, w in weights.items():
        g = tensors.pop(gguf_name(name), None)
        if g is None:
            problems.append("missing tensor %s" % gguf_name(name))
            continue
        if name.endswith("q_proj.weight"):
            w = permute(w, heads)
        elif name.endswith("k_proj.weight"):
            w = permute(w, kv)
        got = gguf.quants.dequantize(g.data, g.tensor_type).reshape(w.shape)
        tol = TOL.get(g.tensor_type.name)
        if tol is None:
            problems.append("%s: unexpected type %s" % (g.name, g.tensor_type.name))
            continue
        bound = tol * np.abs(w).max() + (0 if tol == 0 else 1e-7)
        err = np.abs(got - w).max()
        if err > bound:
            problems.append("%s (%s): max |gguf - hf| = %g > %g" % (g.name, g.tensor_type.name, err, bound))
    for extra in tensors:
        if extra != "rope_freqs.weight":
            problems.append("unexpected tensor %s" % extra)
    for p in problems:
        print("check_gguf: " + p)
    if problems:
        sys.exit(1)
    print("check_gguf: %s: %d tensors and the llama.cpp keys as the gguf package reads them" % (path, len(r.tensors)))


if __name__ == "__main__":
    main()
