#!/usr/bin/env python3
"""Writes the fuzz targets' seed corpora, tests/fuzz/corpus/<target>/ (small valid inputs, a few KiB
each): safetensors files, model directories, config.json files, tokenizer.json files cut down from
tests/fixtures/tokenizers, texts for the encoder, prepared datasets, trainer states and argument
lists. Python's standard library only; the output is the same on every run.

    python3 tools/gen_fuzz_corpus.py            # rewrites tests/fuzz/corpus/
    python3 tools/gen_fuzz_corpus.py --ounce    # also re-derives the trainer states and the GGUF
                                                # models by running ./ounce train and ./ounce
                                                # convert (needs a built ./ounce)

Multi-file inputs are the files joined with the separator of tests/fuzz/fuzz.h, OZ_FUZZ_SEP.
"""
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fuzz", "corpus")
FIX = os.path.join(ROOT, "tests", "fixtures")
SEP = b"\n--8<--\n"


def dense(obj):
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def put(target, name, data):
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# ---------------------------------------------------------------- safetensors

DTYPES = {"F32": ("<f", 4), "F16": ("<e", 2), "F64": ("<d", 8), "I32": ("<i", 4), "I64": ("<q", 8),
          "U8": ("<B", 1), "I8": ("<b", 1)}


def bf16(x):
    return struct.pack("<f", x)[2:]


def tensor_bytes(dtype, values):
    if dtype == "BF16":
        return b"".join(bf16(v) for v in values)
    fmt, _ = DTYPES[dtype]
    return b"".join(struct.pack(fmt, v) for v in values)


def safetensors(tensors, metadata=None):
    """tensors: [(name, dtype, shape, values)] in file order."""
    header, data = {}, b""
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, dtype, shape, values in tensors:
        raw = tensor_bytes(dtype, values)
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    h = dense(header)
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + data


def gen_safetensors():
    shutil.copy(os.path.join(FIX, "python_small.safetensors"), os.path.join(OUT, "safetensors", "python_small"))
    put("safetensors", "f32_matrix", safetensors([("w", "F32", [2, 3], [0.5, -1, 2, 3.25, 1e-3, -0.0])],
                                                 {"format": "pt"}))
    put("safetensors", "every_dtype", safetensors(
        [("a", "F32", [2], [1, 2]), ("b", "F16", [2], [0.5, -2]), ("c", "BF16", [3], [1, -1, 3]),
         ("d", "F64", [1], [3.14]), ("e", "I32", [2], [7, -7]), ("f", "I64", [1], [1 << 40]),
         ("g", "U8", [3], [0, 128, 255]), ("h", "I8", [2], [-128, 127])]))
    put("safetensors", "scalar_and_empty", safetensors(
        [("scalar", "F32", [], [42]), ("empty", "F32", [0, 4], []), ("zero_dim", "BF16", [3, 0], [])],
        {"format": "pt", "note": "x"}))
    put("safetensors", "no_tensors", safetensors([], {"format": "pt"}))
    put("safetensors", "four_dims", safetensors([("t", "F16", [1, 2, 1, 2], [1, 2, 3, 4])]))


# ---------------------------------------------------------------- model directories

TINY = {"vocab_size": 8, "hidden_size": 4, "intermediate_size": 8, "num_hidden_layers": 1,
        "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 2, "max_position_embeddings": 16,
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "model_type": "llama", "hidden_act": "silu",
        "bos_token_id": 1, "eos_token_id": 2, "tie_word_embeddings": False}


def tiny_tensors(cfg, dtype):
    V, D, F, H, KV, hd = (cfg[k] for k in ("vocab_size", "hidden_size", "intermediate_size",
                                          "num_attention_heads", "num_key_value_heads", "head_dim"))
    shapes = [("model.embed_tokens.weight", [V, D])]
    for l in range(cfg["num_hidden_layers"]):
        p = "model.layers.%d." % l
        shapes += [(p + "input_layernorm.weight", [D]), (p + "self_attn.q_proj.weight", [H * hd, D]),
                   (p + "self_attn.k_proj.weight", [KV * hd, D]), (p + "self_attn.v_proj.weight", [KV * hd, D]),
                   (p + "self_attn.o_proj.weight", [D, H * hd]), (p + "post_attention_layernorm.weight", [D]),
                   (p + "mlp.gate_proj.weight", [F, D]), (p + "mlp.up_proj.weight", [F, D]),
                   (p + "mlp.down_proj.weight", [D, F])]
    shapes.append(("model.norm.weight", [D]))
    if not cfg["tie_word_embeddings"]:
        shapes.append(("lm_head.weight", [V, D]))
    out = []
    for i, (name, shape) in enumerate(shapes):
        n = 1
        for s in shape:
            n *= s
        out.append((name, dtype, shape, [((i * 7 + j * 3) % 11 - 5) / 8 for j in range(n)]))
    return out


