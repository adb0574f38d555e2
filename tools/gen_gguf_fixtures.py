#!/usr/bin/env python3
"""Writes tests/fixtures/gguf/ with the `gguf` package (PyPI: pip install gguf numpy), the library
llama.cpp's own converters use, so that tests/test_gguf.c checks ounce's GGUF reader against files
ounce did not write. Only this generator needs Python; the tests read the committed files.

  types.gguf + types_expected.safetensors
      one tensor per type ounce reads (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q5_K, Q6_K) and the
      values the gguf package dequantizes them to (F32, under the same names); metadata of every
      value type. The first six types are quantized by the package from random values; the
      K-quants, which the package only decodes, are random blocks with sane scales.
  gqa_linear_f32.gguf, tied_bf16.gguf, llama3_f16.gguf, gqa_linear_q8_0.gguf
      the Hugging Face fixtures of tests/fixtures/hf converted as llama.cpp's convert_hf_to_gguf
      does it (tensor names, q/k rows permuted for interleaved rotary pairs, llama.* keys, Llama
      3.1's rope scaling as a rope_freqs tensor), so
      ounce's logits can be compared with transformers' (tests/fixtures/hf/*/expected.safetensors).
  tok_gpt2.gguf, tok_llama3.gguf, tok_llama2.gguf
      tokenizer metadata only, from tests/fixtures/tokenizers: byte-level BPE with merges
      (tokenizer.ggml.model "gpt2", pre "gpt2" / "llama-bpe") and a SentencePiece vocabulary with
      scores and token types ("llama"); their encodings must equal the tokenizers library's
      (tests/fixtures/tokenizers/expected.json).
  q2_k.gguf
      a tensor of a type ounce does not read, for the error path.

Run from the repository root: python3 tools/gen_gguf_fixtures.py
"""
import json
import os
import struct
import sys

import numpy as np

try:
    import gguf
    from gguf import GGMLQuantizationType as Q
except ImportError:
    sys.exit("gen_gguf_fixtures.py needs the gguf package: pip install gguf numpy")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "gguf")
HF = os.path.join(ROOT, "tests", "fixtures", "hf")
TOK = os.path.join(ROOT, "tests", "fixtures", "tokenizers")


