#!/usr/bin/env python3
"""Makes the tokenizer fixtures of tests/test_tokenizer.c with the Hugging Face `tokenizers` library
(dev only: the tests read the committed files and never need Python).

Trains small BPE tokenizers configured like the real ones on a corpus made here, writes each as a
directory with tokenizer.json (and tokenizer_config.json where the real model has one), and records
what the library gives for a set of test texts in expected.json:
  gpt2              ByteLevel pre-tokenizer with its regex, merges as "a b" strings, <|endoftext|>,
                    an lstrip special token and a normalized added token containing a space
  gpt2-prefix       the same model with ByteLevel(add_prefix_space=True)
  llama3            Split(Llama-3 regex) + ByteLevel(use_regex=False), ignore_merges, merges as pairs,
                    special tokens after the model vocabulary, TemplateProcessing adding BOS
  llama2            BPE with byte_fallback and <unk>, normalizer Prepend("▁") + Replace(" ", "▁"),
                    no pre-tokenizer, decoder Replace/ByteFallback/Fuse/Strip, BOS template
  llama2-metaspace  the same model with the newer Metaspace(prepend_scheme="first") pre-tokenizer
                    and Metaspace decoder instead of the normalizer
  ounce             (with --ounce BINARY) a tokenizer trained by `ounce tokenizer train`, checked
                    here to load in the library, and its ids recorded

usage: python3 tools/gen_tokenizer_fixtures.py [--ounce ./ounce] [--corpus FILE]
"""
import argparse
import json
import os
import shutil
import subprocess
import tempfile

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

OUT = "tests/fixtures/tokenizers"
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                  r"\s*[\r\n]+|\s+(?!\S)|\s+")

MULTILINGUAL = [
    "Don't stop: we'll see, I'm sure they've said it's fine, you'd think. DON'T SHOUT, WE'LL SEE.",
    "The year 2026 had 365 days; π ≈ 3.14159265358979 and 1,234,567.89 + 42 = 1234609.89.",
    "日本語のテキストを少し書きます。中文字符也在这里，欢迎光临。한국어 문장도 있습니다.",
    "Café, naïve, coöperate, résumé — e\u0301 a\u0308 n\u0303: combining marks after letters.",
    "Emoji 👍🏽 🇫🇷 👨‍👩‍👧 🤖 and symbols ©®™ ∑∫√ ← → ★☆.",
    "Русский текст, Ελληνικά γράμματα, עברית, العربية, हिन्दी भाषा देवनागरी में।",
    "def encode(self, text):\n    return [self.vocab[t] for t in text.split()]  # comment\n",
    "int main(void) {\n\tprintf(\"%d\\n\", 42);\n\treturn 0;\n}\n",
    "    indented line\n\n\n  two spaces\t\ttabs   and   runs of spaces\r\nwindows line\n",
]

TEXTS = [
    # One long varied text: every feature at once.
    "Hello world! Don't you think it's GREAT? I'm sure we'll've seen 12345678 things in 2026-11-28.\n"
    "  Leading spaces,\ttabs\t\tand   many    spaces.\n\n\nThree newlines above; \r\n CRLF too.\n"
    "Unicode: café naïve résumé, e\u0301 (combining acute), 日本語のテキスト、中文字符，한국어.\n"
    "Emoji: 👍🏽 🇫🇷 👨‍👩‍👧 🤖🤖🤖 and math ∑∫√ ≈ ≠ ∞.\n"
    "Code:\n    for (int i = 0; i < n; i++) { x[i] += y[i] * 2; }\n"
    "    if x != None and y == 'abc':\n        return f\"{x!r}\"\n"
    "Special tokens: <|endoftext|> <s> </s> <|begin_of_text|><|end_of_text|> <|eot_id|> <unk>\n"
    "Digits: 1 12 123 1234 12345 3.14159 1,000,000 0x7fff 1e-9\n"
    "Odd whitespace: a\u00a0b\u2003c\u3000d e\u0085f \u200bg   \n   \n",
    "",
    " ",
    "\n\n\n  \n",
    "   leading and trailing   ",
    "<s>Hello</s> world<s>",
    "<|endoftext|>x<|endoftext|><|endoftext|>",
    "<|begin_of_text|>Hi<|eot_id|>  <|end_of_text|>",
    "a" * 300 + " " * 100 + "b" + "\n" * 50 + "end",
    "ꙮ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ∮ E⋅da = Q, ᚠᛇᚻ᛫ᛒᛦᚦ, ﷽",
    "word  <|mask|>  after and hello world, hello world!",
    "don't DON'T Don'T can't won't y'all o'clock 'quoted' \"double\"",
    "x" + "🙂" * 40 + "y",
]


def corpus(path):
    text = ""
    if path and os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            text = f.read()[:400_000]
    return text + "\n".join(MULTILINGUAL * 30) + "\n"


def save(tok, name, config=None, string_merges=False, edit=None):
    d = os.path.join(OUT, name)
    os.makedirs(d, exist_ok=True)
    data = json.loads(tok.to_str())
    if string_merges:
        data["model"]["merges"] = [" ".join(m) if isinstance(m, list) else m for m in data["model"]["merges"]]
    if edit:
        edit(data)
    s = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    with open(os.path.join(d, "tokenizer.json"), "w", encoding="utf-8") as f:
        f.write(s)
    cfg = os.path.join(d, "tokenizer_config.json")
    if config:
        with open(cfg, "w", encoding="utf-8") as f:
            json.dump(config, f, indent=1)
    elif os.path.exists(cfg):
        os.remove(cfg)
    return Tokenizer.from_str(s)