def model_dir(config, single=None, index=None, shards=()):
    parts = [dense(config), dense(index) if index else b"", single or b""] + list(shards)
    return SEP.join(parts)


def gen_weights():
    cfg = dict(TINY)
    put("weights", "single_f32", model_dir(cfg, single=safetensors(tiny_tensors(cfg, "F32"), {"format": "pt"})))
    tied = dict(TINY, tie_word_embeddings=True)
    ts = tiny_tensors(tied, "BF16")
    ts.append(("model.layers.0.self_attn.rotary_emb.inv_freq", "F32", [1], [1.0]))
    put("weights", "tied_bf16_inv_freq", model_dir(tied, single=safetensors(ts)))
    ts = tiny_tensors(cfg, "F16")
    groups = [ts[:4], ts[4:9], ts[9:]]
    index = {"metadata": {"total_size": 0}, "weight_map": {}}
    shards = []
    for k, g in enumerate(groups):
        for name, _, _, _ in g:
            index["weight_map"][name] = "model-%d.safetensors" % (k + 1)
        shards.append(safetensors(g, {"format": "pt"}))
    put("weights", "sharded_f16", model_dir(cfg, index=index, shards=shards))
    two = dict(TINY, num_hidden_layers=2, num_key_value_heads=2)
    put("weights", "two_layers_f64", model_dir(two, single=safetensors(tiny_tensors(two, "F64"))))


# ---------------------------------------------------------------- config.json

def gen_config():
    for d in ("gqa_linear_f32", "llama3_sharded_f16", "tied_bf16"):
        shutil.copy(os.path.join(FIX, "hf", d, "config.json"), os.path.join(OUT, "config", d + ".json"))
    put("config", "tiny.json", dense(TINY))
    put("config", "rope_scaling_llama3.json", dense(dict(
        TINY, rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                            "original_max_position_embeddings": 8}, eos_token_id=[2, 3])))
    put("config", "rope_linear.json", dense(dict(TINY, rope_scaling={"type": "linear", "factor": 2.0},
                                                 ounce_tokenizer="byte", bos_token_id=None)))
    low = dict(TINY, model_type="ounce_lowrank_llama", architectures=["OunceLowRankLlamaForCausalLM"],
               ounce_low_rank={"model.layers.0.mlp.up_proj": 2, "model.layers.0.self_attn.q_proj": 1})
    put("config", "low_rank.json", dense(low))


# ---------------------------------------------------------------- tokenizers

def cut_tokenizer(name, keep):
    """The fixture's tokenizer.json with only its first `keep` vocabulary ids, the merges among them,
    and its added tokens renumbered right after them."""
    with open(os.path.join(FIX, "tokenizers", name, "tokenizer.json"), encoding="utf-8") as f:
        j = json.load(f)
    m = j["model"]
    vocab = {t: i for t, i in m["vocab"].items() if i < keep}
    merges = []
    for mg in m["merges"]:
        a, b = mg.split(" ", 1) if isinstance(mg, str) else mg
        if a in vocab and b in vocab and a + b in vocab:
            merges.append(mg)
    m["vocab"], m["merges"] = vocab, merges
    nxt = keep
    renum = {}
    for t in j["added_tokens"]:
        if t["id"] >= keep:
            renum[t["id"]] = nxt
            t["id"] = nxt
            nxt += 1
    # Ids the post-processor names follow the renumbering.
    post = j.get("post_processor")

    def fix(o):
        if isinstance(o, dict):
            for k, v in o.items():
                if k == "ids" and isinstance(v, list):
                    o[k] = [renum.get(x, x) for x in v]
                else:
                    fix(v)
        elif isinstance(o, list):
            for v in o:
                fix(v)
    fix(post)
    return dense(j)


def config_of(name):
    p = os.path.join(FIX, "tokenizers", name, "tokenizer_config.json")
    if not os.path.exists(p):
        return b""
    with open(p, encoding="utf-8") as f:
        return dense(json.load(f))


TEXT = "Hello world! It's 2024: naïve café, 東京, emoji 🎉.\n\tTabs  and   spaces\r\n<|endoftext|>end"
KEEP = {"gpt2": 300, "gpt2-prefix": 300, "llama2": 330, "llama2-metaspace": 330, "llama3": 300, "ounce": 300}


