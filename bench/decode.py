#!/usr/bin/env python3
"""CPU decode benchmark: greedy decoding and prompt prefill of `ounce sample` (KV cache) beside
transformers' generate() and forward, on the same weights, the same prompt ids and the same thread
count, each run as its own process so that its peak RSS is its own. Prints one JSON line per
measurement.

The model is the 135M shape (hidden 576, 30 layers, 9 heads, 3 kv heads, vocabulary 49152,
intermediate 1536, tied, max_position_embeddings 8192) with random weights that transformers draws
and saves (fp32 safetensors); the tokenizer is the committed llama3 fixture (its 1.3k tokens are
only what the prompt is written in: ounce still computes all 49152 logits, drawing among the ids the
tokenizer has).

usage: python3 bench/decode.py [--threads 2] [--new 128] [--prompt-words 400] [--repeats 3] [--ounce ./ounce]
transformers and torch are optional: without them only ounce runs.
"""
import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

SHAPE = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
             num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192, rms_norm_eps=1e-5,
             rope_theta=10000.0, tie_word_embeddings=True)
TOKENIZER = "tests/fixtures/tokenizers/llama3"
WORDS = ("the model reads a long text about rivers mountains and the people who live near them while "
         "numbers like 1234 and names like Ada appear now and then ").split()


def make_model(path):
    """Random weights in the 135M shape, saved by transformers, with the fixture tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**SHAPE, bos_token_id=None, eos_token_id=None))
    model.save_pretrained(path, safe_serialization=True)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(TOKENIZER, f), path)


def prompt_text(n_words):
    return " ".join(WORDS[i % len(WORDS)] for i in range(n_words))


def measure(cmd, env=None):
    """Runs cmd under /usr/bin/time -f %M (peak RSS in KiB) and returns (stdout, rss_bytes)."""
    p = subprocess.run(["/usr/bin/time", "-f", "RSS_KIB %M"] + cmd, capture_output=True, env=env)
    out, err = p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace")  # sampled text may be any bytes
    if p.returncode != 0:
        sys.exit(f"{cmd} failed ({p.returncode}): {err[-2000:]}")
    rss = [int(l.split()[1]) for l in err.splitlines() if l.startswith("RSS_KIB ")][-1] * 1024
    return out, err, rss


def peer_main(a):
    """In the child: transformers' generate() (greedy, exactly --new tokens) or one forward."""
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM
    torch.set_num_threads(a.threads)
    tok = AutoTokenizer.from_pretrained(a.model)
    model = LlamaForCausalLM.from_pretrained(a.model, torch_dtype=torch.float32).eval()
    ids = torch.tensor([tok(a.text)["input_ids"]])
    best = None
    with torch.inference_mode():
        for _ in range(a.repeats):
            t0 = time.perf_counter()
            if a.peer == "generate":
                model.generate(ids, max_new_tokens=a.new, min_new_tokens=a.new, do_sample=False, pad_token_id=0)
            else:
                model(ids, use_cache=False)
            dt = time.perf_counter() - t0
            best = dt if best is None else min(best, dt)
    n = a.new if a.peer == "generate" else ids.shape[1]
    print(json.dumps({"prompt_tokens": ids.shape[1], "tokens": n, "s": best, "tokens_per_s": n / best}))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--prompt-words", type=int, default=400)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--ounce", default="./ounce")
    ap.add_argument("--model", default=None)
    ap.add_argument("--peer", default=None)  # internal: run the transformers side
    ap.add_argument("--text", default=None)
    a = ap.parse_args()
    if a.peer:
        peer_main(a)
        return
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
        have_peer = True
    except ImportError:
        have_peer = False
    tmp = tempfile.mkdtemp(prefix="ounce-decode-")
    try:
        model = a.model or os.path.join(tmp, "m135")
        if not a.model:
            if not have_peer:
                sys.exit("making the random 135M model needs torch and transformers (or pass --model DIR)")
            make_model(model)
        env = dict(os.environ, OMP_NUM_THREADS=str(a.threads))
        # A long prompt for prefill (the fixture tokenizer gives a little over a token a word), a short
        # one for decoding.
        from_words = {"decode": prompt_text(8), "prefill": prompt_text(a.prompt_words)}
        for kind in ("decode", "prefill"):
            text = from_words[kind]
            new = a.new if kind == "decode" else 1
            best = None
            for _ in range(a.repeats):
                out, err, rss = measure([a.ounce, "sample", "--model", model, "--prompt", text, "--tokens", str(new),
                                         "--temperature", "0", "--threads", str(a.threads), "--json"], env)
                j = json.loads(out.strip().splitlines()[-1])
                rate = j["decode_tokens_per_s"] if kind == "decode" else j["prefill_tokens_per_s"]
                if best is None or rate > best[0]:
                    best = (rate, j, rss)
            rate, j, rss = best
            rec = {"impl": "ounce", "kind": kind, "threads": a.threads, "prompt_tokens": j["prefill_tokens"],
                   "tokens_per_s": round(rate, 2), "peak_rss_bytes": rss, "kv_cache_bytes": j["kv_cache_bytes"],
                   "arena_peak_bytes": j["peak_bytes"]}
            if kind == "decode":
                total = j["prefill_s"] + j["decode_s"]
                rec.update(generated=j["generated"], decode_tokens=j["decode_tokens"],
                           end_to_end_tokens_per_s=round(j["generated"] / total, 2))
            print(json.dumps(rec), flush=True)
            if have_peer:
                out, err, rss = measure([sys.executable, __file__, "--peer", "generate" if kind == "decode" else "forward",
                                         "--model", model, "--text", text, "--new", str(a.new), "--threads",
                                         str(a.threads), "--repeats", str(a.repeats)], env)
                pj = json.loads(out.strip().splitlines()[-1])
                import torch
                import transformers
                print(json.dumps({"impl": f"transformers {transformers.__version__} (torch {torch.__version__})",
                                  "kind": kind, "threads": a.threads, "prompt_tokens": pj["prompt_tokens"],
                                  "tokens_per_s": round(pj["tokens_per_s"], 2), "peak_rss_bytes": rss}), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
