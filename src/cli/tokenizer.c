/* `ounce tokenizer train`: a byte-level BPE tokenizer trained on text files, written as a Hugging
 * Face tokenizer.json (+ tokenizer_config.json naming BOS and EOS) that `prepare --tokenizer`,
 * `tokenize` and the `tokenizers` library all load. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/args.h"
#include "cli/cli.h"
#include "data/bpe.h"
#include "util/clock.h"

static int train(int argc, char **argv) {
    oz_arg_list inputs = {0};
    char out[4096] = "", specials[4096] = "", pattern[32] = "gpt2";
    int vocab = 0;
    uint64_t min_freq = 2;
    bool json = false;
    oz_arg args[] = {
        {"input", OZ_ARG_LIST, &inputs, 0, "text files or directories of them (walked recursively, sorted)", 0},
        {"vocab-size", OZ_ARG_INT, &vocab, 0, "vocabulary size, special tokens and the 256 bytes included", 0},
        {"out", OZ_ARG_STR, out, sizeof out, "directory for tokenizer.json and tokenizer_config.json", 0},
        {"min-frequency", OZ_ARG_U64, &min_freq, 0, "never merge a pair seen fewer times [2]", 0},
        {"special-tokens", OZ_ARG_STR, specials, sizeof specials,
         "comma-separated special tokens, ids 0.. ; the first is BOS, the second EOS (one: both) [<|endoftext|>]", 0},
        {"pattern", OZ_ARG_STR, pattern, sizeof pattern, "pre-tokenizer regex: gpt2 or llama3 [gpt2]", 0},
        {"json", OZ_ARG_FLAG, &json, 0, "end with one JSON line describing the result", 0},
    };
    int n = (int)(sizeof args / sizeof args[0]);
    int rc = oz_args_parse("tokenizer train", "Train a byte-level BPE tokenizer and write it as tokenizer.json.", args, n,
                           argc, argv);
    if (rc) {
        oz_args_free_lists(args, n);
        return rc == 1 ? 0 : 2;
    }
    oz_err err = {0};
    oz_bpe_train_opts o = {0};
    const char *spec[256];
    int n_spec = 0;
    char *p = specials;
    while (*p && n_spec < 256) {
        char *comma = strchr(p, ',');
        if (comma) *comma = '\0';
        spec[n_spec++] = p;
        if (!comma) break;
        p = comma + 1;
    }
    if (inputs.n == 0) oz_fail(&err, OZ_ERR_INPUT, "--input is required (files or directories)");
    else if (!out[0]) oz_fail(&err, OZ_ERR_INPUT, "--out is required");
    else if (vocab <= 0) oz_fail(&err, OZ_ERR_INPUT, "--vocab-size is required and must be positive");
    else if (strcmp(pattern, "gpt2") != 0 && strcmp(pattern, "llama3") != 0)
        oz_fail(&err, OZ_ERR_INPUT, "--pattern must be gpt2 or llama3 (got '%s')", pattern);
    for (int i = 0; !err.status && i < n_spec; i++)
        if (!spec[i][0]) oz_fail(&err, OZ_ERR_INPUT, "--special-tokens has an empty name");
    oz_bpe_train_report rep = {0};
    double seconds = 0;
    if (!err.status) {
        o.inputs = (const char *const *)inputs.items;
        o.n_inputs = inputs.n;
        o.vocab_size = vocab;
        o.min_frequency = min_freq;
        o.specials = n_spec ? spec : NULL;
        o.n_specials = n_spec;
        o.pattern = strcmp(pattern, "llama3") == 0 ? OZ_BPE_PATTERN_LLAMA3 : OZ_BPE_PATTERN_GPT2;
        o.out_dir = out;
        double t0 = oz_now_s();
        oz_bpe_train(&o, &rep, &err);
        seconds = oz_now_s() - t0;
    }
    oz_args_free_lists(args, n);
    if (err.status) return oz_cli_report("tokenizer", &err);
    printf("trained %s/tokenizer.json: vocabulary %d (%d merges) from %llu bytes, %llu distinct words, in %.1f s\n",
           out, rep.vocab_size, rep.merges, (unsigned long long)rep.bytes, (unsigned long long)rep.words, seconds);
    if (json)
        printf("{\"vocab_size\":%d,\"merges\":%d,\"bytes\":%llu,\"words\":%llu,\"seconds\":%.3f}\n", rep.vocab_size,
               rep.merges, (unsigned long long)rep.bytes, (unsigned long long)rep.words, seconds);
    return 0;
}

int oz_cmd_tokenizer(int argc, char **argv) {
    if (argc >= 1 && strcmp(argv[0], "train") == 0) return train(argc - 1, argv + 1);
    if (argc >= 1 && (strcmp(argv[0], "--help") == 0 || strcmp(argv[0], "-h") == 0)) {
        printf("usage: ounce tokenizer train --input PATH... --vocab-size N --out DIR [--min-frequency F]\n"
               "                             [--special-tokens a,b] [--pattern gpt2|llama3] [--json]\n"
               "Train a byte-level BPE tokenizer; see `ounce tokenizer train --help`.\n");
        return 0;
    }
    fprintf(stderr, "ounce tokenizer: expected the subcommand 'train' (see ounce tokenizer --help)\n");
    return 2;
}