def gen_tokenizer():
    for name, keep in KEEP.items():
        tj = cut_tokenizer(name, keep)
        put("tokenizer", name, SEP.join([tj, config_of(name), TEXT.encode()]))
    # Variants of the parts the loader reads besides the model.
    j = json.loads(cut_tokenizer("gpt2", 290))
    j["normalizer"] = {"type": "Sequence", "normalizers": [
        {"type": "Strip", "strip_left": True, "strip_right": True},
        {"type": "Replace", "pattern": {"Regex": "\\s+"}, "content": " "}]}
    j["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": True}, {"type": "WhitespaceSplit"},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}
    j["post_processor"] = {"type": "RobertaProcessing", "sep": ["<|endoftext|>", 0], "cls": ["<|endoftext|>", 0],
                           "trim_offsets": True, "add_prefix_space": False}
    put("tokenizer", "gpt2_variants", SEP.join([dense(j), b'{"bos_token":"<|endoftext|>"}', b"1234 abc  def"]))


def gen_encode():
    texts = [TEXT.encode(), b"def f(x):\n    return x * 2  # comment\n\n" * 3,
             "Ünïcödé ▁ \u2581spaces\u00a0nbsp \u0085nel".encode(), b"\xff\xfe invalid \xc3 utf8 \xe2\x82\n",
             b"<s> </s> <unk> <|begin_of_text|><|end_of_text|><|eot_id|> <|mask|> hello world",
             b"line one\nline two\nLine three\n" * 4]
    for tok in range(7):
        for k, t in enumerate(texts):
            mode = tok | ((k % 4) << 3) | ((k % 2) << 5)
            put("encode", "tok%d_text%d" % (tok, k), bytes([mode]) + t)
        # Tiled past the parallel threshold: documents of 8 KiB + 1 and of 100 KiB + 1 (cut by the
        # parallel encoder at the pattern's newlines), each ended by added tokens.
        put("encode", "tok%d_tiled" % tok, bytes([tok | (1 << 3) | 0x40, 0x00, 0x20, 0x00, 0x10]) +
            b"Some text.\nMore text, a line\n" + SEP + b"<|endoftext|>")
        put("encode", "tok%d_tiled_docs" % tok, bytes([tok | (1 << 3) | 0x40, 0x00, 0x94, 0x01, 0x20]) +
            b"A line of prose, then more of it: words and 12 numbers.\n" + SEP +
            b"<|endoftext|><|end_of_text|></s>")


# ---------------------------------------------------------------- datasets

def shard(vocab, ids):
    width = 2 if vocab <= 65536 else 4
    h = b"OZTOKENS" + struct.pack("<IIII", 1, vocab, width, 0) + struct.pack("<Q", len(ids))
    h += b"\0" * (256 - len(h))
    return h + b"".join(struct.pack("<H" if width == 2 else "<I", i) for i in ids)


def meta(vocab, train, val, tokenizer="byte", bos=256, eos=257):
    return dense({"format": "ounce-tokens", "version": 1, "tokenizer": tokenizer, "vocab_size": vocab,
                  "bos_token_id": bos, "eos_token_id": eos, "train_tokens": train, "val_tokens": val,
                  "documents": 1})


def gen_dataset():
    tr = [(i * 37) % 258 for i in range(40)]
    va = [(i * 11) % 258 for i in range(17)]
    put("dataset", "byte", SEP.join([meta(258, 40, 17), shard(258, tr), shard(258, va), b"", b"", b"2 4"]))
    put("dataset", "byte_no_val", SEP.join([meta(258, 40, 0), shard(258, tr), shard(258, []), b"", b"", b"3 8"]))
    tj = json.loads(cut_tokenizer("ounce", 300))
    vocab = 1 + max([i for i in tj["model"]["vocab"].values()] + [t["id"] for t in tj["added_tokens"]])
    cfgj = config_of("ounce")
    put("dataset", "hf_ounce", SEP.join([meta(vocab, 30, 12, "hf", 0, 1), shard(vocab, [i % vocab for i in range(30)]),
                                         shard(vocab, [(i * 5) % vocab for i in range(12)]), dense(tj), cfgj, b"2 5"]))
    # An added token far up makes the vocabulary too wide for 2-byte ids.
    tj["added_tokens"].append({"id": 70000, "content": "<|far|>", "single_word": False, "lstrip": False,
                               "rstrip": False, "normalized": False, "special": True})
    put("dataset", "hf_wide", SEP.join([meta(70001, 20, 9, "hf", 0, 1), shard(70001, [69999 - i * 1000 for i in range(20)]),
                                        shard(70001, [70000] * 9), dense(tj), cfgj, b"1 3"]))
    put("dataset", "random", b"random:50" + SEP + b"" + SEP + b"" + SEP + b"" + SEP + b"" + SEP + b"4 16")