def write_safetensors(path, tensors):
    """A minimal safetensors writer (F32 only), so the generator needs no torch or safetensors."""
    header, blobs, off = {}, [], 0
    for name, a in tensors.items():
        b = np.ascontiguousarray(a, dtype="<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        b, e = info["data_offsets"]
        raw = data[b:e]
        if info["dtype"] == "F32":
            a = np.frombuffer(raw, dtype="<f4")
        elif info["dtype"] == "F16":
            a = np.frombuffer(raw, dtype="<f2").astype(np.float32)
        elif info["dtype"] == "BF16":
            a = (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
        else:
            continue
        out[name] = a.reshape(info["shape"]).astype(np.float32)
    return out


def k_quant_blocks(rng, qtype, n_blocks):
    """Random K-quant blocks: random quants and packed scales, f16 super-scales kept small and
    finite (random bytes there could be NaN or huge)."""
    def f16(v):
        return np.array([v], dtype="<f2").view(np.uint8)
    blocks = []
    for _ in range(n_blocks):
        if qtype == Q.Q4_K:
            b = np.concatenate([f16(rng.uniform(0.001, 0.02)), f16(rng.uniform(0.001, 0.02)),
                                rng.integers(0, 256, 12 + 128, dtype=np.uint8)])
        elif qtype == Q.Q5_K:
            b = np.concatenate([f16(rng.uniform(0.001, 0.02)), f16(rng.uniform(0.001, 0.02)),
                                rng.integers(0, 256, 12 + 32 + 128, dtype=np.uint8)])
        else:  # Q6_K: ql, qh, int8 scales, d
            b = np.concatenate([rng.integers(0, 256, 128 + 64 + 16, dtype=np.uint8), f16(rng.uniform(0.0005, 0.005))])
        blocks.append(b)
    return np.concatenate(blocks)


def gen_types(rng):
    w = gguf.GGUFWriter(os.path.join(OUT, "types.gguf"), arch="ounce_test")
    # One key of every value type, read back by the test.
    w.add_key_value("test.u8", 200, gguf.GGUFValueType.UINT8)
    w.add_key_value("test.i8", -100, gguf.GGUFValueType.INT8)
    w.add_key_value("test.u16", 60000, gguf.GGUFValueType.UINT16)
    w.add_key_value("test.i16", -30000, gguf.GGUFValueType.INT16)
    w.add_key_value("test.u32", 4000000000, gguf.GGUFValueType.UINT32)
    w.add_key_value("test.i32", -2000000000, gguf.GGUFValueType.INT32)
    w.add_key_value("test.f32", 0.25, gguf.GGUFValueType.FLOAT32)
    w.add_key_value("test.bool", True, gguf.GGUFValueType.BOOL)
    w.add_key_value("test.str", "héllo", gguf.GGUFValueType.STRING)
    w.add_key_value("test.u64", 1 << 40, gguf.GGUFValueType.UINT64)
    w.add_key_value("test.i64", -(1 << 40), gguf.GGUFValueType.INT64)
    w.add_key_value("test.f64", 1.0 / 3.0, gguf.GGUFValueType.FLOAT64)
    w.add_array("test.strs", ["a", "", "ccc"])
    w.add_array("test.ints", [1, -2, 3])
    w.add_array("test.floats", [0.5, 1.5])
    expected = {}
    shape = (3, 256)  # rows, values per row; 256 = one K-quant super-block per row
    for qtype in (Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q4_K, Q.Q5_K, Q.Q6_K):
        name = "t." + qtype.name.lower()
        if qtype in (Q.Q4_K, Q.Q5_K, Q.Q6_K):
            raw = k_quant_blocks(rng, qtype, shape[0]).reshape(shape[0], -1)
        else:
            vals = rng.normal(0, 0.05, size=shape).astype(np.float32)
            vals[0, :32] *= 10  # blocks of different scales
            vals[1, 5] = 0.0
            raw = gguf.quants.quantize(vals, qtype)
        if qtype == Q.F32:
            w.add_tensor(name, raw)
        elif qtype == Q.F16:
            w.add_tensor(name, raw.astype(np.float16))
        else:
            w.add_tensor(name, raw, raw_dtype=qtype)
        expected[name] = gguf.quants.dequantize(raw, qtype).astype(np.float32).reshape(shape)
    # Shapes other than 2-D.
    v1 = rng.normal(size=(7,)).astype(np.float32)
    w.add_tensor("t.vec", v1)
    expected["t.vec"] = v1
    v3 = rng.normal(size=(2, 3, 4)).astype(np.float16)
    w.add_tensor("t.cube", v3)
    expected["t.cube"] = v3.astype(np.float32)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    write_safetensors(os.path.join(OUT, "types_expected.safetensors"), expected)


def permute(w, n_head):
    """llama.cpp's convert_hf_to_gguf: HF's rotate-half rows of each head (first half, second half)
    become interleaved pairs (0, d/2, 1, d/2+1, ...), the layout of its rotary kernels."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


HF_TO_GGUF = {
    "input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
}


def gguf_name(name):
    if name == "model.embed_tokens.weight":
        return "token_embd.weight"
    if name == "model.norm.weight":
        return "output_norm.weight"
    if name == "lm_head.weight":
        return "output.weight"
    parts = name.split(".")  # model.layers.L.<module...>.weight
    return "blk.%s.%s.weight" % (parts[2], HF_TO_GGUF[".".join(parts[3:-1])])


def gen_model(src, out_name, qtype):
    cfg = json.load(open(os.path.join(HF, src, "config.json")))
    tensors = {}
    for f in sorted(os.listdir(os.path.join(HF, src))):
        if f.startswith("model") and f.endswith(".safetensors"):
            tensors.update(read_safetensors(os.path.join(HF, src, f)))
    heads, kv = cfg["num_attention_heads"], cfg.get("num_key_value_heads", cfg["num_attention_heads"])
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
    w = gguf.GGUFWriter(os.path.join(OUT, out_name), arch="llama")
    w.add_name(src)
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_rope_dimension_count(head_dim)
    if head_dim != cfg["hidden_size"] // heads:
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    rp = cfg.get("rope_parameters") or {}
    w.add_rope_freq_base(rp.get("rope_theta", cfg.get("rope_theta", 10000.0)))
    scaling = cfg.get("rope_scaling") or rp
    if scaling.get("rope_type") == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(scaling["factor"])
    extra = {}
    if scaling.get("rope_type") == "llama3":
        # llama.cpp's converter: Llama 3.1's scaling as per-frequency divisors in rope_freqs.weight.
        base, factor = rp.get("rope_theta", cfg.get("rope_theta", 10000.0)), scaling["factor"]
        low, high = scaling.get("low_freq_factor", 1.0), scaling.get("high_freq_factor", 4.0)
        old = scaling["original_max_position_embeddings"]
        freqs = 1.0 / (base ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
        out = []
        for f in freqs:
            wavelen = 2 * np.pi / f
            if wavelen < old / high:
                out.append(1.0)
            elif wavelen > old / low:
                out.append(factor)
            else:
                smooth = (old / wavelen - low) / (high - low)
                out.append(1 / ((1 - smooth) / factor + smooth))
        extra["rope_freqs.weight"] = np.array(out, dtype=np.float32)
        w.add_rope_scaling_orig_ctx_len(old)
    w.add_vocab_size(cfg["vocab_size"])
    w.add_file_type({Q.F32: 0, Q.F16: 1, Q.BF16: 32, Q.Q8_0: 7}[qtype])
    if qtype != Q.F32:
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    for name, a in extra.items():
        w.add_tensor(name, a)
    for name in sorted(tensors, key=lambda n: (n.count("layers"), n)):
        a = tensors[name]
        if name.endswith("q_proj.weight"):
            a = permute(a, heads)
        elif name.endswith("k_proj.weight"):
            a = permute(a, kv)
        if a.ndim == 1 or qtype == Q.F32:  # norms stay F32, as llama.cpp keeps them
            w.add_tensor(gguf_name(name), a.astype(np.float32))
        elif qtype == Q.F16 or a.shape[-1] % 32 != 0:  # F16 also llama.cpp's fallback for partial blocks
            w.add_tensor(gguf_name(name), a.astype(np.float16))
        else:
            w.add_tensor(gguf_name(name), gguf.quants.quantize(a, qtype), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()



def gen_tokenizer(src, out_name):
    """Tokenizer metadata as llama.cpp's converter writes it from a tokenizer.json."""
    tj = json.load(open(os.path.join(TOK, src, "tokenizer.json")))
    cfg_path = os.path.join(TOK, src, "tokenizer_config.json")
    tcfg = json.load(open(cfg_path)) if os.path.exists(cfg_path) else {}
    model = tj["model"]
    vocab = dict(model["vocab"])
    added = {a["id"]: a for a in tj["added_tokens"]}
    for i, a in added.items():
        vocab.setdefault(a["content"], i)
    n = max(vocab.values()) + 1
    tokens = ["[PAD%d]" % i for i in range(n)]
    for t, i in vocab.items():
        tokens[i] = t
    spm = bool(model.get("byte_fallback"))
    types = []
    for i, t in enumerate(tokens):
        if i in added:
            types.append(gguf.TokenType.CONTROL if added[i].get("special") else gguf.TokenType.USER_DEFINED)
        elif spm and t == model.get("unk_token"):
            types.append(gguf.TokenType.UNKNOWN)
        elif spm and len(t) == 6 and t.startswith("<0x") and t.endswith(">"):
            types.append(gguf.TokenType.BYTE)
        else:
            types.append(gguf.TokenType.NORMAL)
    if spm and "<unk>" in vocab:
        types[vocab["<unk>"]] = gguf.TokenType.UNKNOWN

    def special(key):
        v = tcfg.get(key)
        if isinstance(v, dict):
            v = v.get("content")
        return vocab.get(v) if v is not None else None

    w = gguf.GGUFWriter(os.path.join(OUT, out_name), arch="llama")
    w.add_tokenizer_model("llama" if spm else "gpt2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    if spm:
        # SentencePiece BPE scores: the earlier a piece was merged, the higher its score.
        w.add_token_scores([-float(i) for i in range(n)])
        w.add_add_bos_token(True)
        w.add_add_space_prefix(True)
    else:
        merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
        w.add_token_merges(merges)
        pre = tj["pre_tokenizer"]
        w.add_tokenizer_pre("llama-bpe" if pre.get("type") == "Sequence" else "gpt2")
        post = json.dumps(tj.get("post_processor"))
        w.add_add_bos_token("TemplateProcessing" in post)
    for key, fn in (("bos_token", w.add_bos_token_id), ("eos_token", w.add_eos_token_id)):
        i = special(key)
        if i is not None:
            fn(i)
    if src == "llama3":
        w.add_chat_template("{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>"
                            "{{ m['content'] }}<|eot_id|>{% endfor %}")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def gen_unsupported_type(rng):
    """A tensor of a type ounce does not decode (Q2_K): refused when the file is opened."""
    w = gguf.GGUFWriter(os.path.join(OUT, "q2_k.gguf"), arch="llama")
    w.add_tensor("token_embd.weight", rng.integers(0, 256, (2, 84), dtype=np.uint8), raw_dtype=Q.Q2_K)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main():
    os.makedirs(OUT, exist_ok=True)
    rng = np.random.default_rng(17)
    gen_types(rng)
    gen_model("gqa_linear_f32", "gqa_linear_f32.gguf", Q.F32)
    gen_model("gqa_linear_f32", "gqa_linear_q8_0.gguf", Q.Q8_0)
    gen_model("tied_bf16", "tied_bf16.gguf", Q.BF16)
    gen_model("llama3_sharded_f16", "llama3_f16.gguf", Q.F16)
    gen_unsupported_type(rng)
    gen_tokenizer("gpt2", "tok_gpt2.gguf")
    gen_tokenizer("llama3", "tok_llama3.gguf")
    gen_tokenizer("llama2", "tok_llama2.gguf")
    for f in sorted(os.listdir(OUT)):
        print("%-28s %7d bytes" % (f, os.path.getsize(os.path.join(OUT, f))))


if __name__ == "__main__":
    main()
