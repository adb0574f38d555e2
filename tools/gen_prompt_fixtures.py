#!/usr/bin/env python3
"""Makes tests/fixtures/prompts/: tokenizer directories whose tokenizer_config.json sets (or leaves
out) add_bos_token / add_eos_token over a tokenizer.json with or without a BOS template, and the ids
transformers' AutoTokenizer gives each test text with its default add_special_tokens=True, which is
what a prompt is fed to generate() as. tests/test_tokenizer.c checks ounce's templated encode against
them; the tests never need Python.

What transformers 5 does (tokenization_utils_base.py, from_pretrained): when a tokenizer.json is
there, add_bos_token and add_eos_token of tokenizer_config.json are dropped and the file's
post-processor alone adds BOS/EOS (a null post-processor adds nothing). The cases below record that,
flags that contradict the file included. (transformers 4's LlamaTokenizerFast rebuilt the template
from the flags instead; expected.json names the version the ids come from.)

Each case starts from one of the committed tokenizer fixtures (tests/fixtures/tokenizers/):
  llama2-bos-eos    llama2's BOS template, config add_bos_token true, add_eos_token true
  llama2-no-bos     the same file, config add_bos_token false
  llama3-file       llama3's BOS template, config without either key
  llama3-eos-only   the same file, config add_eos_token true only
  gpt2-null-bos     gpt2 with post_processor null, config add_bos_token true, bos <|endoftext|>
  gpt2-null         gpt2 with post_processor null and no flags

usage: python3 tools/gen_prompt_fixtures.py   (transformers 5.x and tokenizers installed)
"""
import json
import os
import shutil

import transformers
from transformers import AutoTokenizer

SRC = "tests/fixtures/tokenizers"
OUT = "tests/fixtures/prompts"
TEXTS = ["The quick brown fox", "Hello, world! 42", " leading space", "日本語 and ümlauts"]

CASES = {
    "llama2-bos-eos": ("llama2", None, {"add_bos_token": True, "add_eos_token": True}),
    "llama2-no-bos": ("llama2", None, {"add_bos_token": False}),
    "llama3-file": ("llama3", None, {}),
    "llama3-eos-only": ("llama3", None, {"add_eos_token": True, "eos_token": "<|end_of_text|>"}),
    "gpt2-null-bos": ("gpt2", "null", {"add_bos_token": True, "bos_token": "<|endoftext|>"}),
    "gpt2-null": ("gpt2", "null", {}),
}


def main():
    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    expected = {"transformers": transformers.__version__, "texts": TEXTS, "ids": {}}
    for name, (base, post, flags) in CASES.items():
        d = os.path.join(OUT, name)
        os.makedirs(d)
        tj = json.load(open(os.path.join(SRC, base, "tokenizer.json"), encoding="utf-8"))
        if post == "null":
            tj["post_processor"] = None
        json.dump(tj, open(os.path.join(d, "tokenizer.json"), "w", encoding="utf-8"), ensure_ascii=False)
        cfg_path = os.path.join(SRC, base, "tokenizer_config.json")
        cfg = json.load(open(cfg_path, encoding="utf-8")) if os.path.exists(cfg_path) else {}
        cfg = {k: v for k, v in cfg.items() if k not in ("add_bos_token", "add_eos_token")}
        cfg.update(flags)
        cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
        json.dump(cfg, open(os.path.join(d, "tokenizer_config.json"), "w", encoding="utf-8"), indent=1)
        tok = AutoTokenizer.from_pretrained(d)
        expected["ids"][name] = [tok(t)["input_ids"] for t in TEXTS]
        print(name, expected["ids"][name][0])
    json.dump(expected, open(os.path.join(OUT, "expected.json"), "w", encoding="utf-8"), ensure_ascii=False, indent=1)


if __name__ == "__main__":
    main()