# ---------------------------------------------------------------- trainer states

STATE_RUNS = {
    "adamw": [],
    "galore": ["--optim", "galore", "--rank", "4", "--update-gap", "2"],
    "qgalore": ["--optim", "qgalore", "--rank", "4", "--update-gap", "2", "--clip", "0"],
    "inrank": ["--inrank", "--inrank-check-every", "1", "--inrank-warmup", "1", "--inrank-freeze-after", "2"],
}


def gen_trainer_state(run_ounce):
    d = os.path.join(OUT, "trainer_state")
    if not run_ounce:
        if not os.path.isdir(d) or not os.listdir(d):
            sys.exit("tests/fuzz/corpus/trainer_state/ is empty: run with --ounce (needs ./ounce)")
        return
    ounce = os.path.join(ROOT, "ounce")
    for name, extra in STATE_RUNS.items():
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [ounce, "train", "--data", "random:64", "--model", "tiny", "--out", tmp + "/out", "--steps", "3",
                   "--batch", "2", "--seq", "8", "--save-every", "2", "--eval-every", "0", "--threads", "1"] + extra
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            with open(os.path.join(tmp, "out", "step-2", "trainer_state.json"), "rb") as f:
                state = json.load(f)
            # Paths of this machine's temp directory would differ on every run.
            state["options"]["out"] = "out"
            put("trainer_state", name + ".json", dense(state))


# ---------------------------------------------------------------- GGUF

def gguf_str(s):
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("<Q", len(b)) + b


GG = {"u8": (0, "<B"), "i8": (1, "<b"), "u16": (2, "<H"), "i16": (3, "<h"), "u32": (4, "<I"), "i32": (5, "<i"),
      "f32": (6, "<f"), "bool": (7, "<B"), "u64": (10, "<Q"), "i64": (11, "<q"), "f64": (12, "<d")}


def gguf_value(kind, v):
    if kind == "str":
        return struct.pack("<I", 8) + gguf_str(v)
    if kind.startswith("arr:"):
        et = kind[4:]
        if et == "str":
            return struct.pack("<IIQ", 9, 8, len(v)) + b"".join(gguf_str(x) for x in v)
        t, fmt = GG[et]
        return struct.pack("<IIQ", 9, t, len(v)) + b"".join(struct.pack(fmt, x) for x in v)
    t, fmt = GG[kind]
    return struct.pack("<I", t) + struct.pack(fmt, v)


