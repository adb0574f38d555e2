/* `ounce tokenize`: the token ids of a text file under a model's tokenizer or a Hugging Face
 * tokenizer.json, and the way back (--decode reads ids and prints text). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli/args.h"
#include "cli/cli.h"
#include "io/atomic.h"
#include "io/gguf.h"
#include "util/clock.h"

/* The model directory's tokenizer.json when it has one, else the tokenizer its config.json names. */
static oz_status open_tokenizer(oz_tokenizer *tok, const char *model, const char *tokenizer, oz_err *err) {
    if (tokenizer[0]) return oz_tokenizer_load(tok, tokenizer, err);
    if (oz_gguf_is_file(model)) return oz_tokenizer_load(tok, model, err); /* its metadata's */
    char path[4200], tok_name[OZ_TOKENIZER_NAME_MAX];
    snprintf(path, sizeof path, "%s/tokenizer.json", model);
    struct stat st;
    if (stat(path, &st) == 0) return oz_tokenizer_load(tok, model, err);
    snprintf(path, sizeof path, "%s/config.json", model);
    oz_llama_config cfg;
    OZ_TRY(oz_config_read(path, &cfg, tok_name, err));
    if (!tok_name[0]) return oz_fail(err, OZ_ERR_INPUT, "%s records no tokenizer", path);
    return oz_tokenizer_from_name(tok, tok_name, err);
}

/* Ids separated by spaces, commas, newlines or JSON brackets. */
static oz_status parse_ids(const char *text, size_t n, const char *path, oz_tokens *ids, oz_err *err) {
    size_t i = 0;
    while (i < n) {
        char c = text[i];
        if (c == ' ' || c == ',' || c == '\n' || c == '\r' || c == '\t' || c == '[' || c == ']') {
            i++;
            continue;
        }
        char *end;
        errno = 0;
        long v = strtol(text + i, &end, 10);
        if (end == text + i || errno || v < 0 || v > INT32_MAX)
            return oz_fail(err, OZ_ERR_INPUT, "%s: expected token ids, found '%.20s'", path, text + i);
        OZ_TRY(oz_tokens_push(ids, (int32_t)v, err));
        i = (size_t)(end - text);
    }
    return OZ_OK;
}

int oz_cmd_tokenize(int argc, char **argv) {
    char model[4096] = "", tokenizer[4096] = "", text_path[4096] = "";
    bool json = false, decode = false, add_special = false, show_special = false, count = false;
    int threads = 0;
    oz_arg args[] = {
        {"model", OZ_ARG_STR, model, sizeof model, "model directory (its tokenizer.json, or the tokenizer config.json names), or a .gguf", 0},
        {"tokenizer", OZ_ARG_STR, tokenizer, sizeof tokenizer, "or a Hugging Face tokenizer.json / a directory with one", 0},
        {"text", OZ_ARG_STR, text_path, sizeof text_path, "text file to tokenize (with --decode: a file of ids)", 0},
        {"decode", OZ_ARG_FLAG, &decode, 0, "read ids from --text and print their text", 0},
        {"add-special", OZ_ARG_FLAG, &add_special, 0, "wrap the ids in the tokenizer's template (e.g. BOS)", 0},
        {"show-special", OZ_ARG_FLAG, &show_special, 0, "with --decode: print special tokens too", 0},
        {"count", OZ_ARG_FLAG, &count, 0, "print only the number of ids, bytes and MB/s (to stderr)", 0},
        {"threads", OZ_ARG_INT, &threads, 0, "tokenizer threads for large texts, 0 = all cores [0]", 0},
        {"json", OZ_ARG_FLAG, &json, 0, "print one JSON object {\"ids\": [...], \"count\": N}", 0},
    };
    int rc = oz_args_parse("tokenize", "Print the token ids of a text file, space-separated (or decode ids).", args,
                           (int)(sizeof args / sizeof args[0]), argc, argv);
    if (rc) return rc == 1 ? 0 : 2;
    oz_err err = {0};
    if ((!model[0] && !tokenizer[0]) || !text_path[0]) {
        oz_fail(&err, OZ_ERR_INPUT, "--text and one of --model or --tokenizer are required");
        return oz_cli_report("tokenize", &err);
    }
    if (model[0] && tokenizer[0]) {
        oz_fail(&err, OZ_ERR_INPUT, "give only one of --model and --tokenizer");
        return oz_cli_report("tokenize", &err);
    }
    if (threads < 0) {
        oz_fail(&err, OZ_ERR_INPUT, "--threads must be >= 0");
        return oz_cli_report("tokenize", &err);
    }
    oz_tokenizer tok;
    oz_tokenizer_byte(&tok);
    char *text = NULL;
    size_t n = 0;
    oz_tokens ids = {0};
    oz_text out = {0};
    double seconds = 0;
    if (open_tokenizer(&tok, model, tokenizer, &err) == OZ_OK && oz_read_file(text_path, &text, &n, &err) == OZ_OK) {
        tok.threads = threads;
        if (decode) {
            if (parse_ids(text, n, text_path, &ids, &err) == OZ_OK)
                oz_tokenizer_decode(&tok, ids.ids, ids.len, show_special, &out, &err);
        } else {
            double t0 = oz_now_s();
            if (add_special) oz_tokenizer_encode_special(&tok, text, n, &ids, &err);
            else oz_tokenizer_encode(&tok, text, n, &ids, &err);
            seconds = oz_now_s() - t0;
        }
    }
    free(text);
    oz_tokenizer_free(&tok);
    if (err.status) {
        oz_tokens_free(&ids);
        oz_text_free(&out);
        return oz_cli_report("tokenize", &err);
    }
    if (decode) {
        if (out.len) fwrite(out.data, 1, out.len, stdout);
    } else if (count) {
        printf("%zu\n", ids.len);
        fprintf(stderr, "%zu ids from %zu bytes in %.3f s: %.2f MB/s\n", ids.len, n, seconds,
                seconds > 0 ? (double)n / seconds / 1e6 : 0.0);
    } else {
        if (json) printf("{\"count\":%zu,\"ids\":[", ids.len);
        for (size_t i = 0; i < ids.len; i++) printf("%s%d", i ? (json ? "," : " ") : "", ids.ids[i]);
        printf(json ? "]}\n" : "\n");
    }
    oz_tokens_free(&ids);
    oz_text_free(&out);
    return 0;
}
