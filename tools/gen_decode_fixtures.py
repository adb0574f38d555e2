#!/usr/bin/env python3
"""Makes tests/fixtures/decode/: transformers' greedy generate() on the Hugging Face fixture models
(tests/fixtures/hf/, made by tools/gen_hf_fixtures.py) from fixed prompt ids. greedy.json: per case
the model, the prompt, the tokens, and the smallest gap between a step's best and second logit
(how far greedy is from a tie); greedy.safetensors: case i's raw logits of every step as
"case<i>" (steps, vocab) in F32. tests/test_decode.c decodes the same prompts with the cache
and checks the same tokens and logits; the tests never need Python.

usage: python3 tools/gen_decode_fixtures.py   (torch and transformers installed)
"""
import json

import torch
import transformers
from safetensors.torch import save_file
from transformers import LlamaForCausalLM

MODELS = ["gqa_linear_f32", "tied_bf16", "llama3_sharded_f16"]
PROMPTS = [[1, 17, 42, 5, 63, 8, 29], [3], [11, 70, 2, 2, 56, 31, 7, 44, 19, 61, 0, 38]]
NEW = 24


def main():
    torch.manual_seed(0)
    cases, tensors = [], {}
    for name in MODELS:
        # fp32 arithmetic on the stored values, as ounce widens f16/bf16 weights on load
        model = LlamaForCausalLM.from_pretrained(f"tests/fixtures/hf/{name}", dtype=torch.float32).eval()
        for prompt in PROMPTS:
            ids = torch.tensor([prompt])
            with torch.inference_mode():
                # An explicit mask: without one generate() masks every prompt id equal to pad_token_id.
                out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False,
                                     output_logits=True, return_dict_in_generate=True, pad_token_id=0,
                                     eos_token_id=None, bos_token_id=None)
            tensors[f"case{len(cases)}"] = torch.stack([l[0] for l in out.logits]).float().contiguous()
            gap = min(float(torch.topk(l[0], 2).values[0] - torch.topk(l[0], 2).values[1]) for l in out.logits)
            cases.append({"model": name, "prompt": prompt, "tokens": out.sequences[0, len(prompt):].tolist(),
                          "min_gap": gap})
            print(name, len(prompt), "min gap %.3g" % gap)
    with open("tests/fixtures/decode/greedy.json", "w") as f:
        json.dump({"transformers": transformers.__version__, "torch": torch.__version__, "new_tokens": NEW,
                   "cases": cases}, f, indent=1)
    save_file(tensors, "tests/fixtures/decode/greedy.safetensors")


if __name__ == "__main__":
    main()
