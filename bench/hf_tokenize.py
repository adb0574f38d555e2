#!/usr/bin/env python3
"""The Hugging Face `tokenizers` peer of bench/tokenize.sh: encodes a text file with a tokenizer.json
and prints one JSON line with MB/s (encode time only; reading and chunking excluded).

The text is cut into ~64 KB chunks at a newline followed by printable ASCII, where neither the
GPT-2 nor the Llama-3 pattern matches across, so the chunks' ids joined are the whole text's ids
(the count is printed to check that against ounce). Modes:
  encode             tokenizer.encode(chunk) for each chunk, one thread
  encode_batch       tokenizer.encode_batch(chunks), RAYON_NUM_THREADS threads
  encode_batch_fast  the same without offsets (tokenizers >= 0.21)
  encode_batch_lines encode_batch over the text's lines (ids differ slightly at line ends)
Batches of 64 chunks are encoded at a time so memory stays bounded.
usage: RAYON_NUM_THREADS=N python3 bench/hf_tokenize.py TOKENIZER_JSON TEXT MODE
"""
import json
import os
import sys
import time

from tokenizers import Tokenizer


def chunks(text, size=1 << 16):
    out, a, n = [], 0, len(text)
    while a < n:
        b = min(a + size, n)
        while b < n and not (text[b - 1] == "\n" and "!" <= text[b] <= "~"):
            b += 1
        out.append(text[a:b])
        a = b
    return out


def main():
    path, text_path, mode = sys.argv[1], sys.argv[2], sys.argv[3]
    tok = Tokenizer.from_file(path)
    with open(text_path, encoding="utf-8") as f:
        text = f.read()
    nbytes = len(text.encode("utf-8"))
    parts = text.splitlines(keepends=True) if mode == "encode_batch_lines" else chunks(text)
    step = 64 if mode != "encode_batch_lines" else 65536
    n_ids = 0
    t0 = time.perf_counter()
    if mode == "encode":
        for p in parts:
            n_ids += len(tok.encode(p, add_special_tokens=False).ids)
    else:
        fn = tok.encode_batch_fast if mode == "encode_batch_fast" else tok.encode_batch
        for i in range(0, len(parts), step):
            n_ids += sum(len(e.ids) for e in fn(parts[i:i + step], add_special_tokens=False))
    dt = time.perf_counter() - t0
    print(json.dumps({"impl": "hf-tokenizers", "mode": mode, "threads": int(os.environ.get("RAYON_NUM_THREADS", "0")),
                      "bytes": nbytes, "ids": n_ids, "seconds": round(dt, 3), "mb_s": round(nbytes / dt / 1e6, 2)}))


if __name__ == "__main__":
    main()