def expectations(tok):
    out = {"encode": [], "encode_special": [], "decode": [], "decode_special": []}
    for t in TEXTS:
        ids = tok.encode(t, add_special_tokens=False).ids
        sp = tok.encode(t, add_special_tokens=True).ids
        out["encode"].append(ids)
        out["encode_special"].append(sp)
        out["decode"].append(tok.decode(sp, skip_special_tokens=True))
        out["decode_special"].append(tok.decode(sp, skip_special_tokens=False))
    return out


def gpt2(text):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tr = trainers.BpeTrainer(vocab_size=1000, special_tokens=["<|endoftext|>"],
                             initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([text], tr)
    tok.add_special_tokens([AddedToken("<|mask|>", lstrip=True, special=True, normalized=False)])
    tok.add_tokens([AddedToken("hello world", normalized=True)])
    return tok


def llama3(text):
    tok = Tokenizer(models.BPE(ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tr = trainers.BpeTrainer(vocab_size=1200, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([text], tr)
    tok.add_special_tokens(["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>", "<|eot_id|>"])
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B:1",
                                      special_tokens=[("<|begin_of_text|>", bos)])])
    return tok


def llama2_model(text):
    """BPE with byte fallback: <unk> <s> </s>, then <0x00>..<0xFF>, then the learned pieces."""
    t = Tokenizer(models.BPE(unk_token="<unk>"))
    t.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    # Training only: words split before each ▁ so no piece crosses a word start, as SentencePiece's.
    t.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never", split=True)
    tr = trainers.BpeTrainer(vocab_size=1000, special_tokens=["<unk>", "<s>", "</s>"], limit_alphabet=120,
                             show_progress=False)
    t.train_from_iterator([text], tr)
    data = json.loads(t.to_str())
    old = sorted(data["model"]["vocab"].items(), key=lambda kv: kv[1])
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for b in range(256):
        vocab["<0x%02X>" % b] = len(vocab)
    for tokstr, _ in old:
        if tokstr not in vocab:
            vocab[tokstr] = len(vocab)
    return vocab, data["model"]["merges"]


def llama2(vocab, merges, metaspace):
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[tuple(m) for m in merges], unk_token="<unk>", fuse_unk=True,
                               byte_fallback=True))
    if metaspace:
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
        tok.decoder = decoders.Sequence([decoders.Metaspace(replacement="▁", prepend_scheme="first", split=False),
                                         decoders.ByteFallback(), decoders.Fuse()])
    else:
        tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
        tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                         decoders.Strip(" ", 1, 0)])
    tok.add_special_tokens([AddedToken("<unk>", special=True, normalized=False),
                            AddedToken("<s>", special=True, normalized=False),
                            AddedToken("</s>", special=True, normalized=False)])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B:1",
                                                       special_tokens=[("<s>", 1)])
    return tok


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ounce", help="an ounce binary: also train and check a tokenizer with it")
    ap.add_argument("--corpus", default="/work/shared/data/tinyshakespeare.txt")
    args = ap.parse_args()
    text = corpus(args.corpus)
    os.makedirs(OUT, exist_ok=True)
    expected = {"texts": TEXTS, "tokenizers": {}}

    g = save(gpt2(text), "gpt2", string_merges=True)
    expected["tokenizers"]["gpt2"] = expectations(g)
    gp = save(g, "gpt2-prefix", string_merges=True,
              edit=lambda d: d["pre_tokenizer"].update(add_prefix_space=True))
    expected["tokenizers"]["gpt2-prefix"] = expectations(gp)
    l3 = save(llama3(text), "llama3", config={"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>",
                                              "tokenizer_class": "PreTrainedTokenizerFast"})
    expected["tokenizers"]["llama3"] = expectations(l3)
    vocab, merges = llama2_model(text)
    l2 = save(llama2(vocab, merges, False), "llama2",
              config={"bos_token": {"__type": "AddedToken", "content": "<s>", "lstrip": False, "normalized": False,
                                    "rstrip": False, "single_word": False},
                      "eos_token": {"__type": "AddedToken", "content": "</s>", "lstrip": False, "normalized": False,
                                    "rstrip": False, "single_word": False},
                      "unk_token": "<unk>", "tokenizer_class": "LlamaTokenizer"})
    expected["tokenizers"]["llama2"] = expectations(l2)
    lm = save(llama2(vocab, merges, True), "llama2-metaspace")
    expected["tokenizers"]["llama2-metaspace"] = expectations(lm)

    if args.ounce:
        with tempfile.TemporaryDirectory() as tmp:
            src = os.path.join(tmp, "corpus.txt")
            with open(src, "w", encoding="utf-8") as f:
                f.write(text)
            out = os.path.join(tmp, "tok")
            subprocess.run([args.ounce, "tokenizer", "train", "--input", src, "--vocab-size", "800", "--out", out,
                            "--pattern", "llama3", "--special-tokens", "<|begin_of_text|>,<|end_of_text|>"], check=True)
            d = os.path.join(OUT, "ounce")
            os.makedirs(d, exist_ok=True)
            for name in ("tokenizer.json", "tokenizer_config.json"):
                shutil.copy(os.path.join(out, name), os.path.join(d, name))
        ot = Tokenizer.from_file(os.path.join(OUT, "ounce", "tokenizer.json"))
        expected["tokenizers"]["ounce"] = expectations(ot)

    with open(os.path.join(OUT, "expected.json"), "w", encoding="utf-8") as f:
        json.dump(expected, f, ensure_ascii=False, separators=(",", ":"))
    total = sum(os.path.getsize(os.path.join(dp, fn)) for dp, _, fns in os.walk(OUT) for fn in fns)
    print(f"wrote {OUT}: {total} bytes")


if __name__ == "__main__":
    main()
