#!/bin/sh
# Tokenization throughput: ounce beside Hugging Face `tokenizers` (Python) on the same text, the same
# Llama-3-style tokenizer.json and the same thread counts, run interleaved (ours, then theirs, round
# after round) so load from other work on the machine hits both alike. Prints JSON lines.
#
# The tokenizer: a 32K Llama-3-style BPE (Split on the Llama-3 regex + ByteLevel, ignore_merges)
# trained with `tokenizers` on the corpus (Debian's fortunes + tinyshakespeare, 3.7 MB). The text:
# that corpus repeated REPS times. ounce encodes the whole file in one call (--count times the
# encode alone); the peer encodes ~64 KB chunks cut where the regex cannot match across, so both
# produce the same ids (the counts printed must agree). Peer modes: single-threaded encode per
# chunk, and encode_batch with RAYON_NUM_THREADS = our thread count.
# usage: bench/tokenize.sh [REPS=4] [ROUNDS=3] [THREADS="1 2"]   (needs: pip install tokenizers)
set -e
REPS=${1:-4}
ROUNDS=${2:-3}
THREADS=${3:-"1 2"}
SHAKESPEARE=${SHAKESPEARE:-../shared/data/tinyshakespeare.txt}
W=${TOKBENCH_DIR:-$(mktemp -d /tmp/ounce-tokbench.XXXXXX)}
make -s ounce >/dev/null
if [ ! -s "$W/base.txt" ]; then
    for f in /usr/share/games/fortunes/*; do
        case "$f" in *.dat|*.u8) continue ;; esac
        [ -f "$f" ] && cat "$f"
    done >"$W/base.txt"
    [ -f "$SHAKESPEARE" ] && cat "$SHAKESPEARE" >>"$W/base.txt"
fi
if [ ! -s "$W/l3/tokenizer.json" ]; then
    python3 - "$W" <<'PY'
import os, sys
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
w = sys.argv[1]
pat = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
       r"\s*[\r\n]+|\s+(?!\S)|\s+")
tok = Tokenizer(models.BPE(ignore_merges=True))
tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(pat), behavior="isolated", invert=False),
                                             pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
tok.decoder = decoders.ByteLevel()
tok.train([os.path.join(w, "base.txt")], trainers.BpeTrainer(vocab_size=32000, show_progress=False,
                                                            initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
tok.add_special_tokens(["<|begin_of_text|>", "<|end_of_text|>"])
bos = tok.token_to_id("<|begin_of_text|>")
tok.post_processor = processors.TemplateProcessing(single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", bos)])
os.makedirs(os.path.join(w, "l3"), exist_ok=True)
tok.save(os.path.join(w, "l3", "tokenizer.json"))
PY
fi
: >"$W/text.txt"
i=0
while [ $i -lt "$REPS" ]; do cat "$W/base.txt" >>"$W/text.txt"; i=$((i + 1)); done
BYTES=$(wc -c <"$W/text.txt")
r=1
while [ $r -le "$ROUNDS" ]; do
    for t in $THREADS; do
        ./ounce tokenize --tokenizer "$W/l3" --text "$W/text.txt" --count --threads "$t" 2>"$W/err" >/dev/null
        sed -nE "s/^([0-9]+) ids from ([0-9]+) bytes in ([0-9.]+) s: ([0-9.]+) MB\/s$/{\"impl\":\"ounce\",\"round\":$r,\"threads\":$t,\"bytes\":\2,\"ids\":\1,\"seconds\":\3,\"mb_s\":\4}/p" "$W/err"
        RAYON_NUM_THREADS=$t python3 bench/hf_tokenize.py "$W/l3/tokenizer.json" "$W/text.txt" encode_batch |
            sed -E "s/^\{/{\"round\":$r,/"
        if [ "$t" = 1 ]; then
            RAYON_NUM_THREADS=1 python3 bench/hf_tokenize.py "$W/l3/tokenizer.json" "$W/text.txt" encode |
                sed -E "s/^\{/{\"round\":$r,/"
        fi
    done
    r=$((r + 1))
done
echo "{\"text_bytes\":$BYTES,\"dir\":\"$W\"}"
