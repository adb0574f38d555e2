/* The CLI's numeric arguments (cli/args.c; train/plan.c's --budget sizes; the checks and the
 * memory planner behind `ounce memory`): the input is an argument list, one argument per line.
 *
 *  1. oz_args_parse with a table of every option type: 0 (a value of every option kept in range,
 *     an integer exactly the text's value, a float finite), 1 (--help) or 2 (an error line).
 *  2. oz_parse_bytes on each argument: 0 or a size, never undefined behaviour.
 *  3. `ounce memory` itself (oz_cmd_memory: its table, the options' checks, the planner), for
 *     lists without a '/' (no paths: --model then names a preset; config.json has its own target).
 * The commands' output is thrown away (libFuzzer's -close_fd_mask=3). */
#include "fuzz.h"

#include <limits.h>
#include <math.h>

#include "cli/args.h"
#include "cli/cli.h"
#include "train/plan.h"

#define MAX_ARGS 64

static void parse_table(int argc, char **argv) {
    int i1 = 7, i2 = -7;
    uint64_t u = 7;
    float f = 0.5f;
    char s[8] = "";
    bool flag = false;
    oz_arg_list list = {0};
    oz_arg args[] = {
        {"int", OZ_ARG_INT, &i1, 0, "an int", 0},
        {"steps", OZ_ARG_INT, &i2, 0, "another", 0},
        {"seed", OZ_ARG_U64, &u, 0, "a u64", 0},
        {"lr", OZ_ARG_FLOAT, &f, 0, "a float", 0},
        {"name", OZ_ARG_STR, s, sizeof s, "a string", 0},
        {"json", OZ_ARG_FLAG, &flag, 0, "a flag", 0},
        {"inputs", OZ_ARG_LIST, &list, 0, "a list", 0},
    };
    int n = (int)(sizeof args / sizeof args[0]);
    int rc = oz_args_parse("fuzz", "fuzzing", args, n, argc, argv);
    OZ_FUZZ_CHECK(rc == 0 || rc == 1 || rc == 2, "parse returned %d", rc);
    OZ_FUZZ_CHECK(isfinite(f), "a float option became %g", (double)f);
    OZ_FUZZ_CHECK(memchr(s, '\0', sizeof s) != NULL, "string option not terminated");
    for (int i = 0; i < list.n; i++) OZ_FUZZ_CHECK(list.items[i] != NULL, "list item %d is NULL", i);
    if (rc == 0) {
        /* Every integer given (last one wins) is the text's exact value. */
        for (int i = 0; i < argc; i++) {
            const char *v = NULL;
            if (!strncmp(argv[i], "--int=", 6)) v = argv[i] + 6;
            else if (!strcmp(argv[i], "--int") && i + 1 < argc) v = argv[i + 1];
            if (!v) continue;
            char *end;
            long x = strtol(v, &end, 10);
            OZ_FUZZ_CHECK(*end == '\0' && x >= INT_MIN && x <= INT_MAX, "accepted --int %s", v);
        }
    }
    oz_args_free_lists(args, n);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size > 4096) return 0;
    char *buf = malloc(size + 1);
    if (!buf) abort();
    if (size) memcpy(buf, data, size);
    buf[size] = '\0';
    char *argv[MAX_ARGS + 1];
    int argc = 0;
    bool has_slash = memchr(buf, '/', size) != NULL;
    for (char *p = buf, *line; argc < MAX_ARGS && (line = strsep(&p, "\n")) != NULL;) {
        if (p == NULL && *line == '\0') break; /* a final newline ends the list */
        argv[argc++] = line;
    }
    argv[argc] = NULL;
    /* strsep cut at '\n' only; arguments with NUL inside end there, as they would from a shell. */
    parse_table(argc, argv);
    for (int i = 0; i < argc; i++) {
        size_t b = oz_parse_bytes(argv[i]);
        (void)b;
    }
    if (!has_slash) {
        int rc = oz_cmd_memory(argc, argv);
        OZ_FUZZ_CHECK(rc == 0 || rc == 2, "ounce memory exited %d (1 is for the environment's failures)", rc);
    }
    free(buf);
    return 0;
}
