#!/bin/sh
# On a machine with a GPU (tools/ GPU run scripts, docs/gpu.md): the cached decode on CUDA against
# the CPU, and decode speed. Makes a model of the 135M shape with ounce itself (one AdamW step on
# random tokens from bench/configs/smol-135m.json) with the llama3 fixture tokenizer beside it, then:
#   - test_decode (the CPU suite);
#   - greedy text of --device cuda equals --device cpu (64 tokens, fp32);
#   - on cuda, three prompts batched equal them one at a time;
#   - decode and prefill tokens/s on cuda (batch 1 and 32) and on the CPU pinned to 2 cores.
# usage: sh tools/gpu_decode_check.sh [OUT_DIR]
set -e
OUT=${1:-/tmp/ounce-gpu-decode}
mkdir -p "$OUT"
J=$(nproc)
make -s -j"$J" CUDA=1 ounce build/tests/test_decode
./build/tests/test_decode 2>&1 | tail -n 1
M="$OUT/m135"
if [ ! -s "$M/model.safetensors" ]; then
    ./ounce train --data random:49152 --model bench/configs/smol-135m.json --out "$M" --steps 1 --batch 1 --seq 16 \
        --eval-every 0 --warmup 0 --device cuda >/dev/null
    cp tests/fixtures/tokenizers/llama3/tokenizer.json tests/fixtures/tokenizers/llama3/tokenizer_config.json "$M/"
fi
P="the model reads a long text about rivers"
cpu=$(./ounce sample --model "$M" --prompt "$P" --tokens 64 --temperature 0 --threads 8 2>/dev/null)
gpu=$(./ounce sample --model "$M" --prompt "$P" --tokens 64 --temperature 0 --device cuda 2>/dev/null)
[ "$cpu" = "$gpu" ] && echo "ok   greedy cuda = cpu" || { echo "FAIL greedy cuda != cpu"; echo "cpu: $cpu"; echo "gpu: $gpu"; }
printf '%s\nA much longer prompt about mountains and numbers like 1234\nWhy\n' "$P" >"$OUT/prompts.txt"
b=$(./ounce sample --model "$M" --prompts "$OUT/prompts.txt" --tokens 40 --temperature 0 --device cuda 2>/dev/null)
s=$(./ounce sample --model "$M" --prompts "$OUT/prompts.txt" --tokens 40 --temperature 0 --device cuda --batch 1 2>/dev/null)
[ "$b" = "$s" ] && echo "ok   cuda batched = one at a time" || echo "FAIL cuda batched != one at a time"
c=$(./ounce sample --model "$M" --prompts "$OUT/prompts.txt" --tokens 40 --temperature 0 --threads 8 2>/dev/null)
[ "$b" = "$c" ] && echo "ok   cuda batched = cpu batched" || echo "FAIL cuda batched != cpu batched"
for dev in cuda; do
    ./ounce sample --model "$M" --prompt "$P" --tokens 256 --temperature 0 --device $dev --json 2>/dev/null | tail -n 1
done
for i in $(seq 32); do echo "$P $i"; done >"$OUT/p32.txt"
./ounce sample --model "$M" --prompts "$OUT/p32.txt" --batch 32 --tokens 128 --temperature 0 --device cuda --json 2>/dev/null | tail -n 1
LONG=$(for i in $(seq 100); do printf 'the model reads a long text '; done)
taskset -c 0,1 ./ounce sample --model "$M" --prompt "$P" --tokens 128 --temperature 0 --threads 2 --json 2>/dev/null | tail -n 1
taskset -c 0,1 ./ounce sample --model "$M" --prompt "$LONG" --tokens 1 --temperature 0 --threads 2 --json 2>/dev/null | tail -n 1
if python3 -c "import torch, transformers" 2>/dev/null; then
    taskset -c 0,1 python3 bench/decode.py --model "$M" --threads 2 --repeats 2 --new 64
else
    echo "skip: transformers peer (torch or transformers not installed here)"
fi
