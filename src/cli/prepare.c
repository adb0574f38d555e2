/* `ounce prepare`: text files, directories and JSONL -> token shards + meta.json. */
#include <stdio.h>

#include "cli/args.h"
#include "cli/cli.h"
#include "data/prepare.h"

int oz_cmd_prepare(int argc, char **argv) {
    oz_arg_list inputs = {0};
    char out[4096] = "", tokenizer[4096] = "";
    float val_fraction = 0.05f;
    int threads = 0;
    bool json = false;
    oz_arg args[] = {
        {"input", OZ_ARG_LIST, &inputs, 0, "text files, directories of them, or .jsonl files with a \"text\" field", 0},
        {"out", OZ_ARG_STR, out, sizeof out, "output directory for train.bin, val.bin and meta.json", 0},
        {"val-fraction", OZ_ARG_FLOAT, &val_fraction, 0, "share of tokens held out for validation [0.05]", 0},
        {"tokenizer", OZ_ARG_STR, tokenizer, sizeof tokenizer,
         "a Hugging Face tokenizer.json, a directory with one (+ tokenizer_config.json), or a .gguf [byte-level]", 0},
        {"threads", OZ_ARG_INT, &threads, 0, "tokenizer threads, 0 = all cores [0]", 0},
        {"json", OZ_ARG_FLAG, &json, 0, "end with one JSON line describing the result", 0},
    };
    int n = (int)(sizeof args / sizeof args[0]);
    int rc = oz_args_parse("prepare", "Tokenize a corpus (byte-level, or --tokenizer) into shards with a validation split.", args,
                           n, argc, argv);
    if (rc) {
        oz_args_free_lists(args, n);
        return rc == 1 ? 0 : 2;
    }
    oz_err err = {0};
    if (inputs.n == 0) oz_fail(&err, OZ_ERR_INPUT, "--input is required (files, directories or .jsonl)");
    else if (!out[0]) oz_fail(&err, OZ_ERR_INPUT, "--out is required");
    else if (threads < 0) oz_fail(&err, OZ_ERR_INPUT, "--threads must be >= 0");
    else if (val_fraction < 0 || val_fraction > 0.5f)
        oz_fail(&err, OZ_ERR_INPUT, "--val-fraction must be in [0, 0.5] (got %g)", (double)val_fraction);
    if (err.status) {
        oz_args_free_lists(args, n);
        return oz_cli_report("prepare", &err);
    }
    oz_tokenizer tok;
    oz_tokenizer_byte(&tok);
    if (tokenizer[0] && oz_tokenizer_load(&tok, tokenizer, &err) != OZ_OK) {
        oz_args_free_lists(args, n);
        return oz_cli_report("prepare", &err);
    }
    tok.threads = threads;
    oz_prepare_opts opts;
    oz_prepare_opts_init(&opts);
    opts.tokenizer = &tok;
    opts.inputs = (const char *const *)inputs.items;
    opts.n_inputs = inputs.n;
    opts.out_dir = out;
    opts.val_fraction = val_fraction;
    oz_prepare_report rep;
    oz_status st = oz_prepare(&opts, &rep, &err);
    oz_args_free_lists(args, n);
    int vocab = tok.vocab_size;
    oz_tokenizer_free(&tok);
    if (st != OZ_OK) return oz_cli_report("prepare", &err);
    printf("prepared %s: %llu documents from %llu files (%llu skipped), %llu train + %llu val tokens "
           "(vocabulary %d), unigram entropy %.4f nats/token\n",
           out, (unsigned long long)rep.documents, (unsigned long long)rep.files,
           (unsigned long long)rep.skipped_files, (unsigned long long)rep.train_tokens,
           (unsigned long long)rep.val_tokens, vocab, rep.unigram_entropy_nats);
    if (json)
        printf("{\"documents\":%llu,\"files\":%llu,\"train_tokens\":%llu,\"val_tokens\":%llu,"
               "\"vocab_size\":%d,\"text_bytes\":%llu,\"unigram_entropy_nats\":%.6f}\n",
               (unsigned long long)rep.documents, (unsigned long long)rep.files,
               (unsigned long long)rep.train_tokens, (unsigned long long)rep.val_tokens, vocab,
               (unsigned long long)rep.text_bytes, rep.unigram_entropy_nats);
    return 0;
}
