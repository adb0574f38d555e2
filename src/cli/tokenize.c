/* `ounce tokenize`: the token ids of a text file under a model's tokenizer. */
#include <stdio.h>
#include <stdlib.h>

#include "cli/args.h"
#include "cli/cli.h"
#include "io/atomic.h"

int oz_cmd_tokenize(int argc, char **argv) {
    char model[4096] = "", text_path[4096] = "";
    bool json = false;
    oz_arg args[] = {
        {"model", OZ_ARG_STR, model, sizeof model, "model directory (its config.json names the tokenizer)", 0},
        {"text", OZ_ARG_STR, text_path, sizeof text_path, "text file to tokenize", 0},
        {"json", OZ_ARG_FLAG, &json, 0, "print one JSON object {\"ids\": [...], \"count\": N}", 0},
    };
    int rc = oz_args_parse("tokenize", "Print the token ids of a text file, space-separated.", args,
                           (int)(sizeof args / sizeof args[0]), argc, argv);
    if (rc) return rc == 1 ? 0 : 2;
    oz_err err = {0};
    if (!model[0] || !text_path[0]) {
        oz_fail(&err, OZ_ERR_INPUT, "--model and --text are required");
        return oz_cli_report("tokenize", &err);
    }
    char path[4200], tok_name[OZ_TOKENIZER_NAME_MAX];
    snprintf(path, sizeof path, "%s/config.json", model);
    oz_llama_config cfg;
    oz_tokenizer tok;
    char *text = NULL;
    size_t n = 0;
    oz_tokens ids = {0};
    if (oz_config_read(path, &cfg, tok_name, &err) == OZ_OK) {
        if (!tok_name[0]) oz_fail(&err, OZ_ERR_INPUT, "%s records no tokenizer", path);
        else if (oz_tokenizer_from_name(&tok, tok_name, &err) == OZ_OK &&
                 oz_read_file(text_path, &text, &n, &err) == OZ_OK)
            oz_tokenizer_encode(&tok, text, n, &ids, &err);
    }
    free(text);
    if (err.status) {
        oz_tokens_free(&ids);
        return oz_cli_report("tokenize", &err);
    }
    if (json) printf("{\"count\":%zu,\"ids\":[", ids.len);
    for (size_t i = 0; i < ids.len; i++) printf(json ? "%s%d" : "%s%d", i ? (json ? "," : " ") : "", ids.ids[i]);
    printf(json ? "]}\n" : "\n");
    oz_tokens_free(&ids);
    return 0;
}