def gguf_file(kvs, tensors, alignment=32):
    """kvs: [(key, kind, value)]; tensors: [(name, ggml type, dims innermost first, data bytes)]."""
    out = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kvs))
    for key, kind, v in kvs:
        out += gguf_str(key) + gguf_value(kind, v)
    off = 0
    for name, t, dims, data in tensors:
        out += gguf_str(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
        out += struct.pack("<IQ", t, off)
        off += len(data) + (-len(data) % alignment)
    out += b"\0" * (-len(out) % alignment)
    for _, _, _, data in tensors:
        out += data + b"\0" * (-len(data) % alignment)
    return out


def gen_gguf(run_ounce):
    # Every value type and every tensor type ounce decodes, in a file that is not a model.
    kvs = [("general.architecture", "str", "none"), ("general.alignment", "u32", 64), ("t.u8", "u8", 255),
           ("t.i8", "i8", -128), ("t.u16", "u16", 65535), ("t.i16", "i16", -32768), ("t.u32", "u32", 1 << 31),
           ("t.i32", "i32", -7), ("t.f32", "f32", 0.5), ("t.bool", "bool", 1), ("t.u64", "u64", 1 << 40),
           ("t.i64", "i64", -(1 << 40)), ("t.f64", "f64", 3.25), ("t.str", "str", "caf\u00e9"),
           ("t.ints", "arr:i32", [1, -2, 3]), ("t.floats", "arr:f32", [0.25, -1.0]), ("t.strs", "arr:str", ["a", "", "bc"]),
           ("t.bytes", "arr:u8", [0, 1, 2, 255])]
    half = struct.pack("<e", 0.5)
    tensors = [("f32", 0, [3, 2], struct.pack("<6f", 1, 2, 3, 4, 5, 6)), ("f16", 1, [4], half * 4),
               ("bf16", 30, [2, 1, 1], bf16(1.5) * 2), ("q8_0", 8, [32], half + bytes(range(32))),
               ("q4_0", 2, [32, 2], (half + bytes(range(16))) * 2), ("q4_1", 3, [32], half * 2 + bytes(16)),
               ("q6_k", 14, [256], bytes(128 + 64 + 16) + half)]
    put("gguf", "every_type", gguf_file(kvs, tensors, 64))
    # Written by the `gguf` package (llama.cpp's): every tensor type, and one ounce refuses (Q2_K).
    for name in ("types.gguf", "q2_k.gguf"):
        shutil.copy(os.path.join(FIX, "gguf", name), os.path.join(OUT, "gguf", name))
    d = os.path.join(OUT, "gguf")
    if not run_ounce:
        if len(os.listdir(d)) < 4:
            sys.exit("tests/fuzz/corpus/gguf/ has no models: run with --ounce (needs ./ounce)")
        return
    models = {
        "tiny_f16": (dict(TINY), "f16", None),
        "tiny32_q4_0": (dict(TINY, hidden_size=32, intermediate_size=32, head_dim=16, tie_word_embeddings=True),
                        "q4_0", None),
        "byte_tokenizer": (dict(TINY, vocab_size=258, bos_token_id=256, eos_token_id=257, tie_word_embeddings=True,
                                ounce_tokenizer="byte"), "f16", None),
        "gpt2_tokenizer": (dict(TINY, tie_word_embeddings=True), "f16", "ounce"),
        "llama_tokenizer": (dict(TINY, tie_word_embeddings=True), "f16", "llama2"),
    }
    ounce = os.path.join(ROOT, "ounce")
    for name, (cfg, typ, tok) in models.items():
        with tempfile.TemporaryDirectory() as tmp:
            m = os.path.join(tmp, name)
            os.makedirs(m)
            if tok:
                tj = cut_tokenizer(tok, KEEP[tok])
                j = json.loads(tj)
                cfg["vocab_size"] = 1 + max(list(j["model"]["vocab"].values()) + [t["id"] for t in j["added_tokens"]])
                with open(os.path.join(m, "tokenizer.json"), "wb") as f:
                    f.write(tj)
                c = config_of(tok)
                if c:
                    with open(os.path.join(m, "tokenizer_config.json"), "wb") as f:
                        f.write(c)
            with open(os.path.join(m, "config.json"), "wb") as f:
                f.write(dense(cfg))
            with open(os.path.join(m, "model.safetensors"), "wb") as f:
                f.write(safetensors(tiny_tensors(cfg, "F32"), {"format": "pt"}))
            subprocess.run([ounce, "convert", "--model", m, "--out", m + ".gguf", "--type", typ], check=True,
                           stdout=subprocess.DEVNULL)
            with open(m + ".gguf", "rb") as f:
                put("gguf", name, f.read())


# ---------------------------------------------------------------- argument lists

ARGS = [
    ["--model", "tiny", "--batch", "4", "--seq", "128"],
    ["--model", "7b", "--optim", "galore", "--rank", "128", "--budget", "16GiB", "--json"],
    ["--model", "llama3-8b", "--optim", "qgalore", "--clip", "0", "--recompute", "layer-bf16", "--mini-seq", "auto"],
    ["--model", "60m", "--inrank", "--inrank-targets", "attn,mlp", "--grad-accum", "2", "--vocab", "50000"],
    ["--model", "1b", "--optim", "adamw8bit", "--recompute", "layer-offload", "--device", "cuda", "--budget", "2.5e9"],
    ["--model=demo", "--seq=64", "--batch=-1"],
    ["--int", "-2147483648", "--steps=2147483647", "--seed", "18446744073709551615", "--lr", "1e-3",
     "--name", "abc", "--json", "--inputs", "a", "b", "c"],
    ["--lr", "-1e38", "--int=0x10", "--seed", "-1"],
    ["--help"],
]


def gen_cli_args():
    for i, a in enumerate(ARGS):
        put("cli_args", "args%d" % i, "\n".join(a).encode())


def main():
    run_ounce = "--ounce" in sys.argv[1:]
    targets = ["safetensors", "weights", "config", "tokenizer", "encode", "dataset", "cli_args"]
    for t in targets + (["gguf"] if run_ounce else []):
        shutil.rmtree(os.path.join(OUT, t), ignore_errors=True)
        os.makedirs(os.path.join(OUT, t))
    gen_safetensors()
    gen_weights()
    gen_config()
    gen_tokenizer()
    gen_encode()
    gen_dataset()
    gen_trainer_state(run_ounce)
    gen_gguf(run_ounce)
    gen_cli_args()


if __name__ == "__main__":
    main()
